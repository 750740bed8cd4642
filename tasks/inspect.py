"""What a dataset holds before a run trains on it (`alignflow data inspect`): read exactly as the convert
stage reads it (tasks/convert.py: the same formats, checks and canonical rows), bad rows listed and never
raised, the kind guessed from the rows when not given, and lengths in a model's tokens on request."""

from __future__ import annotations

import tempfile
from pathlib import Path

from alignflow.errors import DataError


def data_source(source: str, fmt: str = "auto", columns: dict | None = None):
    """A source as the spec's data section names it."""
    from tasks.convert import DataSource

    return DataSource(source=source, format=fmt, columns=columns or {})


def guess_kind(source: str, scratch: Path) -> str:
    """Preference rows are the most distinctive, then multiple choice, then chat rows."""
    from tasks import formats
    from tasks.row_stats import listed_problems
    from tasks.readers import records
    from tasks.sources import local_files

    problems, bad = [], 0
    for path, shown in local_files(source, scratch):
        row, skipped = _first_row(records(path, shown), problems)
        bad += skipped
        if row is None:
            continue
        for kind, name in (("preference", None), ("eval", "multiple-choice"), ("sft", None), ("eval", None)):
            found = formats.detect(kind, row)
            if found and (name is None or found.name == name):
                return kind
        raise DataError(f"{shown}: rows with fields {sorted(row)} are not a known format; pass --kind and --format")
    unread = f"; not one line is a row:\n{listed_problems(problems, bad)}" if bad else ""
    raise DataError(f"{source}: no rows{unread}")


def _first_row(found, problems: list[str]) -> tuple[dict | None, int]:
    """The first row of a file's records, and how many lines before it were not rows (the first of them noted
    in `problems`, as the convert stage lists them)."""
    from tasks.row_stats import MAX_LISTED

    bad = 0
    for record in found:
        if record.row is not None:
            return record.row, bad
        bad += 1
        if len(problems) < MAX_LISTED:
            problems.append(f"{record.file}:{record.line}: {record.error}")
    return None, bad


def inspect_source(source: str, kind: str | None = None, fmt: str = "auto", model: str | None = None,
                   max_length: int = 1024) -> dict:
    """What the convert stage would make of `source`: its report (formats, counts, roles, turns, lengths, every
    problem; bad rows listed, never raised), the kind (guessed from the rows unless given), and with `model`,
    lengths in that model's tokens and what `max_length` would cut."""
    from tasks.convert import ConvertRules, convert_sources

    with tempfile.TemporaryDirectory(prefix="alignflow-inspect-") as tmp:
        scratch = Path(tmp)
        chosen = kind or guess_kind(source, scratch / "sources")
        report = convert_sources(chosen, [data_source(source, fmt)], ConvertRules(on_bad_rows="skip"), scratch / "out",
                                 scratch / "sources")
        facts = report.as_dict() | {"source": source, "guessed_kind": kind is None}
        if model:
            facts["tokens"] = token_lengths(chosen, scratch / "out" / "data.jsonl", model, max_length, scratch)
    return facts


def token_lengths(kind: str, data: Path, model: str, max_length: int, scratch: Path) -> dict:
    """Length percentiles in the model's tokens, and how many rows `max_length` would cut."""
    from tasks.row_stats import percentiles
    from tasks.formats import RowError
    from tasks.models import load_tokenizer
    from tasks.tokens import chunks, encode_many, has_loss

    tok = load_tokenizer([tokenizer_folder(model, scratch / "model")])
    lengths, cut, lost, refused = [], 0, 0, 0
    with open(data, encoding="utf-8") as f:
        for _, rows in chunks(f, 512):
            for result in encode_many(tok, rows) if kind == "sft" else [_plain_tokens(tok, kind, r) for r in rows]:
                if isinstance(result, RowError):
                    refused += 1
                    continue
                ids, runs = result
                lengths.append(len(ids))
                cut += len(ids) > max_length
                lost += runs is not None and not has_loss(runs, "assistant", max_length)
    return {"model": model, "max_length": max_length, "lengths": percentiles(lengths), "truncated": cut,
            "no_answer_left": lost, "template_refused": refused}


def tokenizer_folder(model: str, scratch: Path) -> Path:
    """A folder with the model's tokenizer (for the built-in model, only its tokenizer is built)."""
    from tasks.download import fetch_model

    if model == "builtin://tiny-qwen2":
        from tasks.builtin import tiny_model

        scratch.mkdir(parents=True, exist_ok=True)
        tiny_model.build_tokenizer(scratch)
        return scratch
    return fetch_model(model, scratch)


def _plain_tokens(tok, kind: str, row: dict):
    """(token ids, None) of a preference row (prompt and the longer answer) or an eval row, or the RowError
    of a row the template refuses."""
    from tasks.formats import RowError
    from tasks.tokens import render

    try:
        if kind == "preference":
            answers = [row["completion"]] if "completion" in row else [row["chosen"], row["rejected"]]
            text = render(tok, row["prompt"] + max(answers, key=lambda m: len(m[0]["content"])))
        else:
            text = render(tok, [{"role": "user", "content": row["question"]}], prompt=True) + row["answer"]
    except RowError as exc:
        return exc
    return tok(text, add_special_tokens=False)["input_ids"], None
