"""The settings that turn SFT conversations into training tokens: which tokens carry loss (`loss_on`), the
length they are cut to, and what a row the chat template cannot render does. The `tokenize` stage
(tasks/tokens.py) takes them; the SFT stage's config builds them from its own fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.config import StageConfig

LossOn = Literal["assistant", "last_assistant", "all"]


class TokenizeConfig(StageConfig):
    """How the `tokenize` stage encodes and masks SFT rows."""

    loss_on: LossOn = Field("assistant")
    max_length: int = Field(1024, ge=8)
    on_bad_rows: Literal["fail", "skip"] = "fail"
