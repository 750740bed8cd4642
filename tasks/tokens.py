"""Stage `tokenize`: SFT conversations to token ids and loss labels, with the loss on the assistant's tokens.

Which tokens carry loss (`loss_on`): `assistant` (every assistant turn, the default), `last_assistant`, or
`all`. Where the chat template marks generation (`{% generation %}`), its assistant mask is used. Most hub
templates (Qwen2.5, Llama 3, Mistral) do not mark it; then the assistant spans are worked out from the
template itself: the text before turn i with the generation prompt added ends where the answer starts, and
the text through turn i ends where it ends (trailing whitespace after the end-of-turn token excluded), and
token offsets map those character spans to tokens. A wrong mask trains silently on the wrong tokens, so
tests/tasks/test_tokens.py checks it token by token for ChatML, Llama 3 and Mistral templates.

The output (`tokens` artifact: tokens.parquet with input_ids and labels, -100 where there is no loss) is
keyed on the dataset's digest, the tokenizer's files, loss_on and max_length: a retry, another learning
rate or a second stage on the same data reuses it.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from alignflow.errors import DataError
from storage import ArtifactRef
from tasks.chat import TOKENIZER_FILES
from tasks.formats import RowError
from tasks.stage import RunContext, publish, stage
from tasks.token_settings import TokenizeConfig

IGNORE = -100


@dataclass(frozen=True)
class TokenizerRef:
    """A model's tokenizer, keyed by the bytes of its tokenizer files: models that share a tokenizer share
    tokenized data."""

    model: ArtifactRef
    digest: str

    def cache_identity(self) -> dict:
        return {"tokenizer": self.digest}


def tokenizer_ref(store, model: ArtifactRef) -> TokenizerRef:
    files = store.manifest(model.digest)["files"]
    mine = {name: files[name] for name in sorted(files) if Path(name).name in TOKENIZER_FILES}
    return TokenizerRef(model, "sha256:" + hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest())


# ---- masks ---------------------------------------------------------------------------------------

def has_generation_markers(template: str | None) -> bool:
    """Whether the template marks the assistant's text with `{% generation %}` (as transformers looks for it)."""
    return bool(template) and re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


@contextlib.contextmanager
def template_refusals():
    """A template's own `raise_exception` (or any Jinja error) on a row makes the row a bad one."""
    from jinja2 import TemplateError

    try:
        yield
    except TemplateError as exc:
        raise RowError(f"the chat template refused the conversation: {exc}") from None


def render(tokenizer, messages: list[dict], tools: list | None = None, prompt: bool = False) -> str:
    with template_refusals():
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=prompt)


def assistant_spans(tokenizer, messages: list[dict], tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, per assistant turn, the character span the model must learn to write:
    its answer (tool calls included) through its end-of-turn token."""
    import os

    full, spans, cursor = render(tokenizer, messages, tools), [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], tools, prompt=True) if i else ""
        through = render(tokenizer, messages[: i + 1], tools)
        start = len(before) if through.startswith(before) else len(os.path.commonprefix([before, through]))
        end = len(through.rstrip())
        if not full.startswith(through[:end]):  # the template renders this turn differently inside the whole
            found = full.find(through[start:end], cursor)
            if found < 0:
                raise RowError(f"the chat template renders turn {i} differently inside the whole conversation, "
                               "so its answer cannot be located; set stages.sft.loss_on: last_assistant")
            start, end = found, found + end - start
        if end <= start:
            raise RowError(f"turn {i}: the assistant's answer renders as nothing")
        spans.append((start, end))
        cursor = end
    _check_tool_calls(full, messages)
    return full, spans


def _check_tool_calls(text: str, messages: list[dict]) -> None:
    for i, message in enumerate(messages):
        for call in message.get("tool_calls", []):
            name = call["function"]["name"]
            if name not in text:
                raise RowError(f"turn {i}: the chat template does not render tool_calls (function {name!r} is "
                               "missing from the text); use a model whose template supports tools, or drop these rows")


def marked_spans(tokenizer, messages: list[dict], tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the template's `{% generation %}` markers enclose."""
    from transformers.utils.chat_template_utils import render_jinja_template

    with template_refusals():
        rendered, indices = render_jinja_template(conversations=[messages], tools=tools,
                                                  chat_template=tokenizer.chat_template,
                                                  return_assistant_tokens_mask=True, **tokenizer.special_tokens_map)
    if not indices[0]:
        raise RowError("the chat template's generation markers mark no assistant text in this row")
    _check_tool_calls(rendered[0], messages)
    return rendered[0], [tuple(span) for span in indices[0]]


def encode_many(tokenizer, rows: list[dict]) -> list[tuple[list[int], list[tuple[int, int]]] | RowError]:
    """For each canonical SFT row: (input_ids, one (first, end) token run per assistant turn), or the
    RowError that makes it a bad row. Texts are tokenized together (the tokenizer's Rust batch path)."""
    spans_of = marked_spans if has_generation_markers(tokenizer.chat_template) else assistant_spans
    rendered: list[tuple[str, list] | RowError] = []
    for row in rows:
        try:
            rendered.append(spans_of(tokenizer, row["messages"], row.get("tools")))
        except RowError as exc:
            rendered.append(exc)
    texts = [r[0] for r in rendered if not isinstance(r, RowError)]
    encodings = iter(tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False))
    out = []
    for item in rendered:
        if isinstance(item, RowError):
            out.append(item)
            continue
        encoding = next(encodings)
        runs = [_token_run(encoding, a, b) for a, b in item[1]]
        empty = next((i for i, (first, end) in enumerate(runs) if end <= first), None)
        out.append(RowError(f"assistant turn {empty + 1} maps to no tokens") if empty is not None else
                   (encoding.ids, runs))
    return out


def _token_run(encoding, start: int, end: int) -> tuple[int, int]:
    """The tokens covering characters [start, end) of the text."""
    first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1) if end > start else None
    if first is None or last is None:  # a character no token covers (rare): go by token start offsets
        starts = [s for s, _ in encoding.offsets]
        return bisect.bisect_left(starts, start), bisect.bisect_left(starts, end)
    return first, last + 1


def labels_for(ids: list[int], runs: list[tuple[int, int]], loss_on: str) -> list[int]:
    if loss_on == "all":
        return list(ids)
    labels = [IGNORE] * len(ids)
    for first, end in (runs[-1:] if loss_on == "last_assistant" else runs):
        labels[first:end] = ids[first:end]
    return labels


def encode(tokenizer, row: dict, loss_on: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one canonical SFT row; labels are IGNORE outside the loss."""
    [result] = encode_many(tokenizer, [row])
    if isinstance(result, RowError):
        raise result
    ids, runs = result
    return ids, labels_for(ids, runs, loss_on)


def has_loss(runs: list[tuple[int, int]], loss_on: str, length: int) -> bool:
    """Whether any token that carries loss is within the first `length` tokens."""
    kept = runs[-1:] if loss_on == "last_assistant" else runs
    return loss_on == "all" or any(first < length for first, _ in kept)


# ---- the stage -----------------------------------------------------------------------------------

def tokenize_file(tokenizer, source: Path, out: Path, config: TokenizeConfig, quarantine: Path) -> dict:
    """Stream canonical SFT rows into tokens.parquet; returns counts and length statistics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.row_stats import percentiles

    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
    counts, lengths, batch, problems = {"rows": 0, "truncated": 0, "no_loss": 0, "bad": 0}, [], [], []
    with pq.ParquetWriter(out, schema) as writer, open(source, encoding="utf-8") as f:
        for first_line, rows in chunks(f, 512):
            for number, result in enumerate(encode_many(tokenizer, rows), first_line):
                if isinstance(result, RowError):
                    counts["bad"] += 1
                    problems.append(f"{source.parent.name}/data.jsonl:{number}: {result}")
                    continue
                ids, runs = result
                lengths.append(len(ids))
                if not has_loss(runs, config.loss_on, config.max_length):
                    counts["no_loss"] += 1  # truncation cut every answer: nothing to learn from the row
                    continue
                counts["truncated"] += len(ids) > config.max_length
                batch.append((ids[: config.max_length], labels_for(ids, runs, config.loss_on)[: config.max_length]))
            counts["rows"] += len(batch)
            writer.write_table(_table(batch, schema))
            batch = []
    _settle(problems, counts, config, quarantine)
    return counts | {"tokens": percentiles(lengths)}


def chunks(lines, size: int):
    """(line number of the first row, rows) for each `size` rows of a JSON-lines file."""
    rows, first = [], 1
    for number, line in enumerate(lines, 1):
        rows.append(json.loads(line))
        if len(rows) == size:
            yield first, rows
            rows, first = [], number + 1
    if rows:
        yield first, rows


def _table(batch: list, schema):
    import pyarrow as pa

    return pa.table({"input_ids": [b[0] for b in batch], "labels": [b[1] for b in batch]}, schema=schema)


def _settle(problems: list[str], counts: dict, config: TokenizeConfig, quarantine: Path) -> None:
    if problems and config.on_bad_rows == "fail":
        from tasks.row_stats import listed_problems

        raise DataError(f"sft data: {len(problems)} rows cannot be rendered by the model's chat template:\n"
                        f"{listed_problems(problems, len(problems))}\n"
                        "Fix them, or set data.on_bad_rows: skip to leave them out")
    if problems:
        quarantine.write_text("".join(json.dumps({"reason": p}) + "\n" for p in problems))
    if not counts["rows"]:
        raise DataError(f"sft data: no row has an assistant token within max_length={config.max_length} "
                        f"({counts['no_loss']} rows lost every answer to truncation); raise max_length")


@stage("tokenize", config=TokenizeConfig, key_metric="rows", libraries=("transformers", "tokenizers", "pyarrow"))
def tokenize(run: RunContext, tokenizer: TokenizerRef, data: ArtifactRef, config: TokenizeConfig) -> ArtifactRef:
    from prefect import get_run_logger

    from tasks.models import load_tokenizer, model_chain

    store, workdir = run.open_store(), run.workdir()
    out = workdir / "output"
    out.mkdir(exist_ok=True)
    tok = load_tokenizer([str(p) for p in model_chain(store, tokenizer.model)])
    masked_by = "the template's generation markers" if has_generation_markers(tok.chat_template) else \
        "assistant spans worked out from the template"
    counts = tokenize_file(tok, store.get_dir(data) / "data.jsonl", out / "tokens.parquet", config,
                           out / "quarantine.jsonl")
    (out / "report.json").write_text(json.dumps(counts | {"loss_on": config.loss_on, "mask": masked_by}, indent=2))
    get_run_logger().info("tokenize: %d rows, loss on %s tokens (%s); %d truncated to %d tokens, %d bad",
                          counts["rows"], config.loss_on, masked_by, counts["truncated"], config.max_length,
                          counts["bad"])
    return publish(run, "tokens-sft", "tokens", out, stage="tokenize", config=config,
                   inputs={"data": data, "tokenizer": tokenizer.model},
                   metrics={k: counts[k] for k in ("rows", "truncated", "no_loss", "bad")},
                   metadata={"tokenizer": tokenizer.digest})
