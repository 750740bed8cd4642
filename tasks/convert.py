"""Stage `convert_dataset`: raw rows from one or more sources in, one canonical JSONL per split out.

Per file, the format is detected from the first row (tasks/formats.py lists them) unless the source names
one; `columns` renames fields first. Every row is checked. With `on_bad_rows: fail` (the default) a dataset
with bad rows stops the run before any training and lists them as `file:line: reason`; with `skip` they are
left out, written with their reasons to `quarantine.jsonl` in the dataset artifact, and counted. Exact
duplicates are removed and counted. An eval split may be carved out of the SFT rows: each row's side is
decided by a seeded hash of its content, so the split is the same on every run and machine.

Output artifact: data.jsonl, report.json (counts per source, formats, shape statistics), and
quarantine.jsonl when rows were skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from alignflow.errors import ConfigError, DataError
from storage import ArtifactRef
from tasks import formats
from tasks.config import StageConfig
from tasks.contamination import EvalIndex, EvalSets, row_texts
from tasks.formats import RowError, SkipRow
from tasks.readers import TOO_DEEP, Record, records
from tasks.row_stats import MAX_LISTED, listed_problems, percentiles
from tasks.stage import RunContext, publish, stage


class EmptyData(DataError):
    """No row is left after conversion. With `on_bad_rows: skip` the quarantine says why, so it is kept."""


class DataSource(StageConfig):
    """One source of a split's rows."""

    source: str = Field(description="a file or folder, s3://bucket/prefix, hf://datasets/OWNER/NAME[:CONFIG][@SPLIT], "
                                    "modelscope://datasets/OWNER/NAME, builtin://reverse/SPLIT or store://NAME@VERSION")
    format: str = Field("auto", description="row format; auto detects it per file (see docs/DATA.md for the names)")
    columns: dict[str, str] = Field(default_factory=dict, description="renames the file's fields first: "
                                                                      "{their_field: our_field}")
    max_rows: Optional[int] = Field(None, ge=1, le=10**9, description="read at most this many rows of this source")


class ConvertRules(StageConfig):
    """How a split's rows are checked and divided."""

    on_bad_rows: Literal["fail", "skip"] = "fail"
    holdout: Literal["none", "train", "eval"] = "none"  # which side of a carved eval split this split keeps
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0
    contamination: Literal["drop", "fail", "warn", "off"] = "drop"  # training rows that contain an eval row

    def row_kind(self, kind: str) -> str:
        """The kind of row the sources hold: a carved eval split reads SFT rows."""
        return "sft" if self.holdout != "none" else kind


@dataclass
class SourceReport:
    source: str
    formats: dict[str, str] = field(default_factory=dict)  # file -> detected format
    read: int = 0
    rows: int = 0
    bad: int = 0
    duplicates: int = 0
    skipped: int = 0  # valid rows without a preference (UltraFeedback ties)
    held_out: int = 0  # rows on the other side of a carved eval split
    contaminated: int = 0  # rows holding an evaluation row (dropped unless `contamination` keeps them)


COUNTS = ("read", "rows", "bad", "duplicates", "skipped", "held_out", "contaminated")


@dataclass
class Report:
    kind: str
    sources: list[SourceReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the first MAX_LISTED bad rows, as file:line: reason
    contamination: list[str] = field(default_factory=list)  # the first MAX_LISTED contaminated rows, likewise
    stats: dict = field(default_factory=dict)

    def total(self, key: str) -> int:
        return sum(getattr(s, key) for s in self.sources)

    def as_dict(self) -> dict:
        counts = {k: self.total(k) for k in COUNTS}
        return {"kind": self.kind, **counts, "sources": [vars(s) for s in self.sources], "stats": self.stats,
                "problems": self.problems, "contamination": self.contamination}


def convert(kind: str, sources: list[tuple[DataSource, list[tuple[Path, str]]]], rules: ConvertRules,
            out: Path, evals: EvalIndex | None = None) -> Report:
    """Convert every source's files into `out/data.jsonl` (and `out/quarantine.jsonl`); raise DataError
    listing every bad row when they are not to be skipped. `sources`: each with its local files; `evals`:
    the evaluation rows a training row must not contain (`rules.contamination` says what happens to one
    that does). A failure leaves no data.jsonl behind (and no quarantine, unless it is EmptyData's
    explanation)."""
    out.mkdir(parents=True, exist_ok=True)
    report = Report(kind)
    try:
        _write(kind, sources, rules, out, report, evals if rules.contamination != "off" else None)
        _check(kind, report, rules)
    except EmptyData:
        (out / "data.jsonl").unlink(missing_ok=True)
        raise
    except BaseException:  # a half-written output must not pass for a whole one
        (out / "data.jsonl").unlink(missing_ok=True)
        (out / "quarantine.jsonl").unlink(missing_ok=True)
        raise
    return report


def _write(kind: str, sources: list[tuple[DataSource, list[tuple[Path, str]]]], rules: ConvertRules, out: Path,
           report: Report, evals: EvalIndex | None) -> None:
    seen, shape = set(), Shape(kind)
    with open(out / "data.jsonl", "w", encoding="utf-8") as data, Quarantine(out / "quarantine.jsonl") as bad:
        for spec, files in sources:
            src = SourceReport(spec.source)
            report.sources.append(src)
            for record, fmt in _read(kind, spec, files, rules, src):
                converted = _one(kind, record, fmt, spec, rules, src, report, bad)
                if converted is None or not _first(converted[0], seen, src):
                    continue
                if evals is not None and _contaminated(evals, record, converted[1], rules, src, report, bad):
                    continue
                data.write(converted[0] + "\n")
                shape.add(converted[1], len(converted[0]))
                src.rows += 1
    report.stats = shape.summary()


def _contaminated(evals: EvalIndex, record: Record, row: dict, rules: ConvertRules, src: SourceReport,
                  report: Report, bad: Quarantine) -> bool:
    """Whether the row holds an evaluation row and is to be left out (quarantined with the row it holds)."""
    match = evals.find(row_texts(row))
    if match is None:
        return False
    src.contaminated += 1
    holds = match.describe()
    if len(report.contamination) < MAX_LISTED:
        report.contamination.append(f"{record.file}:{record.line}: {holds}")
    if rules.contamination == "drop":
        bad.add(record, f"contaminated: {holds}", {"set": match.set_name, "row": match.row, "text": match.text})
    return rules.contamination == "drop"


def convert_sources(kind: str, sources: list[DataSource], rules: ConvertRules, out: Path, scratch: Path,
                    registered: list[Path | None] | None = None, evals: EvalIndex | None = None) -> Report:
    """Bring each source's files here (`scratch` holds downloads; `registered`: local copies of store://
    versions) and convert them into `out`, as `convert` does."""
    from tasks.sources import local_files

    registered = registered or [None] * len(sources)
    return convert(kind, [(spec, local_files(spec.source, scratch, path)) for spec, path in zip(sources, registered)],
                   rules, out, evals)


def _read(kind: str, spec: DataSource, files, rules: ConvertRules, src: SourceReport):
    """(record, format name) for each row of the source's files, up to max_rows."""
    detect_kind = rules.row_kind(kind)
    for path, shown in files:
        fmt = None if spec.format == "auto" else _named_format(detect_kind, spec.format, spec.source)
        if fmt:
            src.formats[shown] = fmt
        for record in records(path, shown):
            if spec.max_rows and src.read >= spec.max_rows:
                return
            src.read += 1
            if fmt is None and record.row is not None:
                fmt = _detect(detect_kind, formats.rename(record.row, spec.columns), shown)
                src.formats[shown] = fmt
            yield record, fmt


def _named_format(kind: str, name: str, source: str) -> str:
    try:
        return formats.find(kind, name).name
    except KeyError as exc:
        raise ConfigError(f"data source {source}: {exc.args[0]}", "spec") from None


def _detect(kind: str, row: dict, shown: str) -> str:
    fmt = formats.detect(kind, row)
    if fmt is None:
        raise DataError(f"{shown}: rows with fields {sorted(row)} are not a known {kind} format. Known: "
                        f"{formats.expected_fields(kind)}. Name the format (`format:`) or map your fields "
                        f"(`columns: {{their_field: our_field}}`)")
    return fmt.name


def _one(kind: str, record: Record, fmt: str | None, spec: DataSource, rules: ConvertRules, src: SourceReport,
         report: Report, bad: Quarantine) -> tuple[str, dict] | None:
    """The canonical row of one record and its JSON line, or None (a bad, skipped or held-out row)."""
    try:
        row, line = _canonical(rules.row_kind(kind), record, fmt, spec.columns)
    except SkipRow:
        src.skipped += 1
        return None
    except (RowError, TypeError, AttributeError, ValueError, RecursionError) as exc:
        src.bad += 1
        reason = _reason(exc)
        if len(report.problems) < MAX_LISTED:  # all of them are in the quarantine file
            report.problems.append(f"{record.file}:{record.line}: {reason}")
        bad.add(record, reason)
        return None
    if rules.holdout != "none":
        side = "eval" if in_eval(line, rules.eval_fraction, rules.seed) else "train"
        if side != rules.holdout:
            src.held_out += 1
            return None
        if kind == "eval":
            row = formats.eval_qa(row)
            line = json.dumps(row, ensure_ascii=False, sort_keys=True)
    return line, row


def _canonical(kind: str, record: Record, fmt: str | None, columns: dict[str, str]) -> tuple[dict, str]:
    """The canonical row and its JSON line; raises RowError (or what a value the format did not expect
    raises) for a bad row."""
    if record.error:
        raise RowError(record.error)
    row = formats.convert(kind, fmt, formats.rename(record.row, columns))
    line = json.dumps(row, ensure_ascii=False, sort_keys=True)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RowError(f"a string holds {line[exc.start]!r}, half of a UTF-16 surrogate pair (an escape such as "
                       "\\ud800 without its partner), which is not text; fix or remove it") from None
    return row, line


def _reason(exc: Exception) -> str:
    if isinstance(exc, RowError):
        return str(exc)
    if isinstance(exc, RecursionError):  # a value nested deeper than the reader's JSON limit, e.g. in a CSV cell
        return TOO_DEEP
    return f"unexpected value ({type(exc).__name__}: {exc})"


def in_eval(line: str, fraction: float, seed: int) -> bool:
    """A row's side of a carved eval split: a seeded hash of its content, the same on every machine."""
    digest = hashlib.sha256(f"{seed}\n{line}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _first(line: str, seen: set, src: SourceReport) -> bool:
    """False for an exact duplicate of an earlier row (any source of the split)."""
    key = hashlib.blake2b(line.encode(), digest_size=16).digest()
    if key in seen:
        src.duplicates += 1
        return False
    seen.add(key)
    return True


def _check(kind: str, report: Report, rules: ConvertRules) -> None:
    bad, contaminated = report.total("bad"), report.total("contaminated")
    if contaminated and rules.contamination == "fail":
        raise DataError(f"{kind} data has {contaminated} row{'s' * (contaminated != 1)} holding evaluation rows "
                        f"(13 words in a row in common after normalisation, or the whole of a shorter question):\n"
                        f"{listed_problems(report.contamination, contaminated)}\n"
                        "A model trained on them would be judged on questions it has seen. Remove them from the "
                        "source, or leave them out with data.contamination: drop (they are kept, with the row they "
                        "match, in quarantine.jsonl); data.contamination: warn keeps them")
    if bad and rules.on_bad_rows == "fail":
        raise DataError(f"{kind} data has {bad} bad row{'s' * (bad != 1)} of {report.total('read')}:\n"
                        f"{listed_problems(report.problems, bad)}\n"
                        "Fix them, or leave them out with on_bad_rows: skip (data.on_bad_rows in a spec, "
                        "--on-bad-rows on the command line); they are kept, with their reasons, in quarantine.jsonl")
    if not report.total("rows"):
        why = f"; the bad rows:\n{listed_problems(report.problems, bad)}" if bad else ""
        sources = ", ".join(s.source for s in report.sources)
        raise EmptyData(f"{kind} data from {sources} is empty after conversion ({report.total('read')} rows read, "
                        f"{bad} bad, {report.total('skipped')} without a preference, {report.total('held_out')} held "
                        f"out, {contaminated} holding evaluation rows): nothing to train or evaluate on{why}")


class Quarantine:
    """Bad rows with their reasons, written only when there is one."""

    def __init__(self, path: Path):
        self.path, self.file = path, None

    def __enter__(self) -> Quarantine:
        self.path.unlink(missing_ok=True)
        return self

    def add(self, record: Record, reason: str, match: dict | None = None) -> None:
        """`match`: the evaluation row a contaminated row holds."""
        if self.file is None:  # a lone surrogate is written as its \ud800 escape, which reads back the same
            self.file = open(self.path, "w", encoding="utf-8", errors="backslashreplace")
        self.file.write(_entry(record, reason, match) + "\n")

    def __exit__(self, *exc) -> None:
        if self.file:
            self.file.close()


def _entry(record: Record, reason: str, match: dict | None = None) -> str:
    """A quarantined row as one JSON line: the row, or the line's text when it is not a row."""
    entry = {"file": record.file, "line": record.line, "reason": reason, "row": record.row}
    if match:
        entry["matches"] = match
    if record.row is None and record.text is not None:
        entry["text"] = record.text
    try:
        return json.dumps(entry, ensure_ascii=False, default=str)
    except RecursionError:  # a row nested too deeply to write: its text, as read, instead
        return json.dumps(entry | {"row": None, "text": record.text}, ensure_ascii=False)


class Shape:
    """What the rows look like: roles, turns, and lengths in characters (tokens: `data inspect --model`)."""

    def __init__(self, kind: str):
        self.kind, self.roles, self.turns, self.chars = kind, {}, [], []

    def add(self, row: dict, chars: int) -> None:
        """`chars`: the length of the row's JSON line."""
        msgs = row.get("messages") or (row.get("prompt", []) + (row.get("chosen") or row.get("completion", [])))
        for m in msgs:
            self.roles[m["role"]] = self.roles.get(m["role"], 0) + 1
        if msgs:
            self.turns.append(sum(m["role"] == "assistant" for m in msgs))
        self.chars.append(chars)

    def summary(self) -> dict:
        out = {"chars": percentiles(self.chars)}
        if self.turns:
            out.update(roles=dict(sorted(self.roles.items())), assistant_turns=percentiles(self.turns))
        return out


# ---- the stage -----------------------------------------------------------------------------------

@stage("convert_dataset", key_metric="rows")
def convert_dataset(run: RunContext, split: str, sources: list[DataSource], fingerprints: list[str],
                    raws: list[Optional[ArtifactRef]], rules: ConvertRules,
                    against: Optional[EvalSets] = None) -> ArtifactRef:
    """`fingerprints`: each source's content identity (keys the cache for sources outside the store);
    `raws`: the registered dataset version each `store://` source resolved to (None for the others);
    `against`: for a training split, the evaluation sets its rows must not contain."""
    from prefect import get_run_logger

    from tasks.degeneracy import mostly_duplicates, noted

    workdir, store, log = run.workdir(), run.open_store(), get_run_logger()
    evals = None
    if against is not None and rules.contamination != "off":
        evals = against.index(store.get_dir(against.split) if against.split else None, workdir / "eval-sets")
        log.info("convert_dataset[%s]: checking rows against %d evaluation questions", split, len(evals))
    report = convert_sources(split, sources, rules, workdir / split, workdir / "sources",
                             [store.get_dir(raw) if raw else None for raw in raws], evals)
    counts = report.as_dict()
    (workdir / split / "report.json").write_text(json.dumps(counts, indent=2))
    log.info("convert_dataset[%s]: %s", split, describe(counts))
    if counts["contaminated"]:
        log.warning("convert_dataset[%s]: %d rows hold evaluation rows (%s):\n%s", split, counts["contaminated"],
                    "quarantined" if rules.contamination == "drop" else "kept: data.contamination is warn",
                    listed_problems(counts["contamination"], counts["contaminated"]))
    inputs = {f"raw{i}" if len(raws) > 1 else "raw": raw for i, raw in enumerate(raws) if raw is not None}
    if against is not None and against.split is not None:
        inputs["checked_against"] = against.split
    metrics = {k: counts[k] for k in COUNTS if k != "read"}
    metrics = noted(metrics, [mostly_duplicates(counts["read"], counts["duplicates"])], f"convert_dataset[{split}]",
                    log)
    return publish(run, f"data-{split}", "dataset", workdir / split, stage="convert_dataset",
                   config={"split": split, "sources": [s.model_dump() for s in sources], "rules": rules.model_dump()},
                   inputs=inputs, metadata={"split": split}, metrics=metrics)


def describe(counts: dict) -> str:
    """'2980 rows (3000 read; 12 bad rows quarantined, 8 duplicates removed)'"""
    notes = [f"{counts['bad']} bad rows quarantined" if counts["bad"] else "",
             f"{counts['duplicates']} duplicates removed" if counts["duplicates"] else "",
             f"{counts['skipped']} ties skipped" if counts["skipped"] else "",
             f"{counts['held_out']} held out for the other split" if counts["held_out"] else "",
             f"{counts['contaminated']} holding evaluation rows" if counts.get("contaminated") else ""]
    notes = [n for n in notes if n]
    return f"{counts['rows']} rows ({counts['read']} read" + ("; " + ", ".join(notes) if notes else "") + ")"
