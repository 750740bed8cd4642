"""Model and dataset hubs (Hugging Face, ModelScope): a snapshot from the hub's own cache first (it works
offline), the network only when the hub answers within seconds; and the cheap identity of a local source.
The download stage and the data sources read both.
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

REACH_TIMEOUT = 5.0  # seconds to decide that a hub cannot be reached
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def local_fingerprint(path: str | Path) -> str:
    """A cheap identity of a local file or folder: names, sizes and mtimes (content is hashed on upload)."""
    root = Path(path)
    if not root.exists():
        return "missing"
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return ";".join(f"{p.relative_to(root.parent)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


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
