"""What `alignflow run` and `alignflow plan` check before any work: that what the spec names is there.

The spec's own checks (tasks' configs, flows/spec.py) say whether the settings make sense; these say
whether this machine can start: the base model, every data source, the store, the serve env and the
api key's variable exist and can be reached. Every problem is collected, so one message lists them all,
and nothing is written: a store that does not exist yet is only checked to be creatable.

    spec has 4 problems:
      - model ./models/qwen: no such folder
      - data.sft: ./data/train.jsonl: no such file or folder
      - stages.sft.trainer_args.max_step: TRL's SFTConfig has no argument 'max_step'; did you mean 'max_steps'?
      - store s3://runs/demo: cannot reach http://127.0.0.1:9: connection refused
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
    problems = model_problems(spec.model) + problems
    for split, (sources, _) in spec.data.splits().items():
        if split == "eval" and spec.data.eval is None:
            continue  # carved out of data.sft: checked there
        for source in sources:
            problems += [f"data.{split}: {p}" for p in source_problems(source.source, store)]
    return problems + serving_problems(spec.stages)


# ---- the base model -----------------------------------------------------------------------------------

def model_problems(source: str) -> list[str]:
    from tasks.download import BUILTIN_MODELS

    scheme, _, rest = source.partition("://") if "://" in source else ("file", "", source)
    if scheme == "builtin":
        return [] if rest in BUILTIN_MODELS else [
            f"model {source}: no such built-in model; available: {', '.join(BUILTIN_MODELS)}"]
    if scheme in ("hf", "modelscope"):
        repo, _, revision = rest.partition("@")
        return hub_problems(scheme, "model", repo, source, revision or None)
    if scheme != "file":
        return [f"model {source}: unknown scheme {scheme!r}; use builtin://, modelscope://, hf:// or a local folder"]
    path = Path(rest).expanduser()
    if not path.exists():
        return [f"model {source}: no such folder"]
    if not (path / "config.json").is_file():
        return [f"model {source}: not a model folder (no config.json); pass a folder written by save_pretrained"]
    return []


def hub_problems(scheme: str, what: str, repo: str, source: str, revision: str | None = None) -> list[str]:
    """A hub repo id must be OWNER/NAME; it must be in the hub's cache or the hub must be reachable."""
    from tasks.download import Hub, _reachable, huggingface_hub, modelscope_hub, valid_repo_id

    if not valid_repo_id(repo):
        return [f"{what} {source}: {repo!r} is not a repo id; write OWNER/NAME, e.g. Qwen/Qwen2.5-0.5B-Instruct"]
    hub: Hub = huggingface_hub(what) if scheme == "hf" else modelscope_hub(what)
    try:
        hub.snapshot(repo, revision=revision, local_files_only=True)
        return []
    except hub.not_cached:
        pass
    except (ValueError, OSError) as exc:  # huggingface_hub's id checks raise ValueError subclasses
        return [f"{what} {source}: {exc}"]
    if hub.offline or not _reachable(hub.endpoint):
        return [f"{what} {source}: not in the {hub.title} cache ({hub.cache}) and {hub.endpoint} cannot be reached; "
                f"run `{hub.fetch_command.format(repo=repo)}` where there is network and copy that cache here"]
    return []


# ---- data -----------------------------------------------------------------------------------------

def source_problems(source: str, store: str | None) -> list[str]:
    """Whether one data source can be read: builtin names, local paths, S3 prefixes, hub caches, and
    registered versions (in `store`, when it can be opened)."""
    from alignflow.errors import DataError, SourceError
    from tasks.readers import data_files
    from tasks.sources import HUB_SCHEMES, parse_hub

    if source.startswith("store://"):
        return registered_problems(source, store)
    if source.startswith("s3://"):
        return s3_source_problems(source)
    for scheme, prefix in HUB_SCHEMES.items():
        if source.startswith(f"{scheme}://"):
            if not source.startswith(prefix):
                return [f"{source}: name a dataset repo as {prefix}OWNER/NAME[:CONFIG][@SPLIT]"]
            return hub_problems(scheme, "dataset", parse_hub(source.removeprefix(prefix))[0], source)
    if source.startswith("builtin://"):
        valid = [f"builtin://reverse/{part}" for part in ("sft", "preference", "eval")]
        return [] if source in valid else [f"{source}: no such built-in dataset; use {', '.join(valid)}"]
    if "://" in source:
        return [f"{source}: unsupported scheme; use a local file or folder, s3://, hf://datasets/, "
                "modelscope://datasets/ or store://"]
    path = Path(source).expanduser()
    if not path.exists():
        return [f"{source}: no such file or folder"]
    try:
        data_files(path, source)
    except (DataError, SourceError) as exc:
        return [str(exc)]
    return []


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
    """The serve env exists when vLLM is needed; an api key read from the environment is set."""
    problems = []
    deploy, evaluate = stages.deploy, stages.evaluate
    needs_vllm = deploy is not None or (evaluate is not None and evaluate.engine == "vllm")
    if needs_vllm:
        from tasks.servers import serve_python

        try:
            serve_python(deploy.python if deploy else None)
        except AlignflowError as exc:
            problems.append(str(exc))
    key = deploy.api_key if deploy else None
    if key and key.startswith("env:") and not os.environ.get(key.removeprefix("env:")):
        variable = key.removeprefix("env:")
        problems.append(f"stages.deploy.api_key: the environment variable {variable} is not set or empty; export "
                        f"{variable}=... where the run and `alignflow serve` run")
    return problems
