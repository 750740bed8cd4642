"""What `alignflow run` and `alignflow plan` check before any work: that what the spec names is there.

The spec's own checks (tasks' configs, flows/spec.py) say whether the settings make sense; these say
whether this machine can start: the base model, every data source, the store, the serve env and the
api key's variable exist and can be reached, and each stage's peak memory fits what the machine has free
(tasks/memory.py). Every problem is collected, so one message lists them all, and nothing is written: a
store that does not exist yet is only checked to be creatable.

    spec has 4 problems:
      - model ./models/qwen: no such file or folder
      - data.sft: dataset ./data/train.jsonl: no such file or folder
      - stages.sft.trainer_args.max_step: TRL's SFTConfig has no argument 'max_step'; did you mean 'max_steps'?
      - store s3://runs/demo: cannot reach http://127.0.0.1:9: EndpointConnectionError

    spec has 1 problem:
      - stages.sft (train_sft): needs 41.20 GiB of CPU RAM at its peak (weights 0.50, ...), but 21.30 GiB is
        free. Fix: stages.sft.batch_size: 4 (11.62 GiB); or stages.sft.trainer_args.gradient_checkpointing: ...
"""

from __future__ import annotations

import os
from pathlib import Path

from alignflow.errors import AlignflowError

CONNECT_SECONDS = 2.0  # an S3 endpoint that does not answer by then is reported, not waited for


def preflight(spec) -> list[str]:
    """Every problem that stops `spec` from running on this machine, found without doing or writing
    anything."""
    problems = store_problems(spec.store, spec.storage)
    store = None if problems else spec.store
    model = model_problems(spec.model)
    problems = model + problems
    for split, (sources, _) in spec.data.splits().items():
        if split == "eval" and spec.data.eval is None:
            continue  # carved out of data.sft: checked there
        for source in sources:
            problems += [f"data.{split}: {p}" for p in source_problems(source.source, store)]
    compare = spec.stages.compare
    if compare and not compare.url:  # the judge alignflow serves, downloaded once production exists
        problems += [f"stages.compare.judge: {p}" for p in model_problems(compare.judge)]
    return problems + serving_problems(spec.stages) + ([] if model else memory_problems(spec))


# ---- the base model -----------------------------------------------------------------------------------

def model_problems(source: str) -> list[str]:
    """The checks `download_model` makes before it fetches (tasks/download.py), and for a hub repo, that it
    is in the hub's cache or the hub answers."""
    from alignflow.errors import SourceError
    from tasks.download import checked_model_source

    try:
        scheme, rest = checked_model_source(source)
        if scheme in ("hf", "modelscope"):
            repo, _, revision = rest.partition("@")
            hub_problem(scheme, "model", repo, revision or None)
    except SourceError as exc:
        return [str(exc)]
    return []


def hub_problem(scheme: str, what: str, repo: str, revision: str | None = None) -> None:
    """A SourceError unless the repo is in the hub's cache or the hub answers (nothing is downloaded)."""
    from tasks.hub import cached_snapshot, hub_for

    cached_snapshot(hub_for(scheme, what), repo, revision)


# ---- memory -----------------------------------------------------------------------------------------

def memory_problems(spec) -> list[str]:
    """Stages whose peak memory, estimated from the model's shapes (tasks/memory.py), does not fit what this
    machine has free now: CPU RAM, or the GPU's memory for what runs there."""
    from tasks.memory import problems

    return problems(spec)


# ---- data -----------------------------------------------------------------------------------------

def source_problems(source: str, store: str | None) -> list[str]:
    """Whether one data source can be read: the checks reading it starts with (tasks/sources.py), then
    the data files of a local path, an S3 listing, a hub's cache, or a registered version (in `store`,
    when it can be opened)."""
    from alignflow.errors import DataError, SourceError
    from tasks.readers import data_files
    from tasks.sources import HUB_SCHEMES, checked_source, parse_hub

    try:
        kind = checked_source(source)
        if kind == "file":
            data_files(Path(source).expanduser(), source)
        elif kind in HUB_SCHEMES:
            hub_problem(kind, "dataset", parse_hub(source.removeprefix(HUB_SCHEMES[kind]))[0])
    except (DataError, SourceError) as exc:
        return [str(exc)]
    if kind == "store":
        return registered_problems(source, store)
    return s3_source_problems(source) if kind == "s3" else []


def registered_problems(source: str, store: str | None) -> list[str]:
    """A `store://NAME@VERSION` source names a registered version of the store (when it can be opened)."""
    from alignflow.names import is_valid
    from flows.data_versions import parse_store_source, raw_version
    from storage import open_store

    name, selector = parse_store_source(source)
    if not is_valid("dataset", name):
        return [f"{source}: {name!r} is not a dataset name; write store://PIPELINE/NAME[@VERSION]"]
    if store is None:
        return []  # the store's own problem is reported
    try:
        raw_version(open_store(store), name, selector, source)
    except AlignflowError as exc:
        return [str(exc).removeprefix(f"{source}: ")]
    return []


def s3_source_problems(source: str) -> list[str]:
    from tasks.sources import s3_listing_problem

    problem = s3_listing_problem(source, connect_timeout=CONNECT_SECONDS)
    return [problem] if problem else []


# ---- the store ------------------------------------------------------------------------------------

def store_problems(store: str, credentials_block: str | None) -> list[str]:
    """A local store that does not exist yet must be creatable; an s3:// store must be reachable, its
    bucket must exist and the credentials must work."""
    if store.startswith("s3://"):
        from storage.s3 import reach_problem

        problem = reach_problem(store, credentials_block, CONNECT_SECONDS)
        return [problem] if problem else []
    if "://" in store:
        return [f"store {store}: unsupported scheme; use a folder or s3://bucket[/prefix]"]
    path = Path(store).expanduser()
    if path.exists() and not path.is_dir():
        return [f"store {store}: is a file, not a folder; pass a folder (it is created) or s3://bucket/prefix"]
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        return [f"store {store}: {existing} is a file, so the store's folder cannot be created there"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"store {store}: {existing} is not writable; pass a folder you can write"]
    return []


# ---- serving ------------------------------------------------------------------------------------------

def serving_problems(stages) -> list[str]:
    """The serve env exists and has the engine when a server is needed; an api key read from the environment
    is set."""
    problems = []
    deploy, evaluate = stages.deploy, stages.evaluate
    judge_served = stages.compare is not None and not stages.compare.url
    if deploy is not None or (evaluate is not None and evaluate.engine == "vllm") or judge_served:
        from serving.lifecycle import engine_missing, serve_python

        engine = deploy.engine if deploy else "vllm"
        try:
            problems += engine_missing(serve_python(deploy.python if deploy else None, engine), engine)
        except AlignflowError as exc:
            problems.append(str(exc))
    key = deploy.api_key if deploy else None
    if key and key.startswith("env:") and not os.environ.get(key.removeprefix("env:")):
        variable = key.removeprefix("env:")
        problems.append(f"stages.deploy.api_key: the environment variable {variable} is not set or empty; export "
                        f"{variable}=... where the run and `alignflow serve` run")
    return problems
