"""Where store objects physically live. A backend knows keys and bytes, nothing about artifacts.

Keys are '/'-separated relative paths such as `blobs/sha256/ab/cdef...`. Two conditional writes carry
the store's guarantees: `if_none_match` (write once: version pointers, blobs) and `if_match=<etag>`
(compare-and-swap: aliases).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol

from alignflow.errors import ConflictError, StorageError


class ObjectNotFound(StorageError):
    """The key does not exist in the backend."""


class Backend(Protocol):
    uri: str

    def get(self, key: str) -> tuple[bytes, str]: ...  # (data, etag); ObjectNotFound if absent

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]: ...

    def put_file(self, key: str, path: Path) -> None: ...

    def get_file(self, key: str, dest: Path) -> None: ...

    def delete(self, key: str) -> None: ...  # no error if absent; only scratch is ever deleted (checkpoints,
    # the failure record Prefect writes for a stage that failed on bad input)


def etag_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class LocalBackend:
    """A folder on disk. Writes go to a temporary file first, then appear atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if key.startswith("/") or ".." in parts or "" in parts:
            raise StorageError(f"refusing store key {key!r}: keys are relative paths without '..'")
        return self.root.joinpath(*parts)

    def get(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"{key} not found in store {self.uri}") from None
        return data, etag_of(data)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_tmp(path, data)
        try:
            if if_none_match:
                try:
                    os.link(tmp, path)  # atomic create-if-absent
                except FileExistsError:
                    raise ConflictError(f"{key} already exists in store {self.uri}") from None
            elif if_match is not None:
                with self._locked(path):
                    current = etag_of(path.read_bytes()) if path.exists() else None
                    if current != if_match:
                        raise ConflictError(f"{key} changed under us (expected etag {if_match}, found {current})")
                    os.replace(tmp, path)
            else:
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return etag_of(data)

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get_file(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.exists():
            raise ObjectNotFound(f"{key} not found in store {self.uri}")
        shutil.copyfile(src, dest)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        for parent in path.parents:  # drop folders the delete emptied, up to the root
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty (or written to meanwhile): keep it and everything above
                break

    @staticmethod
    def _write_tmp(path: Path, data: bytes) -> Path:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return Path(tmp)

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        with open(path.with_name(f".tmp-{path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
