"""`alignflow data inspect` and `alignflow data convert`: look at a dataset before a run trains on it.

    alignflow data inspect SOURCE [--kind sft|preference|eval] [--model MODEL] [--max-length N] [--json]
    alignflow data convert SOURCE... --kind KIND [--format F] [--columns THEIRS=OURS ...] -o OUT.jsonl

Both read sources exactly as the convert stage does (tasks/convert.py): the same formats, checks and
canonical rows. `inspect` never fails on bad rows: it lists them. `convert` writes the canonical JSONL, a
report beside it, and exits 2 listing the bad rows unless `--on-bad-rows skip`; OUT.quarantine.jsonl holds the
skipped rows (kept even when no row is left, to say why). The output is written whole or not at all, never
over an input.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from alignflow.errors import ConfigError, DataError, UsageError

KINDS = ("sft", "preference", "eval")


def add_parsers(verbs) -> None:
    from flows.cli import positive_int

    inspect = verbs.add_parser("inspect", help="detected format, rows, roles, turns, lengths and every problem")
    inspect.add_argument("source", help="a file or folder, s3://, hf://datasets/..., modelscope://datasets/...")
    inspect.add_argument("--kind", choices=KINDS, help="what the rows are for (default: guessed from the rows)")
    inspect.add_argument("--format", default="auto", help="row format (default: detected per file)")
    inspect.add_argument("--model", help="a model (folder, builtin://, hf://, modelscope://) whose tokenizer "
                                         "measures lengths in tokens")
    inspect.add_argument("--max-length", type=positive_int, default=1024, help="tokens per row the stage keeps "
                                                                      "(default 1024, the stages' default)")
    inspect.add_argument("--json", dest="as_json", action="store_true", help="print the numbers as JSON")
    convert = verbs.add_parser("convert", help="write the canonical JSONL the convert stage writes, with a report")
    convert.add_argument("sources", nargs="+", metavar="SOURCE")
    convert.add_argument("--kind", choices=KINDS, required=True)
    convert.add_argument("--format", default="auto")
    convert.add_argument("--columns", nargs="*", default=[], metavar="THEIRS=OURS", help="rename fields first")
    convert.add_argument("--on-bad-rows", choices=("fail", "skip"), default="fail")
    convert.add_argument("-o", "--output", required=True, metavar="OUT.jsonl")


def cmd(args) -> int:
    return inspect(args) if args.data_command == "inspect" else convert(args)


def _source(source: str, fmt: str, columns: dict | None = None):
    from tasks.convert import DataSource

    return DataSource(source=source, format=fmt, columns=columns or {})


def guess_kind(source: str, scratch: Path) -> str:
    """Preference rows are the most distinctive, then multiple choice, then chat rows."""
    from tasks import formats
    from tasks.convert import listed_problems
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
    from tasks.convert import MAX_LISTED

    bad = 0
    for record in found:
        if record.row is not None:
            return record.row, bad
        bad += 1
        if len(problems) < MAX_LISTED:
            problems.append(f"{record.file}:{record.line}: {record.error}")
    return None, bad


def inspect(args) -> int:
    from tasks.convert import ConvertRules, convert_sources

    with tempfile.TemporaryDirectory(prefix="alignflow-inspect-") as tmp:
        scratch = Path(tmp)
        kind = args.kind or guess_kind(args.source, scratch / "sources")
        report = convert_sources(kind, [_source(args.source, args.format)], ConvertRules(on_bad_rows="skip"),
                                 scratch / "out", scratch / "sources")
        facts = report.as_dict() | {"source": args.source, "guessed_kind": args.kind is None}
        if args.model:
            facts["tokens"] = token_lengths(kind, scratch / "out" / "data.jsonl", args.model, args.max_length,
                                            scratch)
    print(json.dumps(facts, indent=2) if args.as_json else describe(facts))
    return 0


def token_lengths(kind: str, data: Path, model: str, max_length: int, scratch: Path) -> dict:
    """Length percentiles in the model's tokens, and how many rows `max_length` would cut."""
    from tasks.convert import percentiles
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


def describe(facts: dict) -> str:
    """The report as aligned `key: value` lines."""
    guessed = " (guessed; --kind to choose)" if facts["guessed_kind"] else ""
    lines = [("source", facts["source"]), ("kind", facts["kind"] + guessed)]
    for src in facts["sources"]:
        lines += [(f"format of {file}", fmt) for file, fmt in src["formats"].items()]
    lines += [(k, facts[k]) for k in ("read", "rows", "bad", "duplicates", "skipped")]
    stats = facts["stats"]
    if "roles" in stats:
        lines += [("roles", ", ".join(f"{r} {n}" for r, n in stats["roles"].items())),
                  ("assistant turns", _spread(stats["assistant_turns"]))]
    lines.append(("characters", _spread(stats["chars"])))
    if "tokens" in facts:
        t = facts["tokens"]
        lines += [("tokens", _spread(t["lengths"])), (f"truncated at {t['max_length']}", t["truncated"])]
        if facts["kind"] == "sft":
            lines.append(("no answer left", t["no_answer_left"]))
        lines.append(("template refused", t["template_refused"]))
    width = max(len(k) for k, _ in lines)
    text = "\n".join(f"{k + ':':<{width + 2}}{v}" for k, v in lines)
    if facts["problems"]:
        from tasks.convert import listed_problems

        text += "\nproblems:\n" + listed_problems(facts["problems"], facts["bad"])
    return text


def _spread(p: dict) -> str:
    return " ".join(f"{k} {v}" for k, v in p.items()) if p else "-"


def convert(args) -> int:
    from tasks.convert import ConvertRules, EmptyData, convert_sources, describe

    columns = dict(_pair(c) for c in args.columns)
    out = _output(args.output, args.sources)
    stem = out.with_suffix("")
    with _scratch(out, args.output) as tmp:
        work = Path(tmp)
        try:
            report = convert_sources(args.kind, [_source(s, args.format, columns) for s in args.sources],
                                     ConvertRules(on_bad_rows=args.on_bad_rows), work / "out", work / "sources")
        except EmptyData as exc:
            raise _with_quarantine(exc, work / "out", stem) from None
        counts = report.as_dict()
        (work / "out" / "report.json").write_text(json.dumps(counts, indent=2))
        _publish(work / "out", out, stem)
    print(f"wrote {out}: {describe(counts)}; report {stem}.report.json")
    return 0


def _output(given: str, sources: list[str]) -> Path:
    """The -o path, refused before anything is written when it is not a .jsonl file name or would overwrite
    (or land inside) an input."""
    out = Path(given).expanduser()
    if out.suffix != ".jsonl":
        raise ConfigError(f"-o {out}: name a .jsonl file", "command line")
    if out.is_dir():
        raise UsageError(f"-o {given}: is a folder; name the file to write, e.g. -o {out / 'data.jsonl'}")
    stem = out.with_suffix("")
    for dest in (out, Path(f"{stem}.report.json"), Path(f"{stem}.quarantine.jsonl")):
        for source in sources:
            _not_an_input(dest, source, given)
    return out


def _not_an_input(dest: Path, source: str, given: str) -> None:
    if "://" in source:
        return
    src = Path(source).expanduser()
    if src.resolve() == dest.resolve() or (src.is_file() and dest.is_file() and os.path.samefile(src, dest)):
        raise UsageError(f"-o {given}: would write {dest}, which is the input {source}; pass an -o that is not "
                         "one of the inputs")
    if src.is_dir() and src.resolve() in dest.resolve().parents:
        raise UsageError(f"-o {given}: would write {dest} inside the input folder {source}, where the next "
                         "conversion of that folder would read it as data; pass an -o outside the folder")


def _scratch(out: Path, given: str) -> tempfile.TemporaryDirectory:
    """A scratch folder beside the output, so the finished files are moved, not copied, into place."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=".alignflow-convert-", dir=out.parent)
    except OSError as exc:
        raise UsageError(f"-o {given}: cannot write in {out.parent} ({exc.strerror or exc}); pass an -o in a "
                         "folder you can write to") from None


def _publish(done: Path, out: Path, stem: Path) -> None:
    """The finished files into place, the data last: its presence means the rest is there. A quarantine
    left from an earlier conversion goes: its rows are not this output's."""
    if not (done / "quarantine.jsonl").exists():
        Path(f"{stem}.quarantine.jsonl").unlink(missing_ok=True)
    moves = [("report.json", f"{stem}.report.json"), ("quarantine.jsonl", f"{stem}.quarantine.jsonl"),
             ("data.jsonl", str(out))]
    for name, dest in moves:
        if (done / name).exists():
            shutil.move(done / name, dest)


def _with_quarantine(exc: DataError, done: Path, stem: Path) -> DataError:
    """No row was left: the quarantine, which says why, is moved beside the requested output (no data is)."""
    if not (done / "quarantine.jsonl").exists():
        return exc
    kept = Path(f"{stem}.quarantine.jsonl")
    shutil.move(done / "quarantine.jsonl", kept)
    return DataError(f"{exc}\nEvery bad row, with its reason, is in {kept}")


def _pair(text: str) -> tuple[str, str]:
    theirs, sep, ours = text.partition("=")
    if not sep or not theirs or not ours:
        raise ConfigError(f"--columns {text!r}: expected THEIRS=OURS, e.g. --columns text=question", "command line")
    return theirs, ours
