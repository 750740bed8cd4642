"""Multiple choice by likelihood (`answer_by: likelihood` on an mcq set): the model is not asked to write a
letter. Each option's text is scored as the assistant's answer to the question, the log-probability of its
tokens summed, and the most likely option is the model's choice, as lm-evaluation-harness scores multiple
choice. A small model that cannot follow "ANSWER: X" (SmolLM2-135M scores below chance that way) shows
here what it knows.

Through the server (`engine: vllm`): the server renders the chat (the question as a user turn, the option
as the start of the assistant's) and returns those very tokens' log-probabilities (serving/vllm.py:
`PromptScorer`), so the number comes from the served weights. With `engine: llm_ckpt`: transformers, the same
rendering with the model folder's template. Few-shot examples (`few_shot`, from `<subject>_dev.*`) are
earlier turns with the right option as the answer.

It runs in evaluate's child process, and writes what EvalScope would (a report and predictions per set) so
the stage reads every set the same way.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

METRIC = "likelihood_accuracy"
LETTERS = "ABCDEFGHIJ"  # option columns, as many as a row has: CEval's four, or two to ten


def read_rows(folder: Path, subject: str, split: str) -> list[dict]:
    """The rows of `<subject>_<split>.csv|jsonl` (id, question, A-D, answer), or [] when there is none."""
    for suffix in ("csv", "jsonl"):
        path = folder / f"{subject}_{split}.{suffix}"
        if path.is_file():
            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f)) if suffix == "csv" else [json.loads(x) for x in f if x.strip()]
            return [{k: str(v) for k, v in row.items()} for row in rows]
    return []


def chats(row: dict, shots: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """The context (earlier turns and the question) and, per option, the chat ending in that answer."""
    context = []
    for shot in shots:
        context += [{"role": "user", "content": shot["question"]},
                    {"role": "assistant", "content": shot[shot["answer"].strip().upper()]}]
    context.append({"role": "user", "content": row["question"]})
    return context, [context + [{"role": "assistant", "content": row[letter]}] for letter in letters(row)]


def letters(row: dict) -> str:
    """The row's option columns: A, B, ... as far as they go."""
    return "".join(letter for letter in LETTERS if letter in row)


class Local:
    """Scores with transformers from the model folder."""

    def __init__(self, path: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()

    def tokens(self, messages: list[dict], answer: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not answer,
                                                  continue_final_message=answer)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        import torch

        out = []
        with torch.no_grad():
            for ids in sequences:
                logits = self.model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
                out.append(logits.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1).tolist())
        return out


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def answer(scorer, row: dict, shots: list[dict]) -> dict:
    """The question's prediction: each option's summed log-probability and the option chosen."""
    context, options = chats(row, shots)
    prompt = scorer.tokens(context, answer=False)
    sequences = [scorer.tokens(messages, answer=True) for messages in options]
    scores = {}
    for letter, ids, logprobs in zip(letters(row), sequences, scorer.logprobs(sequences)):
        start = shared_prefix(prompt, ids)  # where the answer's tokens begin, whatever the template adds
        if start == 0 or len(ids) <= start:  # an empty option, or a template that drops the answer: never chosen
            scores[letter] = -math.inf
        else:
            scores[letter] = round(sum(logprobs[start - 1:]), 4)
    picked = max(scores, key=lambda letter: scores[letter])
    return {"id": row.get("id"), "question": row["question"], "answer": row["answer"].strip().upper(),
            "picked": picked, "logprobs": scores,
            "model_output": {"choices": [{"message": {"role": "assistant", "content": row[picked]}}]}}


def score_set(access: dict, item: dict, work: Path) -> None:
    """Score an mcq set (its folder and subjects in item['args']); write work/reports and work/predictions."""
    folder, subjects = Path(item["args"]["local_path"]), item["args"]["subset_list"]
    if "url" in access:
        from serving.vllm import PromptScorer

        scorer = PromptScorer(access["url"], access["name"], os.environ.get("ALIGNFLOW_EVAL_API_KEY"))
    else:
        scorer = Local(access["path"])
    right = total = 0
    for subject in subjects:
        rows = read_rows(folder, subject, "val")[:item["limit"]]
        shots = read_rows(folder, subject, "dev")[:item.get("few_shot") or 0]
        predictions = [answer(scorer, row, shots) for row in rows]
        right += sum(p["picked"] == p["answer"] for p in predictions)
        total += len(predictions)
        out = work / "predictions" / "likelihood" / f"{subject}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions), encoding="utf-8")
    report = {"name": item["name"], "answer_by": "likelihood", "primary_metric_identity": {"name": METRIC},
              "metrics": [{"identity": {"name": METRIC}, "score": right / total if total else 0.0, "num": total}]}
    path = work / "reports" / "likelihood" / f"{item['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
