"""What every stage shares: the run context, the digest cache policy, retries, and publishing outputs.

A stage is a plain function turned into a Prefect task by `@stage(...)`, which also declares, in one
place, what the rest of alignflow needs to know about it (tasks/config.py: Declaration):

    @stage("train_sft", config=SFTStage, needs=("data.sft",), key_metric="train_loss",
           libraries=("torch", "transformers", "trl", "peft"))
    def train_sft(run: RunContext, model: ArtifactRef, data: ArtifactRef, config: SFTStage) -> ArtifactRef:
        ...

Its cache key is the hash of: the stage name and code version, the pipeline name, its config, the digests
of its input artifacts and the versions of the libraries that shape its result. Never a path or a run id.

The code version is read, not declared: a hash over the code of every project module the stage's module
reaches (alignflow/imports.py: its imports, at any depth, and the modules its child processes run as
`python -m ...`), comments and docstrings left out. The stage machinery itself (FRAMEWORK) is left out.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prefect import task
from prefect.tasks import exponential_backoff
from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from alignflow import imports
from alignflow.errors import NOT_RETRIED, TRANSIENT, TransientError
from storage import ArtifactRef, ArtifactStore, open_store
from tasks.config import Declaration, StageConfig

DECLARATIONS: dict[str, Declaration] = {}  # every stage by task name, filled as stage modules are imported


@dataclass(frozen=True)
class RunContext:
    """Where a run keeps things. Passed to every stage; never part of a cache key."""

    name: str  # the pipeline's name: prefixes every artifact it writes (demo/sft, demo/dpo, ...)
    store: str  # a folder or an s3:// URI
    cache_dir: str  # local download cache and scratch space
    credentials_block: str | None = None  # a prefect-aws AwsCredentials block for an s3:// store
    accelerator_limit: str | None = None  # Prefect global concurrency limit held by heavy stages
    accelerator_slots: int = 1  # its size, when this run is the first to need it

    def open_store(self) -> ArtifactStore:
        return _open_store_once(self.store, self.cache_dir, self.credentials_block)

    def log_file(self, label: str) -> Path:
        """Where a stage's third-party output goes, one folder per flow run; its dashboard card names it."""
        from prefect.runtime import flow_run

        from tasks.report import artifact_key

        run_id = str(flow_run.id) if flow_run.id else "local"
        return Path(self.cache_dir) / "logs" / self.name / run_id / f"{artifact_key(label)}.log"

    def workdir(self) -> Path:
        """Scratch space of the running stage, keyed like its cache entry: stable across retries (so a
        trainer resumes from its checkpoints) and distinct for different inputs."""
        path = stage_workdir(self.cache_dir, *_current_stage.get())
        path.mkdir(parents=True, exist_ok=True)
        return path


@functools.lru_cache(maxsize=8)
def _open_store_once(store: str, cache_dir: str, credentials_block: str | None) -> ArtifactStore:
    """One store (and one pair of boto3 clients, which are thread-safe) per location and process: every
    cache-key check and every stage would otherwise build its own."""
    return open_store(store, cache_dir, credentials_block)


def stage_workdir(cache_dir: str, stage: str, key: str) -> Path:
    return Path(cache_dir) / "work" / f"{stage}-{key[:16]}"


_current_stage: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("alignflow_stage")


def current_stage() -> tuple[str, str]:
    """(name, cache key) of the stage running in this context."""
    return _current_stage.get()


def canonical(value: Any) -> Any:
    """Reduce a stage input to what determines its result: artifacts by digest, configs by value."""
    if isinstance(value, ArtifactRef):
        return {"artifact": value.digest}
    if hasattr(value, "cache_identity"):  # e.g. a tokenizer, keyed by its files rather than its model
        return canonical(value.cache_identity())
    if isinstance(value, RunContext):
        return {"pipeline": value.name}  # the output's name; the locations do not change the result
    if isinstance(value, BaseModel):
        return {type(value).__name__: canonical(value.model_dump())}
    if dataclasses.is_dataclass(value):
        return {type(value).__name__: canonical(dataclasses.asdict(value))}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


@functools.lru_cache(maxsize=64)
def _version(library: str) -> str:
    return importlib.metadata.version(library)  # reads package metadata from disk: once per process


def library_versions(libraries: tuple[str, ...]) -> dict[str, str]:
    return {lib: _version(lib) for lib in libraries}


def stage_fingerprint(stage: str, code_version: str, libraries: tuple[str, ...], inputs: dict) -> str:
    payload = {"stage": stage, "code": code_version, "libraries": library_versions(libraries),
               "inputs": canonical(inputs)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ArtifactCachePolicy(CachePolicy):
    """Keys a stage on content; a cached result counts only while its artifact is still in the store.

    If the artifact a cache record points at was deleted, the next key in the sequence `<key>`, `<key>-1`,
    ... is used, so the stage reruns and records its new output there.
    """

    stage: str = ""
    modules: tuple[str, ...] = ()  # the stage's module: code_version follows what it reaches
    libraries: tuple[str, ...] = ()
    root: Path = imports.ROOT  # where the project's sources are

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        """The key; without a task context (no result store to look in), the first of its sequence."""
        run = next((v for v in inputs.values() if isinstance(v, RunContext)), None)
        if run is None:
            return None
        code = code_version(self.modules, self.root)
        base = f"{self.stage}-{stage_fingerprint(self.stage, code, self.libraries, inputs)}"
        if task_ctx is None:
            return base
        store, results = run.open_store(), task_ctx.result_store
        for attempt in range(100):
            key = f"{base}-{attempt}" if attempt else base
            if not results.exists(key):
                return key
            cached = results.read(key).result
            if not isinstance(cached, ArtifactRef) or store.exists(cached):
                return key
        return None


def retry_transient(task, task_run, state) -> bool:
    """Retry transient failures only: a bad config, bad data or a bug fails at once."""
    return isinstance(state.data, TRANSIENT) and not isinstance(state.data, NOT_RETRIED)


_injected: dict[str, int] = {}


def maybe_inject_failure(stage: str) -> None:
    """Test hook: ALIGNFLOW_INJECT_FAILURE="train_dpo:2" makes train_dpo's first 2 attempts in this
    process fail with a TransientError, to exercise retries. Unset in normal use."""
    spec = os.environ.get("ALIGNFLOW_INJECT_FAILURE", "")
    name, _, count = spec.partition(":")
    if name == stage and _injected.get(stage, 0) < int(count or 1):
        _injected[stage] = _injected.get(stage, 0) + 1
        raise TransientError(f"{stage}: injected transient failure #{_injected[stage]} (ALIGNFLOW_INJECT_FAILURE)")


# Reached by every stage through tasks.stage, and unable to shape a result: the stage machinery (keys,
# retries, publishing, the config base class, dashboards and logs), the store that keeps results, errors,
# credentials for child processes, the package's version string and the import scan. Left out of every code
# version so that editing them does not rerun every stage. tests/tasks/test_cache_key.py checks that this
# is exactly what tasks.stage reaches (besides the `tasks` package): a new import there is a choice to make.
FRAMEWORK = frozenset({
    "alignflow", "alignflow.errors", "alignflow.imports", "alignflow.secrets",
    "storage", "storage.backends", "storage.refs", "storage.s3", "storage.store",
    "tasks.config", "tasks.report", "tasks.stage",
})


@functools.lru_cache(maxsize=None)
def code_version(modules: tuple[str, ...], root: Path = imports.ROOT) -> str:
    """A hash of the code of every project module that `modules` reach (imports.closure), FRAMEWORK left
    out: editing any of them reruns the stage; a comment or a docstring does not.

    Computed when a key is first needed, once per process: parsing the ~80 modules takes about a third of a
    second, which importing the flow should not pay."""
    project = imports.modules(root)
    reached = set().union(*(imports.closure(module, project) for module in modules)) - FRAMEWORK
    lines = [f"{name} {imports.digest(name, project)}" for name in sorted(reached)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@contextlib.contextmanager
def accelerator_slot(run: RunContext | None, stage: str):
    """Hold one slot of the run's Prefect global concurrency limit while a heavy stage works, so runs that
    share a machine (a schedule, a trigger, a person) queue instead of fighting for its memory."""
    if run is None or not run.accelerator_limit:
        yield
        return
    import time

    from prefect import get_run_logger
    from prefect.concurrency.sync import concurrency

    logger, asked = get_run_logger(), time.monotonic()
    logger.info("%s: waiting for a slot of concurrency limit %r", stage, run.accelerator_limit)
    ensure_concurrency_limit(run.accelerator_limit, run.accelerator_slots)
    # a 60 s lease (Prefect's least), renewed while the stage lives: a killed run frees its slot in a minute
    with concurrency(run.accelerator_limit, occupy=1, strict=True, lease_duration=60):
        logger.info("%s: got the slot after %.1fs", stage, time.monotonic() - asked)
        held = time.monotonic()
        try:
            yield
        finally:
            logger.info("%s: released the slot after %.1fs", stage, time.monotonic() - held)


def ensure_concurrency_limit(name: str, slots: int, update: bool = False) -> None:
    """The global concurrency limit heavy stages hold, created with `slots` when missing (a limit that
    does not exist would limit nothing). `update` (from `server up --slots`) resizes an existing one."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        if update:
            client.upsert_global_concurrency_limit_by_name(name, slots)
            return
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))


def library_output(run: RunContext | None, stage: str):
    """What libraries print while a stage works (progress bars, warnings, per-module lines) goes to the
    stage's log file; the console and the Prefect log keep alignflow's own lines."""
    if run is None:
        return contextlib.nullcontext()
    from tasks.report import output_to

    return output_to(run.log_file(stage))


def stage(name: str, libraries: tuple[str, ...] = (), cached: bool = True,
          accelerator: bool = False, config: type[StageConfig] | None = None, needs: tuple[str, ...] = (),
          key_metric: str | None = None) -> Callable:
    """Make `fn` a retried Prefect task keyed on content (or never cached, for `cached=False`).

    `accelerator`: the stage holds a slot of the run's accelerator concurrency limit while it works.
    `config`, `needs`, `key_metric`: the stage's declaration (tasks/config.py: Declaration); the config class
    learns it too, so the spec checks a stage's needs from its settings alone."""
    declaration = Declaration(name, tuple(libraries), tuple(needs), key_metric)
    DECLARATIONS[name] = declaration
    if config is not None:
        config.declaration = declaration

    def wrap(fn: Callable) -> Callable:
        modules = (fn.__module__,)  # and every project module it reaches: code_version
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def body(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            key = stage_fingerprint(name, code_version(modules), libraries, bound.arguments)
            run = next((a for a in bound.arguments.values() if isinstance(a, RunContext)), None)
            token = _current_stage.set((name, key))
            try:
                maybe_inject_failure(name)
                with accelerator_slot(run if accelerator else None, name), library_output(run, name):
                    result = fn(*args, **kwargs)
            finally:
                _current_stage.reset(token)
            if run is not None:  # the output is in the store now; checkpoints and scratch can go
                shutil.rmtree(stage_workdir(run.cache_dir, name, key), ignore_errors=True)
            return result

        options: dict[str, Any] = dict(name=name, retries=2, retry_delay_seconds=exponential_backoff(10),
                                       retry_jitter_factor=0.5, retry_condition_fn=retry_transient)
        if cached:
            options.update(cache_policy=ArtifactCachePolicy(stage=name, modules=modules, libraries=libraries),
                           persist_result=True)
        else:
            from prefect.cache_policies import NO_CACHE

            options.update(cache_policy=NO_CACHE, persist_result=False)
        return task(**options)(body)

    return wrap


def lineage(stage: str, config: Any, inputs: dict[str, ArtifactRef], libraries: tuple[str, ...]) -> dict:
    """What made an artifact: recorded in its manifest, shown by `artifacts show --lineage`."""
    from prefect.runtime import flow_run

    return {
        "stage": stage,
        "config": canonical(config),
        "inputs": {k: {"name": v.name, "version": v.version, "digest": v.digest} for k, v in inputs.items()},
        "libraries": library_versions(("alignflow",) + libraries),
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
    }


def publish(run: RunContext, suffix: str, kind: str, folder: Path, *, stage: str, config: Any,
            inputs: dict[str, ArtifactRef], libraries: tuple[str, ...] = (), metadata: dict | None = None,
            metrics: dict | None = None) -> ArtifactRef:
    """Upload `folder` as the next version of `<pipeline>/<suffix>` with its lineage."""
    return run.open_store().put_dir(
        f"{run.name}/{suffix}", kind, folder, metadata=metadata, metrics=metrics,
        lineage=lineage(stage, config, inputs, libraries))
