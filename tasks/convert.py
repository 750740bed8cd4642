"""Stage `convert_dataset`: raw rows in, one canonical JSONL per split out, with row counts.

Canonical forms (what the trainers read):
    sft         {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
    preference  {"prompt": [user message(s)], "chosen": [assistant message], "rejected": [assistant message]}
    eval        {"question": "...", "answer": "..."}

Accepted inputs: those forms, plus common neighbours (ShareGPT `conversations`, Alpaca
`instruction/input/output`, `query/response`, `prompt/completion`, string-valued `prompt/chosen/rejected`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from alignflow.errors import DataError, SourceError
from storage import ArtifactRef
from tasks.stage import RunContext, publish, stage

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


class RowError(ValueError):
    """Why one row cannot be converted; becomes a DataError with its file and line."""


def _messages(value, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RowError(f"'{where}' must be a non-empty list of {{role, content}} messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RowError(f"'{where}[{i}]' must be {{role: one of {sorted(ROLES)}, content: string}}, got {m!r}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def to_sft(row: dict) -> dict:
    """>>> to_sft({"query": "hi", "response": "hello"})
    {'messages': [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]}"""
    if "messages" in row:
        messages = _messages(row["messages"], "messages")
    elif "conversations" in row:
        turns = row["conversations"]
        if not isinstance(turns, list):
            raise RowError("'conversations' must be a list of {from, value} turns")
        messages = _messages([{"role": SHAREGPT_ROLES.get(t.get("from")), "content": t.get("value")}
                              for t in turns if isinstance(t, dict)], "conversations")
    else:
        prompt, answer = _prompt_answer(row)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    if messages[-1]["role"] != "assistant":
        raise RowError("the last message must be the assistant's: there is nothing to learn otherwise")
    return {"messages": messages}


def _prompt_answer(row: dict) -> tuple[str, str]:
    for prompt_key, answer_key in (("question", "answer"), ("query", "response"), ("prompt", "completion"),
                                   ("instruction", "output")):
        if prompt_key in row and answer_key in row:
            prompt = row[prompt_key]
            if prompt_key == "instruction" and row.get("input"):
                prompt = f"{prompt}\n\n{row['input']}"
            if not isinstance(prompt, str) or not isinstance(row[answer_key], str):
                raise RowError(f"'{prompt_key}' and '{answer_key}' must be strings")
            return prompt, row[answer_key]
    raise RowError(f"no known fields; expected 'messages', 'conversations', question/answer, query/response, "
                   f"prompt/completion or instruction/output; found {sorted(row)}")


def to_preference(row: dict) -> dict:
    """>>> to_preference({"prompt": "2+2?", "chosen": "4", "rejected": "5"})["chosen"]
    [{'role': 'assistant', 'content': '4'}]"""
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
    if missing:
        raise RowError(f"missing {', '.join(missing)}; preference rows need prompt, chosen and rejected")

    def as_messages(value, key: str, role: str) -> list[dict]:
        return [{"role": role, "content": value}] if isinstance(value, str) else _messages(value, key)

    out = {"prompt": as_messages(row["prompt"], "prompt", "user"),
           "chosen": as_messages(row["chosen"], "chosen", "assistant"),
           "rejected": as_messages(row["rejected"], "rejected", "assistant")}
    if out["chosen"] == out["rejected"]:
        raise RowError("chosen and rejected are identical: the pair teaches nothing")
    return out


def to_eval(row: dict) -> dict:
    """>>> to_eval({"query": "reverse: a b", "response": "b a"})
    {'question': 'reverse: a b', 'answer': 'b a'}"""
    if "messages" in row:
        messages = to_sft(row)["messages"]
        return {"question": messages[-2]["content"] if len(messages) > 1 else "", "answer": messages[-1]["content"]}
    question, answer = _prompt_answer(row)
    return {"question": question, "answer": answer}


CONVERTERS: dict[str, Callable[[dict], dict]] = {"sft": to_sft, "preference": to_preference, "eval": to_eval}


def read_rows(path: Path) -> Iterator[tuple[str, int, dict]]:
    """Yield (file, line, row) from a .jsonl/.json file or every such file in a folder."""
    files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"dataset {path}: no .jsonl or .json files in the folder")
    for file in files:
        if file.suffix == ".json":
            try:
                rows = json.loads(file.read_text())
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}:{exc.lineno}: not valid JSON: {exc.msg}") from None
            if not isinstance(rows, list):
                raise DataError(f"{file}: a .json dataset must hold a list of rows")
            yield from ((str(file), i + 1, row) for i, row in enumerate(rows))
            continue
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield str(file), number, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{file}:{number}: not valid JSON: {exc.msg}") from None


def convert_rows(split: str, rows: Iterator[tuple[str, int, dict]]) -> list[dict]:
    converter, out = CONVERTERS[split], []
    for file, line, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{file}:{line}: expected a JSON object, got {type(row).__name__}")
        try:
            out.append(converter(row))
        except RowError as exc:
            raise DataError(f"{file}:{line}: {split} row rejected: {exc}") from None
    if not out:
        raise DataError(f"{split} dataset is empty: nothing to train or evaluate on")
    return out


def load_source(split: str, source: str, registered: Path | None = None) -> list[dict]:
    """Rows of one split from `source`; `registered` is the local copy of a `store://` dataset version."""
    if registered is not None:
        return convert_rows(split, read_rows(registered))
    if source.startswith("builtin://"):
        from tasks.builtin import reverse_task

        task, _, part = source.removeprefix("builtin://").partition("/")
        if task != "reverse" or part not in CONVERTERS:
            raise SourceError(f"dataset {source!r}: no such built-in dataset; use builtin://reverse/sft, "
                              "builtin://reverse/preference or builtin://reverse/eval")
        return convert_rows(split, ((source, i + 1, r) for i, r in enumerate(reverse_task.splits()[part])))
    if "://" in source:
        raise SourceError(f"dataset {source!r}: unsupported scheme; pass a local .jsonl/.json file or folder, or "
                          "register the data with `alignflow data add NAME SOURCE` and name it store://NAME@latest")
    path = Path(source)
    if not path.exists():
        raise SourceError(f"dataset {source!r}: no such file or folder")
    return convert_rows(split, read_rows(path))


@stage("convert_dataset")
def convert_dataset(run: RunContext, split: str, source: str, fingerprint: str = "",
                    raw: ArtifactRef | None = None) -> ArtifactRef:
    """`raw`: the registered dataset version a `store://` source resolved to (it keys the cache by digest
    and becomes the output's lineage input)."""
    rows = load_source(split, source, run.open_store().get_dir(raw) if raw else None)
    out = run.workdir() / split
    out.mkdir(exist_ok=True)
    with open(out / "data.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    metrics = {"rows": len(rows)}
    return publish(run, f"data-{split}", "dataset", out, stage="convert_dataset",
                   config={"split": split, "source": source}, inputs={"raw": raw} if raw else {},
                   metadata={"split": split},
                   metrics=metrics)
