"""The local artifact store: content addressing, immutable versions, aliases, verification."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from alignflow.errors import ConflictError, StorageError
from storage import open_store
from storage.store import blob_key


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"), tmp_path / "cache")


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def blob_files(store) -> list[str]:
    return store.backend.list("blobs/")


def test_round_trip_gives_back_the_same_files(store, tmp_path):
    src = make_folder(tmp_path / "m", {"config.json": b"{}", "weights/a.bin": os.urandom(4096)})
    ref = store.put_dir("p/model", "model", src, metrics={"loss": 0.5})
    out = store.get_dir(ref)
    assert (out / "weights/a.bin").read_bytes() == (src / "weights/a.bin").read_bytes()
    assert ref.version == 1 and ref.digest.startswith("sha256:") and ref.metrics == {"loss": 0.5}
    assert store.ref("p/model", "latest") == ref


def test_identical_content_reuses_the_version(store, tmp_path):
    src = make_folder(tmp_path / "m", {"a.txt": b"same"})
    first = store.put_dir("p/data", "dataset", src)
    again = store.put_dir("p/data", "dataset", src)
    assert again.version == first.version == 1
    assert store.versions("p/data") == [1]


def test_new_version_uploads_only_the_changed_file(store, tmp_path):
    big = os.urandom(1 << 20)
    src = make_folder(tmp_path / "m", {"big.bin": big, "small.txt": b"v1"})
    store.put_dir("p/model", "model", src)
    before = set(blob_files(store))
    (src / "small.txt").write_bytes(b"v2")
    ref = store.put_dir("p/model", "model", src)
    added = set(blob_files(store)) - before
    assert ref.version == 2
    assert len(added) == 1 and store.backend.get(added.pop())[0] == b"v2"
    assert (store.get_dir(store.ref("p/model", 1)) / "small.txt").read_bytes() == b"v1"  # v1 untouched


def test_version_pointers_are_written_once(store, tmp_path):
    store.put_dir("p/x", "dataset", make_folder(tmp_path / "a", {"f": b"1"}))
    with pytest.raises(ConflictError):
        store.backend.put("artifacts/p/x/versions/1.json", b"{}", if_none_match=True)


def test_concurrent_writers_get_distinct_versions(store, tmp_path):
    folders = [make_folder(tmp_path / f"w{i}", {"f": str(i).encode()}) for i in range(6)]
    refs = []
    threads = [threading.Thread(target=lambda f=f: refs.append(store.put_dir("p/race", "dataset", f)))
               for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.version for r in refs) == [1, 2, 3, 4, 5, 6]
    assert len({store.ref("p/race", v).digest for v in range(1, 7)}) == 6


def test_alias_compare_and_swap_refuses_a_stale_writer(store, tmp_path):
    ref1 = store.put_dir("p/m", "model", make_folder(tmp_path / "a", {"f": b"1"}))
    ref2 = store.put_dir("p/m", "model", make_folder(tmp_path / "b", {"f": b"2"}))
    store.promote(ref1, "production")
    _, etag = store.backend.get("artifacts/p/m/aliases/production.json")
    store.promote(ref2, "production")
    with pytest.raises(ConflictError):
        store.backend.put("artifacts/p/m/aliases/production.json", b'{"version": 1}', if_match=etag)
    assert store.alias_target("p/m", "production") == 2


def test_corrupt_blob_is_detected_on_download(store, tmp_path):
    ref = store.put_dir("p/m", "model", make_folder(tmp_path / "a", {"w.bin": b"good weights"}))
    manifest = store.manifest(ref.digest)
    path = Path(store.backend.root) / blob_key(manifest["files"]["w.bin"]["sha256"])
    os.chmod(path, 0o644)
    path.write_bytes(b"evil weights")
    with pytest.raises(StorageError, match="corrupt"):
        store.get_dir(ref)


def test_missing_blob_means_the_artifact_does_not_exist(store, tmp_path):
    ref = store.put_dir("p/m", "model", make_folder(tmp_path / "a", {"w.bin": b"x"}))
    assert store.exists(ref)
    os.remove(Path(store.backend.root) / blob_key(store.manifest(ref.digest)["files"]["w.bin"]["sha256"]))
    assert not store.exists(ref)


def test_keys_outside_the_store_are_refused(store):
    with pytest.raises(StorageError, match="'..'"):
        store.backend.put("artifacts/../../etc/x", b"no")


def test_manifest_lists_sorted_relative_paths_and_lineage(store, tmp_path):
    src = make_folder(tmp_path / "m", {"b.txt": b"b", "a/c.txt": b"c"})
    ref = store.put_dir("p/m", "model", src, lineage={"stage": "train_sft", "inputs": {}})
    raw = json.loads(store.backend.get(f"manifests/sha256/{ref.digest[7:]}.json")[0])
    assert list(raw["files"]) == ["a/c.txt", "b.txt"]
    assert raw["lineage"]["stage"] == "train_sft"
