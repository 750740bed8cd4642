"""Dataset reading and conversion under generated input: whatever a file's bytes or a row's values, the result
is rows and a report, or a DataError (ConfigError, SourceError) naming the file, never another exception, and
a failed conversion leaves no data.jsonl behind. Each input that once broke them is kept below: files as
@example cases of the file target, rows as parametrized cases."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from alignflow.errors import ConfigError, DataError, SourceError
from tasks import formats
from tasks.contamination import EvalIndex
from tasks.convert import ConvertRules, DataSource, convert_sources
from tasks.readers import Record, records
from tests.tasks.test_convert import table_text

EXPECTED = (DataError, ConfigError, SourceError)
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.data_too_large])
NAMES = [f"data{suffix}{gz}" for suffix in (".jsonl", ".json", ".csv", ".tsv", ".parquet") for gz in ("", ".gz")]


# ---- generated values and rows -------------------------------------------------------------------

ODD_TEXT = ["", " ", "\n\t", "\x00", "\ufeff", "\ud800", "a\udfff", "[" * 3000, '{"a":' * 3000, "[1, 2]",
            '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]', "1e999", "true", "B",
            "\n\nHuman: hi\n\nAssistant: yo"]
texts = st.one_of(st.text(max_size=12), st.sampled_from(ODD_TEXT))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.just(10**400), st.floats(), texts)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=6) | st.sampled_from(["role", "content", "from", "value"]),
                                           inner, max_size=3), max_leaves=8)
ROLES = ["system", "user", "assistant", "tool", "robot"]
tool_calls = st.lists(st.fixed_dictionaries({"function": st.fixed_dictionaries(
    {"name": texts}, optional={"arguments": texts | json_values})}, optional={"id": texts}), max_size=2)
message = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": texts | scalars},
                                optional={"tool_calls": tool_calls | json_values, "name": texts,
                                          "tool_call_id": texts})
messages = st.lists(message, max_size=4)
sharegpt = st.lists(st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "function_call",
                                                                    "observation", "bot"]),
                                           "value": texts | scalars}), max_size=4)
transcript = st.lists(st.tuples(st.sampled_from(["Human", "Assistant"]), texts), max_size=4).map(
    lambda turns: "".join(f"\n\n{speaker}: {text}" for speaker, text in turns))
completions = st.lists(st.fixed_dictionaries({}, optional={
    "response": texts | scalars, "overall_score": scalars,
    "annotations": st.dictionaries(texts, st.fixed_dictionaries({"Rating": texts | scalars})) | json_values}),
    max_size=3)
PLAUSIBLE = {  # a field's likely shapes; any JSON value is tried too
    "messages": messages, "conversations": sharegpt, "tools": json_values, "history": st.lists(
        st.lists(texts, min_size=2, max_size=2), max_size=2), "chosen": texts | messages | transcript,
    "rejected": texts | messages | transcript, "prompt": texts | messages, "completion": texts | messages,
    "completions": completions, "label": st.sampled_from(list(formats.LABELS)) | scalars,
    "options": st.lists(texts | scalars, max_size=11), "choices": st.lists(texts, max_size=4),
    "answer": texts | st.integers(-1, 5), "rejected_response": texts}
FIELDS = {
    "messages": ["messages", "tools"], "sharegpt": ["conversations", "system", "tools"],
    "alpaca": ["instruction", "input", "output", "system", "history"],
    "query-response": ["query", "response", "system", "history"], "prompt-completion": ["prompt", "completion"],
    "question-answer": ["question", "answer"], "hh-rlhf": ["chosen", "rejected"],
    "ultrafeedback": ["instruction", "completions"], "swift-rejected": ["messages", "rejected_response"],
    "pairwise": ["prompt", "chosen", "rejected"], "unpaired": ["prompt", "completion", "label"],
    "multiple-choice": ["question", "A", "B", "C", "D", "answer", "options", "choices"],
    "qa": ["question", "answer", "system", "query", "response", "messages", "conversations"]}


Q, A = "Capital of France?", "Paris."
VALID = {  # one good row per format, put among the generated ones so that conversions also succeed
    "messages": {"messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]},
    "sharegpt": {"conversations": [{"from": "human", "value": Q}, {"from": "gpt", "value": A}]},
    "alpaca": {"instruction": Q, "input": "", "output": A}, "query-response": {"query": Q, "response": A},
    "prompt-completion": {"prompt": Q, "completion": A}, "question-answer": {"question": Q, "answer": A},
    "hh-rlhf": {"chosen": f"\n\nHuman: {Q}\n\nAssistant: {A}", "rejected": f"\n\nHuman: {Q}\n\nAssistant: Lyon."},
    "ultrafeedback": {"instruction": Q, "completions": [{"response": A, "overall_score": 9},
                                                        {"response": "Lyon.", "overall_score": 2}]},
    "swift-rejected": {"messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}],
                       "rejected_response": "Lyon."},
    "pairwise": {"prompt": Q, "chosen": A, "rejected": "Lyon."},
    "unpaired": {"prompt": Q, "completion": A, "label": True},
    "multiple-choice": {"question": Q, "A": "Lyon", "B": "Paris", "answer": "B"},
    "qa": {"question": Q, "answer": A}}


def rows_of(fmt: str) -> st.SearchStrategy[dict]:
    """Rows with (some of) the format's fields, each a likely value or any JSON value."""
    return st.fixed_dictionaries({}, optional={f: PLAUSIBLE.get(f, texts) | json_values for f in FIELDS[fmt]})


def kinds_and_formats() -> st.SearchStrategy[tuple[str, str]]:
    return st.sampled_from([(kind, name) for kind in formats.KINDS for name in formats.names(kind) + ["auto"]])


# ---- files ---------------------------------------------------------------------------------------

def table(rows: list[dict], delimiter: str) -> bytes:
    return table_text(rows, delimiter).encode("utf-8", errors="surrogatepass")


def parquet(rows: list[dict]) -> bytes | None:
    """The rows as Parquet, or None when their values have no common column type (or are not text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    try:
        pq.write_table(pa.Table.from_pylist(rows), buffer)
    except (pa.ArrowException, OverflowError, TypeError, UnicodeEncodeError):
        return None
    return buffer.getvalue()


def encode(rows: list, name: str, indent: int | None = None) -> bytes:
    """The rows as the file type `name` says (uncompressed); JSON lines where Parquet cannot hold them."""
    suffix = name.removesuffix(".gz").rpartition(".")[2]
    if suffix == "parquet" and all(isinstance(r, dict) for r in rows) and (data := parquet(rows)) is not None:
        return data
    if suffix in ("csv", "tsv") and all(isinstance(r, dict) for r in rows):
        return table(rows, "\t" if suffix == "tsv" else ",")
    if suffix == "json":
        return json.dumps(rows, indent=indent).encode()
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


GOOD_ROWS = [{"query": "Capital of France?", "response": "Paris."}, {"query": "2 + 2?", "response": "4"},
             {"query": "Largest planet?", "response": "Jupiter."}]
ODD_LINES = [b"[" * 5000, b'{"a":' * 5000, b'{"query": 1e999, "response": "x"}',
             b'{"query": "\\ud800", "response": "x"}', b'{"query": "q", "query": "r", "response": "x"}',
             b'{"query": ' + b"9" * 5000 + b', "response": "x"}', b"NaN", b'"text"', b"\xef\xbb\xbf{}",
             b"\xff\xfe{}", b"\x00\x00", b"\xed\xa0\x80", b'{"query": "q"', b'"a","b","c","d"']
INSERTS = [b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00", b"\n", b"\r", b'"', b"{", b"[", b",", b"\t",
           b"\x1f\x8b", b"\xff"]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """`data` cut, with bytes put in, or with a line replaced by an odd one."""
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["cut", "insert", "line"]))
        if how == "cut":
            data = data[:at]
        elif how == "insert":
            data = data[:at] + draw(st.sampled_from(INSERTS) | st.binary(min_size=1, max_size=8)) + data[at:]
        else:
            lines = data.split(b"\n")
            lines[at % len(lines)] = draw(st.sampled_from(ODD_LINES))
            data = b"\n".join(lines)
    return data


@st.composite
def data_files(draw) -> tuple[str, bytes]:
    """(file name, its bytes): arbitrary bytes, or a valid file of any type mutated before or after gzip."""
    name = draw(st.sampled_from(NAMES))
    if draw(st.integers(0, 4)) == 0:
        return name, draw(st.binary(max_size=300))
    rows = draw(st.lists(st.sampled_from(GOOD_ROWS) | rows_of("query-response"), max_size=5))
    data = draw(mutated(encode(rows, name, draw(st.sampled_from([None, 2])))))
    if name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
        if draw(st.booleans()):
            data = draw(mutated(data))
    return name, data


# ---- the checks ----------------------------------------------------------------------------------

def check_records(path: Path) -> None:
    """Every record is a row or a reason, at a line of this file; else a DataError naming it."""
    try:
        found = list(records(path, str(path)))
    except EXPECTED as exc:
        assert str(path) in str(exc), exc
        return
    for record in found:
        assert isinstance(record, Record) and record.file == str(path) and record.line >= 1
        assert (record.row is None) != (record.error is None), record
        assert record.row is None or isinstance(record.row, dict)


def json_lines(path: Path) -> list[str]:
    """The lines as the trainers read them (a U+2028 or U+0085 inside a string does not end a line)."""
    with open(path, encoding="utf-8") as f:
        return list(f)


EVALS = EvalIndex()  # short questions a fuzzed row may be, and one of 14 words
for _row, _text in enumerate(["a", "hi", "0", "the quick brown fox jumps over the lazy dog and runs far away"]):
    EVALS.add("qa", _row, _text)


def check_convert(kind: str, sources: list[DataSource], on_bad_rows: str, where: Path, named: str) -> None:
    """A report whose counts add up over a well-formed data.jsonl, or an expected error naming `named`; no
    data.jsonl after an error, and no quarantine either with on_bad_rows: fail."""
    out = where / "out"
    try:  # every training row is also looked up in an index of evaluation questions (contamination: drop)
        report = convert_sources(kind, sources, ConvertRules(on_bad_rows=on_bad_rows), out, where / "scratch",
                                 evals=EVALS if kind != "eval" else None)
    except EXPECTED as exc:
        assert named in str(exc), exc
        assert not (out / "data.jsonl").exists()
        assert on_bad_rows == "skip" or not (out / "quarantine.jsonl").exists()
        return
    counts = report.as_dict()
    assert sum(counts[k] for k in ("rows", "bad", "duplicates", "skipped", "contaminated")) == counts["read"]
    assert counts["rows"] > 0 and (counts["bad"] == 0 or on_bad_rows == "skip")
    lines = json_lines(out / "data.jsonl")
    assert len(lines) == counts["rows"] and all(isinstance(json.loads(line), dict) for line in lines)
    quarantined = out / "quarantine.jsonl"
    kept = json_lines(quarantined) if quarantined.exists() else []
    assert len(kept) == counts["bad"] + counts["contaminated"]
    assert all(set(json.loads(q)) >= {"file", "line", "reason", "row"} for q in kept)


# ---- what the fuzzing found, kept ----------------------------------------------------------------

def crc_damaged() -> bytes:
    data = bytearray(gzip.compress(b'{"query": "q", "response": "a"}\n', mtime=0))
    data[-8] ^= 0xFF  # the trailer's CRC32
    return bytes(data)


def cut_in_half(name: str) -> bytes:
    data = gzip.compress(encode(GOOD_ROWS * 300, name), mtime=0)
    return data[: len(data) // 2]  # well past the first 4 KiB, which are read to check the file is text


FILE_CASES = [  # (name, bytes, kind, on_bad_rows): each raised another exception, or left data.jsonl behind
    ("data.jsonl.gz", b"\x1f\x8b", "sft", "fail"),  # a gzip header cut short
    ("data.parquet.gz", b"\x1f\x8b\x08\x00\xaa\xbd\x0fk\x02\xff", "sft", "fail"),  # EOFError reading Parquet
    ("data.jsonl.gz", cut_in_half("data.jsonl.gz"), "sft", "skip"),  # EOFError mid-file
    ("data.csv.gz", cut_in_half("data.csv.gz"), "sft", "skip"),
    ("data.jsonl.gz", crc_damaged(), "sft", "fail"),  # gzip.BadGzipFile: CRC check failed
    ("data.parquet", b"\xef\xbb\xbf" + encode(GOOD_ROWS[:1], "data.parquet"), "sft", "fail"),  # OSError: thrift
    ("data.parquet", b"[" * 5000 + encode(GOOD_ROWS[:1], "data.parquet"), "sft", "fail"),
    ("data.jsonl", b'{"query": ' + b"9" * 5000 + b', "response": "x"}\n', "sft", "fail"),  # ValueError: 4300 digits
    ("data.jsonl", b"[" * 5000, "sft", "fail"),  # RecursionError
    ("data.jsonl", b'{"query": "\\ud800", "response": "x"}', "sft", "fail"),  # UnicodeEncodeError writing the row
    ("data.jsonl", b'{"query": "", "response": "", "history": [["", "\\ud800"]]}\n', "sft", "fail"),  # quarantine
    ("data.jsonl", b"\xff\xfe", "sft", "fail"),  # file errors raised after data.jsonl was opened, which stayed
    ("data.json", b"\x80", "sft", "fail"),
    ("data.csv", b"\x80", "sft", "fail"),
    ("data.jsonl.gz", b"", "sft", "fail"),
    ("data.jsonl", b"\x1f\x8b", "sft", "fail"),
    ("data.parquet", b"", "sft", "fail"),
    ("data.jsonl", b'{"query": "Capital of France?", "response": "Paris."}\n', "preference", "fail"),
    ("data.jsonl", b"", "sft", "skip"),  # "sft data is empty after conversion" named no file
]
ROW_CASES = [  # (kind, format, file name, rows)
    ("preference", "auto", "rows.jsonl", [VALID["alpaca"]]),  # data.jsonl left after the format error
    ("sft", "alpaca", "rows.csv", [{"instruction": "\x00"}]),  # ... after a NUL byte
    ("sft", "sharegpt", "rows.jsonl", [{"conversations": [{"from": "gpt", "value": "\ud800"}]}]),  # quarantine
    ("sft", "prompt-completion", "rows.jsonl", [{"prompt": "0", "completion": "\ud800"}]),  # data.jsonl
    ("preference", "hh-rlhf", "rows.jsonl", [{"chosen": "\ud800"}]),
    ("eval", "qa", "rows.jsonl", [{"question": "\ud800"}]),
    ("sft", "messages", "rows.csv", [{"messages": "[" * 3000}]),  # RecursionError decoding the cell
    ("preference", "ultrafeedback", "rows.jsonl", [{"instruction": "q", "completions": [
        {"response": "a", "overall_score": 10**400}, {"response": "b", "overall_score": 1}]}]),  # OverflowError
]


def with_file_cases(test):
    for name, data, kind, on_bad_rows in reversed(FILE_CASES):
        test = example(file=(name, data), kind=kind, on_bad_rows=on_bad_rows)(test)
    return test


# ---- the targets ---------------------------------------------------------------------------------

@settings(FUZZ, max_examples=500)
@with_file_cases
@given(file=data_files(), kind=st.sampled_from(formats.KINDS), on_bad_rows=st.sampled_from(["fail", "skip"]))
def test_any_file_is_rows_or_an_error_naming_it(file, kind, on_bad_rows):
    name, data = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        check_records(path)
        check_convert(kind, [DataSource(source=str(path))], on_bad_rows, Path(tmp), str(path))


@settings(FUZZ, max_examples=800)
@given(kind_format=kinds_and_formats(), data=st.data(), name=st.sampled_from(
    ["rows.jsonl", "rows.json", "rows.csv", "rows.parquet"]), on_bad_rows=st.sampled_from(["fail", "skip"]))
def test_any_rows_in_any_format_convert_or_fail_naming_the_file(kind_format, data, name, on_bad_rows):
    kind, fmt = kind_format
    shape = fmt if fmt != "auto" else data.draw(st.sampled_from(sorted(FIELDS)), label="shape")
    rows = data.draw(st.lists(rows_of(shape), max_size=4), label="rows")
    if data.draw(st.booleans(), label="with a good row"):
        rows.insert(data.draw(st.integers(0, len(rows)), label="at"), VALID[shape])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(encode(rows, name))
        check_convert(kind, [DataSource(source=str(path), format=fmt)], on_bad_rows, Path(tmp), str(path))


@pytest.mark.parametrize("kind, fmt, name, rows", ROW_CASES)
@pytest.mark.parametrize("on_bad_rows", ["fail", "skip"])
def test_rows_that_once_broke_the_conversion(tmp_path, kind, fmt, name, rows, on_bad_rows):
    path = tmp_path / name
    path.write_bytes(encode(rows, name))
    check_convert(kind, [DataSource(source=str(path), format=fmt)], on_bad_rows, tmp_path, str(path))
