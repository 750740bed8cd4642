"""Reading dataset files as a stream of rows, each with the file and line it came from.

Files: .jsonl, .json, .csv, .tsv, .parquet, and gzip of any of them (`.jsonl.gz`); a folder means every such
file in it, in name order. Rows stream one at a time (a .json array is the exception: it is one document),
so memory does not grow with the file. A line that is not JSON, not UTF-8, nested too deeply to read or with a
key given twice is a bad row, reported with its file and line (and its text kept for the quarantine); a file
that is not text at all (binary, UTF-16) or a gzip stream cut short is a DataError naming the file and the fix.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from alignflow.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
WRAPPERS = ("data", "rows", "train", "test", "validation", "examples", "instances", "records", "items")
TEXT_HINT = "save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8 IN > OUT`)"
TOO_DEEP = (f"nested too deeply: more levels of [ and {{ than can be read (about {sys.getrecursionlimit()}); "
            "flatten the row or leave it out")
GZIP_BROKEN = (EOFError, zlib.error, gzip.BadGzipFile)  # what a cut or damaged gzip stream raises mid-read


@dataclass
class Record:
    """One row of a file, or why the line could not be read as one. `text` is the line as read (JSON lines,
    and the bad rows of a table; undecodable bytes as U+FFFD), so a row that is not one is kept in full."""

    file: str
    line: int
    row: dict | None
    error: str | None = None
    text: str | None = None


class DuplicateKey(ValueError):
    """A JSON object that names the same key twice: which value is meant cannot be known."""

    def __init__(self, key: str):
        super().__init__(f"duplicate key {key!r}: the row gives it two values; keep one")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    row = dict(pairs)
    if len(row) != len(pairs):
        raise DuplicateKey(_repeated_key(pairs))
    return row


def _repeated_key(pairs: list[tuple[str, object]]) -> str:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    raise ValueError("no key is repeated")


# One decoder for every line: json.loads with a hook would build a new one per call (measured: twice the cost).
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


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
        yield from _jsonl(_raw_lines(path, shown), shown)


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _raw_lines(path: Path, shown: str) -> Iterator[bytes]:
    """The file's lines as bytes; a gzip stream that stops short is a DataError at the line it reached."""
    number = 0
    with _open_binary(path) as f:
        try:
            for number, raw in enumerate(f, 1):
                yield raw
        except GZIP_BROKEN as exc:
            raise _broken_gzip(shown, number + 1, exc) from None


def _read_all(path: Path, shown: str, lines: bool = True) -> bytes:
    """The whole (decompressed) file; `lines`: the error names the line reached (not for binary files)."""
    chunks: list[bytes] = []
    with _open_binary(path) as f:
        try:
            while chunk := f.read1(1 << 20):  # read1: the bytes before a cut arrive before its error
                chunks.append(chunk)
        except GZIP_BROKEN as exc:
            raise _broken_gzip(shown, sum(c.count(b"\n") for c in chunks) + 1 if lines else None, exc) from None
    return b"".join(chunks)


def _broken_gzip(shown: str, line: int | None, exc: Exception) -> DataError:
    where, why = f"{shown}:{line}" if line else shown, str(exc) or type(exc).__name__
    return DataError(f"{where}: the gzip stream ends early (truncated or corrupt): {why}; "
                     "re-download or re-compress it")


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
    head = _head(path, shown, gz)
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise DataError(f"{shown}:1: the file is UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8; "
                        f"{TEXT_HINT}")
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise DataError(f"{shown}:{line}: a NUL byte: this is a binary file (or UTF-16 without a byte-order mark), "
                        f"not {suffix} text; {TEXT_HINT}, or pass the right file")


def _head(path: Path, shown: str, gz: bool) -> bytes:
    """The first 4 KiB of text; of a gzip file, as much as its start holds (a cut later on is found by the
    reader, at its line)."""
    with open(path, "rb") as f:
        raw = f.read(1 << 16 if gz else 4096)
    if not gz:
        return raw
    try:
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(raw, 4096)
    except zlib.error as exc:
        raise _broken_gzip(shown, 1, exc) from None


def _decode(raw: bytes, number: int) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} ({exc.reason})"


def _jsonl(lines: Iterable[bytes], shown: str) -> Iterator[Record]:
    for number, raw in enumerate(lines, 1):
        text, error = _decode(raw, number)
        if error:
            yield Record(shown, number, None, error, _line_text(raw.decode("utf-8", errors="replace")))
        elif text.strip():
            yield _parse(text, shown, number)


def _line_text(text: str) -> str:
    return text.removesuffix("\n").removesuffix("\r")


def _parse(text: str, shown: str, number: int) -> Record:
    line = _line_text(text)
    try:
        row = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return Record(shown, number, None, f"not valid JSON: {exc.msg} at column {exc.colno}", line)
    except DuplicateKey as exc:
        return Record(shown, number, None, str(exc), line)
    except RecursionError:
        return Record(shown, number, None, TOO_DEEP, line)
    except ValueError as exc:  # an integer longer than Python converts (4300 digits)
        return Record(shown, number, None, f"not readable JSON: {str(exc).split(':')[0]}", line)
    if not isinstance(row, dict):
        return Record(shown, number, None, f"expected a JSON object, got {type(row).__name__}", line)
    return Record(shown, number, row, text=line)


def _json(path: Path, shown: str) -> Iterator[Record]:
    """A JSON array of rows; a file of one object per line that is named .json is read as JSON lines."""
    data = _read_all(path, shown)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{shown}:{line}: not UTF-8: byte 0x{data[exc.start]:02x} ({exc.reason}); "
                        f"{TEXT_HINT}") from None
    try:
        rows, repeated = _document(text, shown)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON lines under a .json name, as many hub datasets are
            yield from _jsonl(io.BytesIO(data), shown)
            return
        yield Record(shown, exc.lineno, None, f"not valid JSON: {exc.msg} at column {exc.colno}; the file is one "
                                              "document, so nothing after this point can be read")
        return
    for i, row in enumerate(_rows(rows, shown), 1):
        yield _element(row, shown, i, repeated)


def _document(text: str, shown: str) -> tuple[object, bool]:
    """The parsed document, and whether any object in it repeats a key (those objects are `_Repeated`)."""
    repeated = []

    def mark(pairs: list[tuple[str, object]]) -> dict:
        row = dict(pairs)
        if len(row) == len(pairs):
            return row
        repeated.append(_Repeated(row, _repeated_key(pairs)))
        return repeated[-1]

    try:
        return json.JSONDecoder(object_pairs_hook=mark).decode(text), bool(repeated)
    except RecursionError:
        raise DataError(f"{shown}: {TOO_DEEP}; the file is one document, so none of it can be read") from None
    except json.JSONDecodeError:
        raise  # the caller's: a .json file may hold JSON lines
    except ValueError as exc:  # an integer longer than Python converts (4300 digits)
        raise DataError(f"{shown}: not readable JSON: {str(exc).split(':')[0]}; the file is one document, so none "
                        "of it can be read") from None


class _Repeated(dict):
    """An object of a .json document that named `key` twice (the last value kept, as JSON readers do)."""

    def __init__(self, row: dict, key: str):
        super().__init__(row)
        self.key = key


def _rows(rows, shown: str) -> list:
    if isinstance(rows, dict) and len(rows) == 1 and next(iter(rows)) in WRAPPERS:
        if isinstance(rows, _Repeated):
            raise DataError(f"{shown}: the document names {rows.key!r} twice at its top level, so one list of "
                            "rows would be lost; merge them into one")
        rows = next(iter(rows.values()))  # {"data": [...]}
    elif isinstance(rows, dict):
        rows = [rows]  # one row (a JSON-lines file of one line)
    if not isinstance(rows, list):
        raise DataError(f"{shown}: a .json dataset must be a list of rows (or JSON lines), got "
                        f"{type(rows).__name__}")
    return rows


def _element(row, shown: str, i: int, repeated: bool) -> Record:
    """Row `i` of a .json list; `repeated`: some object in the document names a key twice."""
    if not isinstance(row, dict):
        return Record(shown, i, None, f"expected a JSON object, got {type(row).__name__}", _as_text(row))
    key = _first_repeat(row) if repeated else None
    return Record(shown, i, None, str(DuplicateKey(key)), _as_text(row)) if key else Record(shown, i, row)


def _first_repeat(value) -> str | None:
    """A key named twice in some `_Repeated` object within `value` (walked without recursion), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Repeated):
            return item.key
        stack.extend(item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
    return None


def _as_text(value) -> str | None:
    """A value that is not a row, as JSON text for the quarantine (None if too deep to write)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except RecursionError:
        return None


def _csv(path: Path, shown: str, delimiter: str) -> Iterator[Record]:
    """Cells are text; a cell holding a JSON list (a `messages` or `history` column) is decoded by the format
    that expects a list there (tasks/formats.py), never guessed here."""
    csv.field_size_limit(sys.maxsize)
    lines = _Lines(_raw_lines(path, shown))
    reader = csv.DictReader(lines, delimiter=delimiter)
    try:
        _check_header(reader, lines, shown)
        end = reader.line_num
        for row in reader:
            start, end = end + 1, reader.line_num
            text, bad = lines.take(start, end)
            if bad:
                yield Record(shown, bad, None, lines.not_utf8[bad], text)
            elif None in row:
                yield Record(shown, end, None, f"{len(row[None])} more cells than the header has", text)
            else:
                yield Record(shown, end, row)
    except csv.Error as exc:
        raise DataError(f"{shown}:{reader.line_num}: not valid CSV: {exc}") from None


def _check_header(reader: csv.DictReader, lines: _Lines, shown: str) -> None:
    """A header that is not UTF-8, or names a column twice (one column's cells would be lost), is the file's
    error, not a row's."""
    names = reader.fieldnames or []
    lines.take(1, reader.line_num)
    if names and lines.not_utf8:
        line, why = next(iter(lines.not_utf8.items()))
        raise DataError(f"{shown}:{line}: the header is {why}; {TEXT_HINT}")
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise DataError(f"{shown}:{reader.line_num}: the header names the column {name!r} twice, so one of "
                            "them would be lost; rename one")
        seen.add(name)


class _Lines:
    """A file's lines, each decoded on its own so a bad byte is pinned to its line: noted in `not_utf8` and
    read with U+FFFD in its place (its row is then a bad row). Each line's text is kept until its row is
    taken, so a bad row's text reaches the quarantine."""

    def __init__(self, raw: Iterable[bytes]):
        self.raw, self.not_utf8, self.texts = raw, {}, {}

    def __iter__(self) -> Iterator[str]:
        for number, line in enumerate(self.raw, 1):
            text, error = _decode(line, number)
            if error:
                self.not_utf8[number] = error
                text = line.decode("utf-8", errors="replace")
            self.texts[number] = text
            yield text

    def take(self, start: int, end: int) -> tuple[str, int | None]:
        """The text of lines start..end (forgotten now), and the first of them that is not UTF-8."""
        text = "".join(self.texts.pop(n, "") for n in range(start, end + 1))
        bad = next((n for n in range(start, end + 1) if n in self.not_utf8), None)
        return _line_text(text), bad


def _parquet(path: Path, shown: str) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        gz = path.name.lower().endswith(".gz")
        parquet = pq.ParquetFile(pa.BufferReader(_read_all(path, shown, lines=False)) if gz else str(path))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{shown}: not a readable Parquet file: {exc}") from None
    number = 0
    for rows in _batches(parquet, shown):
        for row in rows:
            number += 1
            yield Record(shown, number, row)


def _batches(parquet, shown: str) -> Iterator[list[dict]]:
    """The file's rows, 1024 at a time; a damaged page is the file's error, named with the rows before it."""
    import pyarrow as pa

    batches, done = parquet.iter_batches(batch_size=1024), 0
    while True:
        try:
            batch = next(batches, None)
            rows = None if batch is None else batch.to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{shown}: not a readable Parquet file after row {done}: {exc}") from None
        if rows is None:
            return
        done += len(rows)
        yield rows
