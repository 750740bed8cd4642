"""The base of every stage's config. Light on purpose: trainer child processes and `--help` import it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StageConfig(BaseModel):
    """A stage's settings: typed, documented field by field (`Field(description=...)`), with valid ranges.

    Strict: `"8"` is not an integer and unknown fields are refused, so a typo never passes silently.
    The same classes validate the YAML spec and render the run form in the Prefect dashboard."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)
