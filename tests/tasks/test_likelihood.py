"""Multiple choice by likelihood (tasks/likelihood.py): which tokens are scored, few-shot turns, the files
read, and the report the evaluate stage reads like EvalScope's. The scores of real models: the demo test
(through vLLM and transformers) and the real-model test (SmolLM2's knowledge check)."""

from __future__ import annotations

import json

import pytest

from tasks import likelihood
from tasks.evaluate import EvalSet, read_score

ROW = {"id": "0", "question": "What is the capital of France?", "A": "Berlin", "B": "Paris",
       "C": "Rome of the Caesars", "D": "Madrid", "answer": "b"}


class CountingScorer(likelihood.Local):
    """SmolLM2's real tokenizer and chat template; every token costs -1, so an option scores minus the number
    of its own tokens exactly when only the answer's tokens are summed."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def logprobs(self, sequences):
        return [[-1.0] * (len(ids) - 1) for ids in sequences]


def test_only_the_options_own_tokens_are_scored_without_the_end_of_turn(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer()
    prediction = likelihood.answer(CountingScorer(tokenizer), ROW, shots=[])
    lengths = {letter: len(tokenizer(ROW[letter], add_special_tokens=False)["input_ids"]) for letter in "ABCD"}
    assert prediction["logprobs"] == {letter: -float(n) for letter, n in lengths.items()}
    assert prediction["answer"] == "B" and prediction["picked"] in "ABD"  # the shortest options win here
    assert prediction["model_output"]["choices"][0]["message"]["content"] == ROW[prediction["picked"]]


def test_few_shot_examples_are_earlier_turns_answered_with_the_right_option():
    shot = {"question": "2 + 2?", "A": "3", "B": "4", "C": "5", "D": "22", "answer": "B"}
    context, options = likelihood.chats(ROW, [shot])
    assert context == [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"},
                       {"role": "user", "content": ROW["question"]}]
    assert [o[-1]["content"] for o in options] == [ROW[letter] for letter in "ABCD"]


def test_an_empty_option_is_never_chosen(smollm2_tokenizer):
    prediction = likelihood.answer(CountingScorer(smollm2_tokenizer()), dict(ROW, A=""), shots=[])
    assert prediction["logprobs"]["A"] == float("-inf") and prediction["picked"] != "A"


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_rows_are_read_from_either_layout_and_a_missing_split_is_empty(tmp_path, suffix):
    path = tmp_path / f"facts_val.{suffix}"
    if suffix == "csv":
        path.write_text("id,question,A,B,C,D,answer\n0,\"Capital, France?\",Berlin,Paris,Rome,Madrid,B\n")
    else:
        path.write_text(json.dumps({"id": 0, "question": "Capital, France?", "A": "Berlin", "B": "Paris",
                                    "C": "Rome", "D": "Madrid", "answer": "B"}) + "\n")
    assert likelihood.read_rows(tmp_path, "facts", "val") == [
        {"id": "0", "question": "Capital, France?", "A": "Berlin", "B": "Paris", "C": "Rome", "D": "Madrid",
         "answer": "B"}]
    assert likelihood.read_rows(tmp_path, "facts", "dev") == []


def test_the_report_reads_like_evalscopes(tmp_path, smollm2_tokenizer, monkeypatch):
    folder = tmp_path / "knowledge"
    folder.mkdir()
    (folder / "facts_val.csv").write_text("id,question,A,B,C,D,answer\n0,Capital of France?,Berlin,Paris,"
                                          "Rome of the Caesars,Madrid,A\n1,Two plus two?,4,four and more,5 5,6,A\n")
    tokenizer = smollm2_tokenizer()
    monkeypatch.setattr(likelihood, "Local", lambda path: CountingScorer(tokenizer))
    item = {"name": "knowledge", "args": {"local_path": str(folder), "subset_list": ["facts"]}, "limit": None}
    likelihood.score_set({"path": "unused"}, item, tmp_path / "work")
    assert read_score(tmp_path / "work") == {"metric": "likelihood_accuracy", "score": 0.5, "samples": 2}
    rows = (tmp_path / "work" / "predictions" / "likelihood" / "facts.jsonl").read_text().splitlines()
    assert [json.loads(r)["picked"] for r in rows] == ["B", "A"]  # "Paris" and "4" are one token each


def test_likelihood_is_refused_for_a_builtin_benchmark():
    problems = EvalSet(name="g", kind="builtin", benchmark="gsm8k", answer_by="likelihood").problems()
    assert problems and "answer_by" in problems[0]
