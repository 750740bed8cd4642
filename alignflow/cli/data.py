"""`alignflow data add|scan|inspect|convert`: raw data versions for the service, and a look at a dataset
before a run trains on it.

    alignflow data add NAME SOURCE       register raw data as the next version of NAME, and announce it
    alignflow data scan SPEC             what the watch-data deployment does, once, here

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


def add_parsers(sub) -> None:
    from alignflow.cli.common import positive_int

    data = sub.add_parser("data", help="inspect and convert datasets; register raw data versions; scan watched "
                                       "sources")
    verbs = data.add_subparsers(dest="data_command", required=True)
    add = verbs.add_parser("add", help="store a file, folder or s3:// prefix as the next version of NAME "
                                       "and announce it (alignflow.dataset.updated)")
    add.add_argument("name", metavar="NAME", help="dataset name, PIPELINE/NAME, e.g. demo/sft-extra")
    add.add_argument("source", metavar="SOURCE")
    add.add_argument("--store", help="folder or s3://bucket/prefix (default: $ALIGNFLOW_STORE or .alignflow/store)")
    add.set_defaults(func=cmd_add)
    scan = verbs.add_parser("scan", help="scan a spec's watched sources once, as watch-data does")
    scan.add_argument("spec")
    scan.set_defaults(func=cmd_scan)
    inspect = verbs.add_parser("inspect", help="detected format, rows, roles, turns, lengths and every problem")
    inspect.add_argument("source", help="a file or folder, s3://, hf://datasets/..., modelscope://datasets/...")
    inspect.add_argument("--kind", choices=KINDS, help="what the rows are for (default: guessed from the rows)")
    inspect.add_argument("--format", default="auto", help="row format (default: detected per file)")
    inspect.add_argument("--model", help="a model (folder, builtin://, hf://, modelscope://) whose tokenizer "
                                         "measures lengths in tokens")
    inspect.add_argument("--max-length", type=positive_int, default=1024, help="tokens per row the stage keeps "
                                                                      "(default 1024, the stages' default)")
    inspect.add_argument("--json", dest="as_json", action="store_true", help="print the numbers as JSON")
    inspect.set_defaults(func=inspect_command)
    convert = verbs.add_parser("convert", help="write the canonical JSONL the convert stage writes, with a report")
    convert.add_argument("sources", nargs="+", metavar="SOURCE")
    convert.add_argument("--kind", choices=KINDS, required=True)
    convert.add_argument("--format", default="auto")
    convert.add_argument("--columns", nargs="*", default=[], metavar="THEIRS=OURS", help="rename fields first")
    convert.add_argument("--on-bad-rows", choices=("fail", "skip"), default="fail")
    convert.add_argument("-o", "--output", required=True, metavar="OUT.jsonl")
    convert.set_defaults(func=convert_command)


def inspect_command(args) -> int:
    from tasks.inspect import inspect_source

    facts = inspect_source(args.source, args.kind, args.format, args.model, args.max_length)
    print(json.dumps(facts, indent=2) if args.as_json else describe(facts))
    return 0


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
        from tasks.row_stats import listed_problems

        text += "\nproblems:\n" + listed_problems(facts["problems"], facts["bad"])
    return text


def _spread(p: dict) -> str:
    return " ".join(f"{k} {v}" for k, v in p.items()) if p else "-"


def convert_command(args) -> int:
    from tasks.convert import ConvertRules, EmptyData, convert_sources, describe
    from tasks.inspect import data_source

    columns = dict(_pair(c) for c in args.columns)
    out = _output(args.output, args.sources)
    stem = out.with_suffix("")
    with _scratch(out, args.output) as tmp:
        work = Path(tmp)
        try:
            report = convert_sources(args.kind, [data_source(s, args.format, columns) for s in args.sources],
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


def cmd_scan(args) -> int:
    from alignflow.cli.common import quiet_prefect
    from alignflow.service import server
    from flows.spec import load_spec
    from flows.watch_data import scan

    quiet_prefect()
    spec = load_spec(args.spec)
    with server.prefect_api() as url:
        for line in scan(spec, announce=url is not None):
            print(line)
    return 0


def cmd_add(args) -> int:
    from alignflow.cli.common import quiet_prefect
    from alignflow.home import default_store
    from alignflow.names import check
    from alignflow.service import server
    from flows.data_versions import announce_once, register
    from flows.preflight import store_problems
    from storage import open_store

    quiet_prefect()
    name, source = args.name, args.source

    check("dataset", name, "data add NAME")  # the on-new-data deployment reacts to names under its pipeline
    location = args.store or default_store()
    problems = store_problems(location, None)
    if problems:
        raise UsageError(f"data add: {problems[0]}")
    if "://" not in location:
        location = str(Path(location).expanduser().resolve())
    store = open_store(location)
    ref, new = register(store, name, source)
    print(f"registered {ref.label} ({ref.metrics['files']} files, {ref.short_digest}) in {store.uri}" if new else
          f"{ref.label} already holds this content ({ref.short_digest}); nothing registered")
    with server.prefect_api() as url:
        if url is None:
            print("no Prefect server is running, so no event was sent; `alignflow server up` starts one")
        elif announce_once(store, ref, source):
            print(f"sent alignflow.dataset.updated for {ref.label} to {url}")
    return 0
