"""The store's contract, run against both backends (a local folder and a real SeaweedFS over S3):
content addressing, immutable versions, aliases by compare-and-swap, verification on read."""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path

import pytest

from alignflow.errors import ConflictError, StorageError
from storage import open_store
from storage.backends import LocalBackend
from storage.store import blob_key


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "store"), tmp_path / "cache")
    request.getfixturevalue("s3_server")
    return open_store(f"s3://alignflow/contract/{uuid.uuid4().hex}", tmp_path / "cache")


def overwrite(store, key: str, data: bytes) -> None:
    """Change an object behind the store's back (bit rot, a bad sync, a person with write access)."""
    if isinstance(store.backend, LocalBackend):
        path = store.backend.root / key
        os.chmod(path, 0o644)
        path.write_bytes(data)
    else:
        store.backend.client.put_object(Bucket=store.backend.bucket, Key=store.backend._key(key), Body=data)


def delete(store, key: str) -> None:
    if isinstance(store.backend, LocalBackend):
        os.remove(store.backend.root / key)
    else:
        store.backend.client.delete_object(Bucket=store.backend.bucket, Key=store.backend._key(key))


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
    record, etag = store.read_alias("p/m", "production")
    store.promote(ref2, "production")
    with pytest.raises(ConflictError, match="changed by someone else"):
        store.write_alias("p/m", "production", dict(record, version=1), etag)
    assert store.alias_target("p/m", "production") == 2


def test_promotion_against_a_stale_judgement_is_refused(store, tmp_path):
    """A run judged its candidate against production@1; another run promoted meanwhile: no lost update."""
    refs = [store.put_dir("p/r", "eval_report", make_folder(tmp_path / str(i), {"f": str(i).encode()}))
            for i in range(3)]
    store.promote(refs[0], "production", expected=None)
    store.promote(refs[1], "production", expected=1)  # the winner
    with pytest.raises(ConflictError, match="now points at p/r@2, not at p/r@1"):
        store.promote(refs[2], "production", expected=1)
    assert store.alias_target("p/r", "production") == 2
    assert store.read_alias("p/r", "production")[0]["history"] == [1]


def test_markers_are_written_once(store, tmp_path):
    ref = store.put_dir("p/d", "raw_data", make_folder(tmp_path / "d", {"x.jsonl": b"{}\n"}))
    assert not store.has_marker(ref, "announced")
    store.put_marker(ref, "announced")
    store.put_marker(ref, "announced")  # again: still one fact, no error
    assert store.has_marker(ref, "announced")
    assert store.names() == ["p/d"]  # a marker is not an artifact


def test_rollback_returns_the_alias_to_its_previous_target(store, tmp_path):
    refs = [store.put_dir("p/m", "model", make_folder(tmp_path / str(i), {"f": str(i).encode()})) for i in range(3)]
    for ref in refs:
        store.promote(ref, "production")
    assert store.rollback("p/m", "production") == 2
    assert store.rollback("p/m", "production") == 1
    with pytest.raises(StorageError, match="no previous target"):
        store.rollback("p/m", "production")


def test_corrupt_blob_is_detected_on_download(store, tmp_path):
    ref = store.put_dir("p/m", "model", make_folder(tmp_path / "a", {"w.bin": b"good weights"}))
    overwrite(store, blob_key(store.manifest(ref.digest)["files"]["w.bin"]["sha256"]), b"evil weights")
    with pytest.raises(StorageError, match=r"blob \w+ of p/m@1 is corrupt"):
        store.get_dir(ref)
    assert any("corrupt" in p for p in store.verify()["problems"])


def test_missing_blob_means_the_artifact_does_not_exist(store, tmp_path):
    ref = store.put_dir("p/m", "model", make_folder(tmp_path / "a", {"w.bin": b"x"}))
    assert store.exists(ref)
    delete(store, blob_key(store.manifest(ref.digest)["files"]["w.bin"]["sha256"]))
    assert not store.exists(ref)
    assert any("missing" in p for p in store.verify()["problems"])


def test_keys_outside_the_store_are_refused(store):
    with pytest.raises(StorageError, match="'..'"):
        store.backend.put("artifacts/../../etc/x", b"no")


def test_verify_finds_nothing_wrong_in_a_healthy_store(store, tmp_path):
    store.put_dir("p/m", "model", make_folder(tmp_path / "a", {"x": b"1", "y": b"2"}))
    report = store.verify()
    assert report["problems"] == [] and report["blobs"] == 2 and report["versions"] == 1


def test_manifest_lists_sorted_relative_paths_and_lineage(store, tmp_path):
    src = make_folder(tmp_path / "m", {"b.txt": b"b", "a/c.txt": b"c"})
    ref = store.put_dir("p/m", "model", src, lineage={"stage": "train_sft", "inputs": {}})
    raw = json.loads(store.backend.get(f"manifests/sha256/{ref.digest[7:]}.json")[0])
    assert list(raw["files"]) == ["a/c.txt", "b.txt"]
    assert raw["lineage"]["stage"] == "train_sft"


def test_what_the_store_lacks_is_named_and_is_a_user_error(store, tmp_path):
    from alignflow.errors import ArtifactNotFound

    for selector, expected in [("latest", "no artifact named demo/none in store"),
                               (3, "demo/none@3 does not exist in store"),
                               ("production", "demo/none has no alias 'production'")]:
        with pytest.raises(ArtifactNotFound, match=expected) as err:
            store.ref("demo/none", selector)
        assert err.value.exit_code == 2 and "@0" not in str(err.value)
