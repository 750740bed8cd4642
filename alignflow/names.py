"""The names users give things, and the one rule each follows. Checked with `fullmatch`, so a trailing
newline (`$'demo/x\\n'`) never passes, and named in every refusal.

    pipeline    demo, nightly-qwen.v2         prefixes artifacts, names the served model and its record
    dataset     demo/sft-extra                PIPELINE/NAME: a registered dataset
    artifact    demo/sft                      PIPELINE/NAME[/...]
    alias       production, staging           a mutable pointer to a version
"""

from __future__ import annotations

import re

from alignflow.errors import UsageError

PART = r"[a-z0-9][a-z0-9_.-]{0,62}"
NAME_PATTERN = rf"^{PART}$"
DATASET_PATTERN = rf"^{PART}(/{PART})+$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"

RULES = {
    "pipeline": (NAME_PATTERN, "lowercase letters, digits, '-', '_' or '.', starting with a letter or digit "
                               "(at most 63), e.g. demo"),
    "dataset": (DATASET_PATTERN, "PIPELINE/NAME in lowercase letters, digits, '-', '_' or '.', e.g. demo/sft-extra"),
    "artifact": (DATASET_PATTERN, "PIPELINE/NAME in lowercase letters, digits, '-', '_' or '.', e.g. demo/sft"),
    "alias": (ALIAS_PATTERN, "lowercase letters, digits, '-' or '_', starting with a letter (at most 63), "
                             "e.g. production"),
}
FRIENDLY = {pattern: f"must be {text}" for pattern, text in RULES.values()}


def is_valid(kind: str, text: object) -> bool:
    return isinstance(text, str) and re.fullmatch(RULES[kind][0], text) is not None


def check(kind: str, text: object, where: str) -> str:
    """`text` when it is a valid `kind` name, else a UsageError naming `where` it came from and the rule."""
    if not is_valid(kind, text):
        raise UsageError(f"{where}: {text!r} is not a {kind} name; a {kind} name is {RULES[kind][1]}")
    return text  # type: ignore[return-value]


PIPELINE_TAG = "pipeline:"


def pipeline_tag(pipeline: str) -> str:
    """The Prefect tag of a pipeline's deployments and runs (server status groups by it; notifications match it)."""
    return PIPELINE_TAG + pipeline


def tagged_pipeline(tags: list[str]) -> str | None:
    """The pipeline `tags` name (see pipeline_tag), or None."""
    return next((t.removeprefix(PIPELINE_TAG) for t in tags if t.startswith(PIPELINE_TAG)), None)
