"""The base of every stage's config. Light on purpose: trainer child processes and `--help` import it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def show_ranges(schema: dict, model: type[BaseModel]) -> None:
    """Append each field's valid range to its description in the JSON schema: Prefect's run form shows
    descriptions, not a schema's minimum and maximum."""
    for name, prop in schema.get("properties", {}).items():
        text = valid_range(model, name)
        if text != "any" and "description" in prop:
            prop["description"] += f" (valid: {text})"


@dataclass(frozen=True)
class Declaration:
    """What a stage is, said once, in its `@stage(...)` line: the spec's checks, the run summary and the
    dashboard read it instead of keeping tables of their own."""

    name: str  # the Prefect task's name, e.g. "train_sft"
    libraries: tuple[str, ...] = ()  # whose versions shape the result (part of the cache key and lineage)
    needs: tuple[str, ...] = ()  # what the spec must set for the stage to run: "data.sft", "stages.evaluate"
    key_metric: Optional[str] = None  # the one number the run summary shows for the stage


class StageConfig(BaseModel):
    """A stage's settings: typed, documented field by field (`Field(description=...)`), with valid ranges.

    Strict: `"8"` is not an integer and unknown fields are refused, so a typo never passes silently.
    The same classes validate the YAML spec and render the run form in the Prefect dashboard."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, json_schema_extra=show_ranges)
    declaration: ClassVar[Optional[Declaration]] = None  # set by the stage's `@stage(..., config=cls)`

    def problems(self) -> list[str]:
        """What makes these settings unusable here, found before any work (e.g. a method the installed
        library lacks). The spec reports them with its other problems."""
        return []

    def needs(self) -> tuple[str, ...]:
        """What the spec must also set for this stage to run with these settings ("data.preference",
        "stages.reward"). A stage whose needs depend on its settings overrides this."""
        return self.declaration.needs if self.declaration else ()


def stage_fields(stages: type[BaseModel]) -> dict[str, type[StageConfig]]:
    """The spec's stages (a `Stages` model's fields, in the flow's order) and each one's config class:
    `Optional[SFTStage]` -> SFTStage."""
    from typing import get_args

    out = {}
    for name, info in stages.model_fields.items():
        kinds = [kind for kind in get_args(info.annotation) or (info.annotation,) if kind is not type(None)]
        if kinds and isinstance(kinds[0], type) and issubclass(kinds[0], StageConfig):
            out[name] = kinds[0]
    return out


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



class RayWorkers(StageConfig):
    """Where work runs on a Ray cluster (`engine: ray`): how many workers, what each reserves, which cluster."""

    workers: int = Field(1, ge=1, le=4096, description="engine ray: workers (one process each, spread over the "
                                                       "nodes)")
    cpus_per_worker: float = Field(1.0, gt=0, le=1024, description="engine ray: CPUs each worker reserves")
    gpus_per_worker: float = Field(0.0, ge=0, le=64, description="engine ray: GPUs each worker reserves (NCCL "
                                                                 "when > 0, else gloo)")
    address: Optional[str] = Field(None, description="engine ray: the cluster's address (host:port); default "
                                                     "$RAY_ADDRESS, else the cluster `alignflow ray up` started")

    @model_validator(mode="after")
    def _ray_only(self) -> "RayWorkers":
        if getattr(self, "engine", "ray") != "ray" and (self.workers > 1 or self.address):
            raise ValueError("workers and address are engine ray's; set engine: ray")
        return self
