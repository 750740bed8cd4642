"""`alignflow plan SPEC`: what `alignflow run SPEC` would do, without doing or writing anything.

The flow's own orchestration (flows/post_train.py: `pipeline`) is walked with a `PlanSteps` in place of
the `Steps` that runs stages: each stage's cache key is computed exactly as its task computes it and looked
up in the run's result store. A hit gives the stored output, so the walk goes on with real artifacts; a
miss gives a `Planned` placeholder, and every stage that takes one would run too (its key depends on an
output that does not exist yet). The store is opened read-only: a plan promotes, publishes and deletes
nothing.

    stage                        plan             cache key         artifact
    ---------------------------  ---------------  ----------------  ----------------------
    download_model               cached           download_model-7  demo/base-model@1
    train_dpo                    would run        train_dpo-1c0d4e
    merge                        would run        (after train_dpo)
    gate                         runs every time

Under it, each stage that loads a model with its estimated peak memory, part by part (tasks/memory.py;
docs/MEMORY.md), against what the machine has free now; `--json` carries the same numbers in bytes.
The check that refuses a stage that cannot fit is made before the walk, by flows/preflight.py.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.stage import ArtifactCachePolicy, RunContext


@dataclass(frozen=True)
class Planned(ArtifactRef):
    """The output a stage would write: no version, no digest, no metrics yet."""

    stage: str = ""


class Unknown(dict):
    """Metrics of a planned output: any key reads as unknown (an empty mapping), so the flow's summary code
    can be walked through."""

    def __missing__(self, key):
        return Unknown()


@dataclass
class PlanSteps:
    """Stands in for flows.runner.Steps: decides, per stage, cached / would run / runs every time."""

    spec: Any
    results: Any  # a Prefect ResultStore over the run's result storage
    rows: list[dict] = field(default_factory=list)
    pinned: dict[str, str] = field(default_factory=dict)

    def later(self, fn, *args) -> None:
        """Dashboard updates: a plan shows nothing there."""

    def run(self, task, *args, label: str | None = None):
        label = label or task.name
        waits_on = next((p.stage for p in planned_in(args)), None)
        policy = getattr(task, "cache_policy", None)
        if not isinstance(policy, ArtifactCachePolicy):  # gate, deploy: never cached (tasks/stage.py: cached=False)
            return self._add(label, "runs every time", "(never cached)", placeholder(task, label, args))
        if waits_on:
            return self._add(label, "would run", f"(after {waits_on})", placeholder(task, label, args))
        inputs = inspect.signature(task.fn).bind(*args)
        inputs.apply_defaults()
        key = policy.compute_key(SimpleNamespace(result_store=self.results), dict(inputs.arguments), {})
        if key and self.results.exists(key):
            result = self.results.read(key).result
            return self._add(label, "cached", key, result)
        return self._add(label, "would run", key or "(not computable)", placeholder(task, label, args))

    def _add(self, label: str, status: str, key: str, result):
        artifact = result.label if isinstance(result, ArtifactRef) and not isinstance(result, Planned) else ""
        self.rows.append({"stage": label, "plan": status, "cache key": key, "artifact": artifact})
        return result


def planned_in(value) -> list[Planned]:
    """The planned outputs among a stage's arguments (also inside a TokenizerRef and other dataclasses)."""
    if isinstance(value, Planned):
        return [value]
    if isinstance(value, (list, tuple)):
        return [p for item in value for p in planned_in(item)]
    if isinstance(value, dict):
        return [p for item in value.values() for p in planned_in(item)]
    if dataclasses.is_dataclass(value) and not isinstance(value, (type, ArtifactRef, RunContext)):
        return [p for f in dataclasses.fields(value) for p in planned_in(getattr(value, f.name))]
    return []


def placeholder(task, label: str, args: tuple):
    """What a stage that would run hands on: a Planned artifact (an adapter when its config trains one), or,
    for a check that returns a verdict (the gate), a passing one so the rest of the plan can be shown."""
    returns = str(inspect.signature(task.fn).return_annotation)
    if "Decision" in returns:
        from tasks.gate import Decision

        return Decision(passed=True, reasons=[], score=0.0, base_score=0.0, production_score=None, win_rate=None,
                        win_rate_vs_production=None, production=None, production_version=None)
    if "ArtifactRef" not in returns:
        return Unknown(passed=True, reasons=[], production_version=None)
    config = next((a for a in args if isinstance(a, StageConfig)), None)
    kind = "adapter" if getattr(config, "tuner", "full") != "full" else "model"
    return Planned(name=label, kind=kind, version=0, digest=f"planned:{label}", metrics=Unknown(), stage=label)


class ReadOnlyStore:
    """The run's store for a plan: reads pass through; writes do nothing; planned outputs have no files."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def manifest(self, digest: str) -> dict:
        return {"files": {}, "metadata": {}, "metrics": {}} if digest.startswith("planned:") else \
            self._store.manifest(digest)

    def promote(self, *args, **kwargs) -> bool:
        return False

    def rollback(self, *args, **kwargs):
        return None

    def put_dir(self, *args, **kwargs):
        raise RuntimeError("a plan writes nothing to the store")


@dataclass(frozen=True)
class PlanRun(RunContext):
    """The run context of a plan: the same cache keys (a RunContext keys by pipeline name), a read-only store."""

    def open_store(self):
        return ReadOnlyStore(super().open_store())


def plan(spec) -> list[dict]:
    """The stages `alignflow run` would run for `spec`, in order, each cached / would run / runs every time."""
    from flows.post_train import pipeline
    from storage.store import default_cache_dir

    run = PlanRun(spec.name, spec.store, str(default_cache_dir()), spec.storage, None, 1)
    steps = PlanSteps(spec, result_store(spec.store, spec.storage))
    pipeline(steps, run, spec, None)
    return steps.rows


def result_store(store: str, credentials_block: str | None):
    """A Prefect ResultStore over where the stages of a run on `store` keep their cache records."""
    from prefect.results import ResultStore

    from storage.results import result_block

    return ResultStore(result_storage=result_block(store, credentials_block))


def render_plan(spec, rows: list[dict], memory: tuple) -> str:
    from alignflow.tables import format_table

    counts = {status: sum(r["plan"] == status for r in rows) for status in ("cached", "would run", "runs every time")}
    head = (f"plan for pipeline {spec.name} (store: {spec.store}): {counts['cached']} cached, "
            f"{counts['would run']} would run, {counts['runs every time']} run every time (not cached)")
    shown = [dict(r, **{"cache key": short_key(r["cache key"])}) for r in rows]
    return head + "\n\n" + format_table(shown, ["stage", "plan", "cache key", "artifact"]) + "\n\n" + \
        render_memory(spec, rows, memory)


def short_key(key: str) -> str:
    """'train_sft-7bc0e189fea96f20d554...-1' -> 'train_sft-7bc0e189fea96f20-1' (the JSON keeps it whole)."""
    stage, sep, rest = key.partition("-")
    if not sep or key.startswith("("):
        return key
    digest, _, attempt = rest.partition("-")
    return f"{stage}-{digest[:16]}" + (f"-{attempt}" if attempt else "")


# ---- memory -------------------------------------------------------------------------------------------

MEMORY_COLUMNS = ["stage", "trainable", "dtype", "weights", "grads", "optim", "activ", "logits", "other", "base",
                  "peak", "need"]
OTHER_PARTS = ("reference", "kv cache", "reward model")  # the "other" column


def memory_estimates(spec):
    """(the model's Shape, or why it is unknown; devices; each stage's Estimate) for `spec` (tasks/memory.py)."""
    from tasks import memory

    shape = memory.model_shape(spec.model, spec.model_dtype)
    if isinstance(shape, str):
        return shape, {}, []
    found = memory.devices()
    return shape, found, memory.estimates(spec, shape, found)


def stage_of(label: str) -> str:
    """'evaluate[candidate]' -> 'evaluate'."""
    return label.split("[", 1)[0]


def with_memory(rows: list[dict], memory: tuple) -> list[dict]:
    """Each plan row of a stage that loads a model gets its estimate (bytes, from `memory_estimates`), for
    `--json`."""
    _, _, estimates = memory
    by_stage = {}
    for e in estimates:
        by_stage.setdefault(e.stage, e)
    for row in rows:
        e = by_stage.get(stage_of(row["stage"]))
        if e is not None:
            row["memory"] = {"device": e.device, "process": e.process, "peak": e.peak, "need": e.need,
                             "parts": e.parts, "copies": e.copies, "beside": e.beside}
    return rows


def render_memory(spec, rows: list[dict], memory: tuple) -> str:
    """The second table: each stage's estimated peak, part by part, in GiB, against what is free now."""
    import textwrap

    from alignflow.tables import format_table
    from tasks.memory import gib

    shape, found, estimates = memory
    if isinstance(shape, str):
        return f"memory: {shape}"
    if not estimates:
        return "memory: no stage of this spec loads the model"
    free = "; ".join(f"{d.name}: {gib(d.free)} GiB free of {gib(d.total)}" for d in found.values())
    cached = {stage for stage in {stage_of(r["stage"]) for r in rows}
              if all(r["plan"] == "cached" for r in rows if stage_of(r["stage"]) == stage)}
    lines = [f"memory at each stage's peak, GiB ({free}; formulas: docs/MEMORY.md)",
             *f"model {spec.model}: {shape.describe()}".replace("\n", "\n  ").splitlines(), "",
             format_table([memory_row(e, e.stage in cached, found) for e in estimates], MEMORY_COLUMNS),
             textwrap.fill("other: reference model, KV cache, reward model. base: the process itself, its libraries "
                           "loaded. need: peak x processes, plus what runs beside it (the trainer's launcher, the "
                           "green vLLM server, EvalScope's child); a cached stage needs none of it; '!': more "
                           "than is free now (the check is off: ALIGNFLOW_MEMORY_CHECK=off).", 110)]
    return "\n".join(lines)


def memory_row(e, cached: bool, found: dict) -> dict:
    from tasks.memory import GIB, gib

    def show(*names: str) -> str:
        size = sum(e.parts.get(name, 0) for name in names)
        return "-" if not size else "~0" if size < 0.005 * GIB else gib(size)

    stage = e.stage + (" (GPU)" if e.device == "cuda" else "")
    need = "cached" if cached else gib(e.need) + (" !" if e.need > found[e.device].free else "")
    return {"stage": stage, "trainable": e.trainable or "-", "dtype": e.dtype or "-", "weights": show("weights"),
            "grads": show("gradients"), "optim": show("optimizer"), "activ": show("activations"),
            "logits": show("logits"), "other": show(*OTHER_PARTS), "base": show("overhead"), "peak": gib(e.peak),
            "need": need}
