"""Training checkpoints in the store, so that a retry on any machine resumes where the last attempt got to.

    checkpoints/<stage>-<key>/latest.json          {"step": N, "files": {relpath: size}}, written last
    checkpoints/<stage>-<key>/<N>/<relpath>        the files of checkpoint N

`<key>` is the stage's cache key, so the same stage on the same inputs finds them from any machine. The
trainer writes a checkpoint to its local folder; the parent snapshots it at once (hard links: the trainer
may rotate it away while it uploads) and uploads it in the background while training goes on. Only
after all of a checkpoint's files are in does `latest.json` point at it; then the older checkpoints are
deleted, so the newest complete checkpoint is all the store keeps. Checkpoints written faster than they
upload are skipped, never queued. Once the stage's output is published, the prefix is deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from storage import ArtifactStore
from storage.backends import ObjectNotFound

PREFIX = "checkpoints"


def step_of(checkpoint: str | Path) -> int:
    return int(Path(checkpoint).name.split("-")[-1])


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint that was fully written. A process killed while saving leaves a folder
    without `trainer_state.json`, which the Trainer writes last: skip it."""
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for path in sorted(candidates, key=step_of, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            continue
    return None


class StoredCheckpoints:
    """The store's copy of one stage's checkpoints (see the module's docstring)."""

    def __init__(self, store: ArtifactStore, stage_key: str, logger: logging.Logger):
        self.store, self.key, self.logger = store, stage_key, logger
        self.backend, self.prefix = store.backend, f"{PREFIX}/{stage_key}"
        self.where = f"{store.uri.rstrip('/')}/{self.prefix}"
        self._pending: Path | None = None  # the newest snapshot not yet uploaded
        self._lock = threading.Lock()
        self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignflow-checkpoints")
        self.stored_step: int | None = None

    def latest(self) -> dict | None:
        try:
            return json.loads(self.backend.get(f"{self.prefix}/latest.json")[0])
        except ObjectNotFound:
            return None

    def restore(self, folder: Path) -> int | None:
        """Download the stored checkpoint into `folder` unless a local one is at least as new; its step.
        A checkpoint that cannot be read back costs the resume point, never the run: training starts from
        what is local (or from step 0)."""
        try:
            return self._restore(folder)
        except Exception as exc:  # noqa: BLE001 (a broken stored checkpoint costs the resume, never the run)
            self.logger.warning("could not restore the stored checkpoint from %s (%s); training starts without it",
                                self.where, exc)
            return None

    def _restore(self, folder: Path) -> int | None:
        record = self.latest()
        local = last_complete_checkpoint(folder)
        if not record or (local and step_of(local) >= record["step"]):
            return None
        step, started = record["step"], time.monotonic()
        partial = folder / f".restoring-{step}"
        shutil.rmtree(partial, ignore_errors=True)
        for rel in record["files"]:
            (partial / rel).parent.mkdir(parents=True, exist_ok=True)
            self.backend.get_file(f"{self.prefix}/{step}/{rel}", partial / rel)
        dest = folder / f"checkpoint-{step}"
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
        self.logger.info("restored the checkpoint at step %d from %s (%s in %.1fs)", step, self.where,
                         _megabytes(record["files"].values()), time.monotonic() - started)
        return step

    def saved(self, checkpoint: Path) -> None:
        """The trainer finished writing `checkpoint`: snapshot it and upload it in the background."""
        snapshot = checkpoint.parent.parent / "uploading" / checkpoint.name
        _link_tree(checkpoint, snapshot)
        with self._lock:
            skipped, self._pending = self._pending, snapshot
        if skipped is not None:  # a newer one came before the older one's turn: it is all that matters
            shutil.rmtree(skipped, ignore_errors=True)
        self._uploads.submit(self._upload_pending)

    def wait(self) -> None:
        """Let the upload in flight finish (the trainer is done or dead: that checkpoint is the last)."""
        self._uploads.shutdown(wait=True)

    def drop(self) -> None:
        """The stage's output is published: its checkpoints are no longer needed anywhere."""
        for key in self.backend.list(f"{self.prefix}/"):
            self.backend.delete(key)

    def _upload_pending(self) -> None:
        with self._lock:
            snapshot, self._pending = self._pending, None
        if snapshot is None:
            return
        try:
            self._upload(snapshot)
        except Exception as exc:  # noqa: BLE001 (a lost checkpoint costs a resume point, never the training)
            self.logger.warning("could not store checkpoint %s in %s: %s", snapshot.name, self.where, exc)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def _upload(self, snapshot: Path) -> None:
        step, started = step_of(snapshot), time.monotonic()
        files = self.commit(step, self.put_files(snapshot))
        self.logger.info("checkpoint at step %d stored in %s (%s in %.1fs)", step, self.where,
                         _megabytes(files.values()), time.monotonic() - started)

    def put_files(self, checkpoint: Path) -> dict:
        """Upload the files of `checkpoint` (`.../checkpoint-N`); not yet the newest until `commit(N)`. Several
        processes may each put their own part of checkpoint N (a worker's optimizer shard, its RNG state)."""
        from storage.store import parallel

        step = step_of(checkpoint)
        files = {p.relative_to(checkpoint).as_posix(): p.stat().st_size
                 for p in sorted(checkpoint.rglob("*")) if p.is_file()}
        parallel(lambda rel: self.backend.put_file(f"{self.prefix}/{step}/{rel}", checkpoint / rel), list(files), 4)
        return files

    def commit(self, step: int, sizes: dict) -> dict:
        """Point `latest.json` at checkpoint `step`, whose files are all in (this process's, with their `sizes`,
        and any other process's), then delete the older ones; the files ({relpath: size, 0 when not known})."""
        files = {key.removeprefix(f"{self.prefix}/{step}/"): 0 for key in self.backend.list(f"{self.prefix}/{step}/")}
        files.update(sizes)
        self.backend.put(f"{self.prefix}/latest.json", json.dumps({"step": step, "files": files}).encode())
        for key in self.backend.list(f"{self.prefix}/"):  # the older checkpoints
            if not key.startswith(f"{self.prefix}/{step}/") and not key.endswith("/latest.json"):
                self.backend.delete(key)
        self.stored_step = step
        return files


def _link_tree(src: Path, dest: Path) -> None:
    """A copy of `src` made of hard links (instant, no extra space); real copies where links fail."""
    shutil.rmtree(dest, ignore_errors=True)
    for path in src.rglob("*"):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _megabytes(sizes) -> str:
    return f"{sum(sizes) / 1e6:.1f} MB"
