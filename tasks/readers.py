"""Reading dataset files as a stream of rows, each with the file and line it came from.

Files: .jsonl, .json, .csv, .tsv, .parquet, and gzip of any of them (`.jsonl.gz`); a folder means every such
file in it, in name order. Rows stream one at a time (a .json array is the exception: it is one document),
so memory does not grow with the file. A line that is not JSON or not UTF-8 is a bad row, reported with its
file and line; a file that is not text at all (binary, UTF-16) is a DataError naming the file and the fix.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from alignflow.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
WRAPPERS = ("data", "rows", "train", "test", "validation", "examples", "instances", "records", "items")
TEXT_HINT = "save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8 IN > OUT`)"


@dataclass
class Record:
    """One row of a file, or why the line could not be read as one."""

    file: str
    line: int
    row: dict | None
    error: str | None = None


def data_suffix(path: Path) -> str | None:
    """'.jsonl' for both data.jsonl and data.jsonl.gz; None for files that are not data."""
    name = path.name.lower().removesuffix(".gz")
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def data_files(path: Path, label: str) -> list[Path]:
    """The data files a source path stands for."""
    if path.is_file():
        if data_suffix(path) is None:
            raise DataError(f"dataset {label}: {path.name} is not a data file; use .jsonl, .json, .csv, .tsv or "
                            ".parquet (optionally .gz)")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and data_suffix(p) and not p.name.startswith("."))
    if not files:
        raise DataError(f"dataset {label}: no .jsonl, .json, .csv, .tsv or .parquet files in {path}")
    return files


def records(path: Path, shown: str | None = None) -> Iterator[Record]:
    """Every row of one data file; `shown` is the name errors use (the source's, not a scratch copy's)."""
    shown = shown or str(path)
    suffix = data_suffix(path)
    _check_text(path, shown, suffix)
    if suffix == ".parquet":
        yield from _parquet(path, shown)
    elif suffix == ".json":
        yield from _json(path, shown)
    elif suffix in (".csv", ".tsv"):
        yield from _csv(path, shown, "\t" if suffix == ".tsv" else ",")
    else:
        yield from _jsonl(_open_binary(path), shown)


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _check_text(path: Path, shown: str, suffix: str) -> None:
    """Refuse, by name, a file that cannot be what its name says."""
    with open(path, "rb") as f:
        raw = f.read(4)
    gz = path.name.lower().endswith(".gz")
    if raw[:2] == b"\x1f\x8b" and not gz:
        raise DataError(f"{shown}: is gzip-compressed but not named .gz; rename it to {path.name}.gz")
    if gz and raw[:2] != b"\x1f\x8b":
        raise DataError(f"{shown}: is named .gz but is not gzip-compressed; remove the .gz suffix")
    if suffix == ".parquet":
        return
    try:
        with _open_binary(path) as f:
            head = f.read(4096)
    except (OSError, EOFError) as exc:
        raise DataError(f"{shown}: cannot be decompressed: {exc}") from None
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise DataError(f"{shown}:1: the file is UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8; "
                        f"{TEXT_HINT}")
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise DataError(f"{shown}:{line}: a NUL byte: this is a binary file (or UTF-16 without a byte-order mark), "
                        f"not {suffix} text; {TEXT_HINT}, or pass the right file")


def _decode(raw: bytes, number: int) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} ({exc.reason})"


def _jsonl(stream, shown: str) -> Iterator[Record]:
    with stream as f:
        for number, raw in enumerate(f, 1):
            text, error = _decode(raw, number)
            if error:
                yield Record(shown, number, None, error)
            elif text.strip():
                yield _parse(text, shown, number)


def _parse(text: str, shown: str, number: int) -> Record:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return Record(shown, number, None, f"not valid JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(row, dict):
        return Record(shown, number, None, f"expected a JSON object, got {type(row).__name__}")
    return Record(shown, number, row)


def _json(path: Path, shown: str) -> Iterator[Record]:
    """A JSON array of rows; a file of one object per line that is named .json is read as JSON lines."""
    with _open_binary(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{shown}:{line}: not UTF-8: byte 0x{data[exc.start]:02x} ({exc.reason}); "
                        f"{TEXT_HINT}") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON lines under a .json name, as many hub datasets are
            yield from _jsonl(io.BytesIO(data), shown)
            return
        yield Record(shown, exc.lineno, None, f"not valid JSON: {exc.msg} at column {exc.colno}; the file is one "
                                              "document, so nothing after this point can be read")
        return
    if isinstance(rows, dict) and len(rows) == 1 and next(iter(rows)) in WRAPPERS:
        rows = next(iter(rows.values()))  # {"data": [...]}
    elif isinstance(rows, dict):
        rows = [rows]  # one row (a JSON-lines file of one line)
    if not isinstance(rows, list):
        raise DataError(f"{shown}: a .json dataset must be a list of rows (or JSON lines), got "
                        f"{type(rows).__name__}")
    for i, row in enumerate(rows, 1):
        yield Record(shown, i, row) if isinstance(row, dict) else \
            Record(shown, i, None, f"expected a JSON object, got {type(row).__name__}")


def _csv(path: Path, shown: str, delimiter: str) -> Iterator[Record]:
    """Cells are text; a cell holding a JSON list (a `messages` or `history` column) is decoded by the format
    that expects a list there (tasks/formats.py), never guessed here."""
    csv.field_size_limit(sys.maxsize)
    not_utf8: dict[int, str] = {}  # line -> why
    with _open_binary(path) as raw:
        reader = csv.DictReader(_lines(raw, not_utf8), delimiter=delimiter)
        try:
            if reader.fieldnames and not_utf8:
                line, why = next(iter(not_utf8.items()))
                raise DataError(f"{shown}:{line}: the header is {why}; {TEXT_HINT}")
            end = reader.line_num
            for row in reader:
                start, end = end + 1, reader.line_num
                bad = next((n for n in range(start, end + 1) if n in not_utf8), None)
                if bad:
                    yield Record(shown, bad, None, not_utf8[bad])
                elif None in row:
                    yield Record(shown, end, None, f"{len(row[None])} more cells than the header has")
                else:
                    yield Record(shown, end, row)
        except csv.Error as exc:
            raise DataError(f"{shown}:{reader.line_num}: not valid CSV: {exc}") from None


def _lines(raw, not_utf8: dict[int, str]) -> Iterator[str]:
    """Each line decoded on its own, so a bad byte is pinned to its line: noted in `not_utf8` and read with
    U+FFFD in its place (its row is then a bad row)."""
    for number, line in enumerate(raw, 1):
        text, error = _decode(line, number)
        if error:
            not_utf8[number] = error
            text = line.decode("utf-8", errors="replace")
        yield text


def _parquet(path: Path, shown: str) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                source = pa.BufferReader(f.read())
        else:
            source = str(path)
        parquet = pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{shown}: not a readable Parquet file: {exc}") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield Record(shown, number, row)
