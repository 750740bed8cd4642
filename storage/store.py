"""The artifact store: what stages upload their outputs to and download their inputs from.

Layout (the same on every backend):
    blobs/sha256/ab/cdef...              file contents, written once, verified on read
    manifests/sha256/<hex>.json          a directory: sorted {relpath: {sha256, size}}, kind, metadata, lineage
    artifacts/<name>/versions/<n>.json   version n -> manifest digest (written once)
    artifacts/<name>/aliases/<a>.json    mutable pointer, changed by compare-and-swap

A manifest is written after its blobs and a version after its manifest, so a crash never leaves a
visible half artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from alignflow.errors import ArtifactNotFound, ConfigError, ConflictError, StorageError
from storage.backends import Backend, LocalBackend, ObjectNotFound
from storage.refs import ArtifactRef

CHUNK = 8 * 1024 * 1024
# Files uploaded at once. Each large file is already a parallel multipart upload, so two files in flight
# keep a link busy; more only add contention (measured in benchmarks/store_transfer.py).
UPLOAD_WORKERS = 2


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def parallel(fn, items: list, workers: int = 8) -> list:
    """`[fn(x) for x in items]`, `workers` at a time (uploads and downloads wait on the network)."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def manifest_digest(manifest: dict) -> str:
    """An artifact's identity: the hash of its manifest without lineage (who made it is not what it is)."""
    content = {k: v for k, v in manifest.items() if k != "lineage"}
    return "sha256:" + hashlib.sha256(canonical_json(content)).hexdigest()


def blob_key(hexdigest: str) -> str:
    return f"blobs/sha256/{hexdigest[:2]}/{hexdigest[2:]}"


def manifest_key(digest: str) -> str:
    return f"manifests/sha256/{digest.removeprefix('sha256:')}.json"


def _relpath(path: Path, root: Path) -> str:
    rel = PurePosixPath(path.relative_to(root).as_posix())
    if rel.is_absolute() or ".." in rel.parts:
        raise StorageError(f"refusing to store {path}: it resolves outside {root}")
    return str(rel)


class ArtifactStore:
    """Versioned, content-addressed artifacts over one backend, with a local download cache."""

    def __init__(self, backend: Backend, cache_dir: str | Path):
        self.backend = backend
        self.cache_dir = Path(cache_dir).expanduser().resolve()

    @property
    def uri(self) -> str:
        return self.backend.uri

    # ---- writing ---------------------------------------------------------------------------------

    def put_dir(self, name: str, kind: str, src: Path, *, metadata: dict | None = None,
                lineage: dict | None = None, metrics: dict | None = None) -> ArtifactRef:
        """Upload a folder as the next version of `name` (or return the latest, if identical)."""
        files = self.upload_tree(Path(src))
        manifest = {"kind": kind, "files": files, "metadata": metadata or {}, "metrics": metrics or {}}
        digest = manifest_digest(manifest)
        record = dict(manifest, lineage=lineage or {})
        if not self.backend.exists(manifest_key(digest)):
            try:
                self.backend.put(manifest_key(digest), canonical_json(record), if_none_match=True)
            except ConflictError:
                pass  # someone wrote the same content first: equally good
        return self._publish_version(name, kind, digest, manifest["metrics"], lineage or {})

    def upload_tree(self, src: Path) -> dict:
        """Hash files one after another here while a pool uploads the ones already hashed, so hashing
        overlaps the network instead of preceding it. Returns the manifest's `files` mapping."""
        files, pending = {}, []
        with ThreadPoolExecutor(max_workers=UPLOAD_WORKERS) as pool:
            for path in sorted(p for p in src.rglob("*") if p.is_file()):
                hexdigest = sha256_file(path)
                files[_relpath(path, src)] = {"sha256": hexdigest, "size": path.stat().st_size}
                pending.append(pool.submit(self._upload_blob, hexdigest, path))
            for future in pending:
                future.result()  # re-raise the first failure
        return files

    def _upload_blob(self, hexdigest: str, path: Path) -> None:
        if not self.backend.exists(blob_key(hexdigest)):  # send only what the store lacks
            self.backend.put_file(blob_key(hexdigest), path)

    def _publish_version(self, name: str, kind: str, digest: str, metrics: dict, lineage: dict) -> ArtifactRef:
        latest = self.latest_version(name)
        if latest is not None and self._version_record(name, latest)["digest"] == digest:
            return ArtifactRef(name, kind, latest, digest, metrics)
        version = (latest or 0) + 1
        while True:
            record = {"digest": digest, "kind": kind, "created_at": time.time(),
                      "flow_run_id": lineage.get("flow_run_id")}
            try:
                self.backend.put(f"artifacts/{name}/versions/{version}.json", canonical_json(record),
                                 if_none_match=True)
                break
            except ConflictError:
                version += 1  # a concurrent writer took this number
        return ArtifactRef(name, kind, version, digest, metrics)

    # ---- reading ---------------------------------------------------------------------------------

    def versions(self, name: str) -> list[int]:
        keys = self.backend.list(f"artifacts/{name}/versions/")
        return sorted(int(PurePosixPath(k).stem) for k in keys)

    def latest_version(self, name: str) -> int | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def names(self) -> list[str]:
        return sorted({k.split("/versions/")[0].removeprefix("artifacts/")
                       for k in self.backend.list("artifacts/") if "/versions/" in k})

    def _version_record(self, name: str, version: int) -> dict:
        data, _ = self.backend.get(f"artifacts/{name}/versions/{version}.json")
        return json.loads(data)

    def manifest(self, digest: str) -> dict:
        manifest = json.loads(self.backend.get(manifest_key(digest))[0])
        if manifest_digest(manifest) != digest:
            raise StorageError(f"manifest {digest} in {self.uri} does not match its digest: the store is corrupt")
        return manifest

    def ref(self, name: str, selector: int | str = "latest") -> ArtifactRef:
        """`ref("demo/sft", 3)`, `ref("demo/sft", "production")`, `ref("demo/sft", "sha256:...")` (the newest
        version with that content) or `ref("demo/sft")` (the newest version)."""
        if selector == "latest":  # derived from the version list, never stored
            selector = self.latest_version(name)
            if selector is None:
                raise ArtifactNotFound(f"no artifact named {name} in store {self.uri}; `alignflow artifacts ls` lists "
                                   "what it holds")
        if isinstance(selector, str) and selector.startswith("sha256:"):
            return self._ref_by_digest(name, selector)
        version = selector if isinstance(selector, int) else self.alias_target(name, selector)
        if version is None:
            raise ArtifactNotFound(f"{name} has no alias {selector!r} in store {self.uri}")
        try:
            record = self._version_record(name, version)
        except ObjectNotFound:
            raise ArtifactNotFound(f"{name}@{version} does not exist in store {self.uri}") from None
        metrics = self.manifest(record["digest"]).get("metrics", {})
        return ArtifactRef(name, record["kind"], version, record["digest"], metrics)

    def _ref_by_digest(self, name: str, digest: str) -> ArtifactRef:
        for version in reversed(self.versions(name)):
            ref = self.ref(name, version)
            if ref.digest == digest:
                return ref
        raise ArtifactNotFound(f"{name} has no version with digest {digest} in store {self.uri}")

    def exists(self, ref: ArtifactRef) -> bool:
        """True when the version pointer, its manifest and every blob it lists are present."""
        try:
            if self._version_record(ref.name, ref.version)["digest"] != ref.digest:
                return False
            files = self.manifest(ref.digest)["files"]
        except ObjectNotFound:
            return False
        return all(self.backend.exists(blob_key(f["sha256"])) for f in files.values())

    def get_dir(self, ref: ArtifactRef) -> Path:
        """The artifact's files as a read-only local folder (cached by digest; verified on download)."""
        tree = self.cache_dir / "trees" / ref.digest.removeprefix("sha256:")
        if tree.exists():
            return tree
        return self.materialize(self.manifest(ref.digest)["files"], tree, ref.label)

    def materialize(self, files: dict, tree: Path, label: str) -> Path:
        """A manifest's `files` mapping (what `upload_tree` returned) as the read-only folder `tree`; `label`
        names what it is in errors."""
        tmp = Path(tempfile.mkdtemp(dir=self._mkdir(tree.parent), prefix=".tmp-"))
        try:
            blobs = parallel(lambda info: self._cached_blob(info["sha256"], label), list(files.values()))
            for rel, blob in zip(files, blobs):
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(blob, dest)
            os.rename(tmp, tree)
        except FileExistsError:
            pass  # another process materialized it first
        except OSError as exc:
            if not tree.exists():
                raise StorageError(f"could not materialize {label} into {tree}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return tree

    def _cached_blob(self, hexdigest: str, label: str) -> Path:
        path = self.cache_dir / "blobs" / hexdigest[:2] / hexdigest[2:]
        if path.exists():
            return path
        self._mkdir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        try:
            actual = self._fetch_blob(hexdigest, Path(tmp))
            if actual != hexdigest:
                raise StorageError(
                    f"blob {hexdigest[:12]} of {label} is corrupt in store {self.uri} "
                    f"(its content hashes to {actual[:12]}); restore it or re-run the stage that made it")
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        except ObjectNotFound:
            raise StorageError(f"blob {hexdigest[:12]} of {label} is missing from store {self.uri}") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def _fetch_blob(self, hexdigest: str, dest: Path) -> str:
        """Download a blob to `dest` and return the sha256 of what arrived (ObjectNotFound if absent)."""
        self.backend.get_file(blob_key(hexdigest), dest)
        return sha256_file(dest)

    @staticmethod
    def _mkdir(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ---- markers: facts about a version, written once (e.g. "announced") ----------------------------

    def has_marker(self, ref: ArtifactRef, marker: str) -> bool:
        return self.backend.exists(f"artifacts/{ref.name}/markers/{ref.version}/{marker}.json")

    def put_marker(self, ref: ArtifactRef, marker: str) -> None:
        try:
            self.backend.put(f"artifacts/{ref.name}/markers/{ref.version}/{marker}.json",
                             canonical_json({"at": time.time()}), if_none_match=True)
        except ConflictError:
            pass  # written already: the fact holds

    # ---- aliases ---------------------------------------------------------------------------------

    def alias_target(self, name: str, alias: str) -> int | None:
        record, _ = self.read_alias(name, alias)
        return record["version"] if record else None

    def promote(self, ref: ArtifactRef, alias: str, expected: int | None | object = ...) -> bool:
        """Point `alias` at `ref`, by compare-and-swap: a concurrent promotion raises ConflictError.
        Returns whether the alias moved (False: it pointed at `ref` already).

        `expected`: the version (or None: no target) the caller judged against; if the alias points
        elsewhere now, nothing is written and ConflictError says what moved it."""
        return self._move_alias(ref.name, alias, ref.version, expected)

    def rollback(self, name: str, alias: str, expected: int | None = None) -> int:
        """Point `alias` back at its previous target; returns that version. With `expected`, only if the
        alias still points at that version (else ConflictError: someone moved it since)."""
        record, etag = self.read_alias(name, alias)
        if expected is not None and (record or {}).get("version") != expected:
            raise ConflictError(f"{name}: alias {alias!r} no longer points at {name}@{expected}; not rolled back")
        if not record or not record.get("history"):
            raise ArtifactNotFound(f"{name}: alias {alias!r} has no previous target to roll back to")
        previous = record["history"][-1]
        self.write_alias(name, alias, {"version": previous, "history": record["history"][:-1]}, etag)
        return previous

    def read_alias(self, name: str, alias: str) -> tuple[dict | None, str | None]:
        """The alias record and its ETag (None, None when the alias does not exist)."""
        try:
            data, etag = self.backend.get(f"artifacts/{name}/aliases/{alias}.json")
        except ObjectNotFound:
            return None, None
        return json.loads(data), etag

    def write_alias(self, name: str, alias: str, record: dict, etag: str | None) -> None:
        """Write only if the alias is still what was read (`etag`), or still absent (`etag` None)."""
        key = f"artifacts/{name}/aliases/{alias}.json"
        data = canonical_json(dict(record, updated_at=time.time()))
        try:
            if etag is None:
                self.backend.put(key, data, if_none_match=True)
            else:
                self.backend.put(key, data, if_match=etag)
        except ConflictError:
            raise ConflictError(f"{name}: alias {alias!r} was changed by someone else meanwhile; nothing was "
                                f"written. Check `alignflow artifacts show {name}@{alias}` and retry") from None

    def _move_alias(self, name: str, alias: str, version: int, expected: int | None | object = ...) -> bool:
        if version not in self.versions(name):
            raise ArtifactNotFound(f"{name}@{version} does not exist in store {self.uri}")
        current, etag = self.read_alias(name, alias)
        if expected is not ... and (current["version"] if current else None) != expected:
            now = f"{name}@{current['version']}" if current else "nothing"
            raise ConflictError(f"{name}: alias {alias!r} now points at {now}, not at "
                                f"{f'{name}@{expected}' if expected else 'nothing'} as when it was read; "
                                "nothing was written")
        if current and current["version"] == version:
            return False  # already there: no write, no history entry
        history = (current["history"][-20:] + [current["version"]]) if current else []
        self.write_alias(name, alias, {"version": version, "history": history}, etag)
        return True

    # ---- integrity ---------------------------------------------------------------------------------

    def verify(self) -> dict:
        """Re-hash every blob a manifest references and check every version's manifest exists.

        Returns {"manifests": n, "blobs": n, "versions": n, "problems": [...]}."""
        problems, blobs = [], {}
        manifests = [k for k in self.backend.list("manifests/") if k.endswith(".json")]
        for key in manifests:
            digest = "sha256:" + PurePosixPath(key).stem
            try:
                files = self.manifest(digest)["files"]
            except StorageError as exc:
                problems.append(str(exc))
                continue
            for rel, info in files.items():
                blobs.setdefault(info["sha256"], f"{rel} in manifest {digest[:19]}")
        for hexdigest, where in sorted(blobs.items()):
            problem = self._check_blob(hexdigest)
            if problem:
                problems.append(f"blob {hexdigest[:12]} ({where}): {problem}")
        versions = [k for k in self.backend.list("artifacts/") if "/versions/" in k]
        for key in versions:
            digest = json.loads(self.backend.get(key)[0])["digest"]
            if not self.backend.exists(manifest_key(digest)):
                problems.append(f"{key} points at missing manifest {digest[:19]}")
        return {"manifests": len(manifests), "blobs": len(blobs), "versions": len(versions), "problems": problems}

    def _check_blob(self, hexdigest: str) -> str | None:
        fd, tmp = tempfile.mkstemp(prefix="alignflow-verify-")
        os.close(fd)
        try:
            actual = self._fetch_blob(hexdigest, Path(tmp))
            return None if actual == hexdigest else f"corrupt (content hashes to {actual[:12]})"
        except ObjectNotFound:
            return "missing"
        finally:
            os.unlink(tmp)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ALIGNFLOW_CACHE", Path.home() / ".cache" / "alignflow"))


def backend_for(location: str, credentials_block: str | None = None) -> Backend:
    """`s3://bucket/prefix` (credentials from the environment or the named Prefect block) or a folder."""
    if location.startswith("s3://"):
        from storage.s3 import S3Backend

        return S3Backend(location, credentials_block=credentials_block)
    if "://" in location:
        raise ConfigError(f"store {location!r}: use a local folder or s3://bucket/prefix", "store")
    return LocalBackend(location)


def open_store(location: str, cache_dir: str | Path | None = None,
               credentials_block: str | None = None) -> ArtifactStore:
    """`open_store(".alignflow/store")` or `open_store("s3://bucket/prefix")`."""
    return ArtifactStore(backend_for(location, credentials_block), cache_dir or default_cache_dir())
