"""Raw data versions on a local store: registering by content, pinning store:// sources, settling bursts."""

from __future__ import annotations

import threading
import time

import pytest

from alignflow.errors import SourceError
from flows.data_versions import fingerprint, register, resolve_sources, source_listing
from flows.spec import SPLITS, DataSpec
from flows.watch_data import settled_listing
from storage import open_store
from tasks.convert import DataSource


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "store"), tmp_path / "cache")


def test_the_same_content_is_the_same_version_and_a_change_is_the_next(store, tmp_path):
    source = tmp_path / "incoming"
    source.mkdir()
    (source / "a.jsonl").write_text('{"q": 1}\n')
    first, new = register(store, "demo/extra", str(source))
    assert (first.version, new) == (1, True) and first.kind == "raw_data"
    (source / "a.jsonl").touch()  # a newer timestamp, the same bytes
    assert register(store, "demo/extra", str(source)) == (first, False)
    (source / "b.jsonl").write_text('{"q": 2}\n')
    second, new = register(store, "demo/extra", str(source))
    assert (second.version, new) == (2, True) and second.metrics["files"] == 2


def test_store_sources_resolve_to_one_version_and_a_trigger_pins_its_own(store, tmp_path):
    for i in range(3):
        (tmp_path / f"v{i}.jsonl").write_text(f'{{"q": {i}}}\n')
        register(store, "demo/extra", str(tmp_path / f"v{i}.jsonl"))
    data = DataSpec(sft=["store://demo/extra@latest", {"source": "store://demo/extra@1", "max_rows": 5}],
                    eval="builtin://reverse/eval")
    resolved = resolve_sources(store, {split: data.sources(split) for split in SPLITS}, None)
    (latest, latest_ref), (first, first_ref) = resolved["sft"]
    assert latest.source == "store://demo/extra@3" and latest_ref.version == 3
    assert (first.source, first.max_rows, first_ref.version) == ("store://demo/extra@1", 5, 1)
    assert resolved["eval"] == [(DataSource(source="builtin://reverse/eval"), None)] and "preference" not in resolved
    pinned = resolve_sources(store, {"sft": data.sources("sft")}, "demo/extra@2")  # the version that started it
    assert [item.source for item, _ in pinned["sft"]] == ["store://demo/extra@2", "store://demo/extra@1"]


def test_a_dataset_with_no_versions_says_how_to_register_one(store):
    with pytest.raises(SourceError, match="alignflow data add demo/none"):
        resolve_sources(store, {"sft": [DataSource(source="store://demo/none@latest")]}, None)


def test_a_listing_is_by_content_not_by_timestamp(tmp_path):
    (tmp_path / "a.jsonl").write_text("x\n")
    before = fingerprint(source_listing(str(tmp_path)))
    (tmp_path / "a.jsonl").touch()
    assert fingerprint(source_listing(str(tmp_path))) == before
    (tmp_path / "a.jsonl").write_text("y\n")
    assert fingerprint(source_listing(str(tmp_path))) != before


def test_a_burst_of_files_is_read_once_it_has_settled(tmp_path):
    def land():
        for i in range(5):
            (tmp_path / f"part-{i}.jsonl").write_text(f"{i}\n")
            time.sleep(0.2)

    (tmp_path / "part-0.jsonl").write_text("0\n")
    writer = threading.Thread(target=land)
    writer.start()
    listing = settled_listing(str(tmp_path), settle_seconds=0.5)
    writer.join()
    assert sorted(listing) == [f"part-{i}.jsonl" for i in range(5)]
