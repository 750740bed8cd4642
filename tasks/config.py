"""The base of every stage's config. Light on purpose: trainer child processes and `--help` import it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def show_ranges(schema: dict, model: type[BaseModel]) -> None:
    """Append each field's valid range to its description in the JSON schema: Prefect's run form shows
    descriptions, not a schema's minimum and maximum."""
    for name, prop in schema.get("properties", {}).items():
        text = valid_range(model, name)
        if text != "any" and "description" in prop:
            prop["description"] += f" (valid: {text})"


class StageConfig(BaseModel):
    """A stage's settings: typed, documented field by field (`Field(description=...)`), with valid ranges.

    Strict: `"8"` is not an integer and unknown fields are refused, so a typo never passes silently.
    The same classes validate the YAML spec and render the run form in the Prefect dashboard."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, json_schema_extra=show_ranges)


def valid_range(model: type[BaseModel], field: str) -> str:
    """'> 0', '0 <= x <= 1': the bounds declared on a field, as its error and the docs show them."""
    lower, upper = [], []
    for meta in model.model_fields[field].metadata:
        for attr, sign in BOUNDS:
            bound = getattr(meta, attr, None)
            if bound is not None:
                (lower if attr in ("ge", "gt") else upper).append((sign, bound))
    if lower and upper:
        (ls, lv), (us, uv) = lower[0], upper[0]
        return f"{_number(lv)} {'<=' if ls == '>=' else '<'} x {us} {_number(uv)}"
    return " and ".join(f"{sign} {_number(bound)}" for sign, bound in lower + upper) or "any"


def _number(value) -> str:
    """1048576 -> '1048576', 0.5 -> '0.5' (never '1.04858e+06')."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"

