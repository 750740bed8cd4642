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

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from alignflow.errors import DataError
from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.formats import RowError
from tasks.stage import RunContext, publish, stage

IGNORE = -100
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")
LossOn = Literal["assistant", "last_assistant", "all"]


class TokenizeConfig(StageConfig):
    loss_on: LossOn = Field("assistant")
    max_length: int = Field(1024, ge=8)
    on_bad_rows: Literal["fail", "skip"] = "fail"


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
    return bool(template) and "generation" in template and "endgeneration" in template


def render(tokenizer, messages: list[dict], tools: list | None = None, prompt: bool = False) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=prompt)
    except TemplateError as exc:
        raise RowError(f"the chat template refused the conversation: {exc}") from None


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


def encode(tokenizer, row: dict, loss_on: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one canonical SFT row; labels are IGNORE outside the loss."""
    messages, tools = row["messages"], row.get("tools")
    if has_generation_markers(tokenizer.chat_template):
        out = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        _check_tool_calls(tokenizer.decode(ids), messages)
        runs = _runs(mask)
    else:
        text, spans = assistant_spans(tokenizer, messages, tools)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        runs = [_token_run(offsets, span) for span in spans]
    if loss_on == "all":
        return ids, list(ids)
    keep = runs[-1:] if loss_on == "last_assistant" else runs
    labels = [IGNORE] * len(ids)
    for first, last in keep:
        labels[first:last] = ids[first:last]
    return ids, labels


def _token_run(offsets, span: tuple[int, int]) -> tuple[int, int]:
    """Tokens whose first character lies inside the span."""
    inside = [i for i, (s, e) in enumerate(offsets) if span[0] <= s < span[1] and e > s]
    if not inside:
        raise RowError("an assistant answer maps to no tokens")
    return inside[0], inside[-1] + 1


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, bit in enumerate(mask + [0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    if not runs:
        raise RowError("the chat template's generation markers mark no assistant tokens in this row")
    return runs


# ---- the stage -----------------------------------------------------------------------------------

def tokenize_file(tokenizer, source: Path, out: Path, config: TokenizeConfig, quarantine: Path) -> dict:
    """Stream canonical SFT rows into tokens.parquet; returns counts and length statistics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.convert import percentiles

    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
    counts, lengths, batch, problems = {"rows": 0, "truncated": 0, "no_loss": 0, "bad": 0}, [], [], []
    with pq.ParquetWriter(out, schema) as writer, open(source, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                ids, labels = encode(tokenizer, json.loads(line), config.loss_on)
            except RowError as exc:
                counts["bad"] += 1
                problems.append(f"{source.parent.name}/data.jsonl:{number}: {exc}")
                continue
            lengths.append(len(ids))
            if len(ids) > config.max_length:
                counts["truncated"] += 1
                ids, labels = ids[: config.max_length], labels[: config.max_length]
            if all(label == IGNORE for label in labels):
                counts["no_loss"] += 1  # truncation cut every answer: nothing to learn from the row
                continue
            batch.append((ids, labels))
            counts["rows"] += 1
            if len(batch) == 1000:
                writer.write_table(_table(batch, schema))
                batch = []
        if batch:
            writer.write_table(_table(batch, schema))
    _settle(problems, counts, config, quarantine)
    return counts | {"tokens": percentiles(lengths)}


def _table(batch: list, schema):
    import pyarrow as pa

    return pa.table({"input_ids": [b[0] for b in batch], "labels": [b[1] for b in batch]}, schema=schema)


def _settle(problems: list[str], counts: dict, config: TokenizeConfig, quarantine: Path) -> None:
    if problems and config.on_bad_rows == "fail":
        listed = "\n".join(f"  {p}" for p in problems[:20])
        raise DataError(f"sft data: {len(problems)} rows cannot be rendered by the model's chat template:\n{listed}\n"
                        "Fix them, or set data.on_bad_rows: skip to leave them out")
    if problems:
        quarantine.write_text("".join(json.dumps({"reason": p}) + "\n" for p in problems))
    if not counts["rows"]:
        raise DataError(f"sft data: no row has an assistant token within max_length={config.max_length} "
                        f"({counts['no_loss']} rows lost every answer to truncation); raise max_length")


@stage("tokenize", libraries=("transformers", "tokenizers", "pyarrow"), uses=("tasks.models",))
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
