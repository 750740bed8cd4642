"""Checkpoints in the store, without a trainer: what is kept, what a new machine gets back, what is dropped."""

from __future__ import annotations

import json
import logging

from storage import open_store
from tasks.checkpoints import StoredCheckpoints, last_complete_checkpoint


def fake_checkpoint(root, step: int, complete: bool = True):
    folder = root / "checkpoints" / f"checkpoint-{step}"
    (folder / "global_step").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * step)
    (folder / "global_step" / "optim.pt").write_bytes(b"o" * step)
    if complete:  # the Trainer writes trainer_state.json last
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_only_the_newest_checkpoint_is_kept_and_another_machine_restores_it(tmp_path):
    store = open_store(str(tmp_path / "store"), tmp_path / "cache")
    logger = logging.getLogger("test.checkpoints")
    first = StoredCheckpoints(store, "train_sft-abc", logger)
    for step in (10, 20):
        first.saved(fake_checkpoint(tmp_path / "a", step))
    first.wait()
    assert first.latest()["step"] == 20
    assert {k.split("/")[2] for k in store.backend.list("checkpoints/train_sft-abc/")} == {"20", "latest.json"}
    assert not (tmp_path / "a" / "uploading").exists() or not any((tmp_path / "a" / "uploading").iterdir())

    other = tmp_path / "b" / "checkpoints"  # another machine: nothing local
    assert StoredCheckpoints(store, "train_sft-abc", logger).restore(other) == 20
    restored = last_complete_checkpoint(other)
    assert restored.endswith("checkpoint-20")
    assert (other / "checkpoint-20" / "global_step" / "optim.pt").read_bytes() == b"o" * 20

    fake_checkpoint(tmp_path / "c", 30)  # a newer local checkpoint wins over the stored one
    assert StoredCheckpoints(store, "train_sft-abc", logger).restore(tmp_path / "c" / "checkpoints") is None

    first.drop()
    assert store.backend.list("checkpoints/") == []


def test_an_unreadable_stored_checkpoint_costs_the_resume_point_not_the_run(tmp_path, caplog):
    store = open_store(str(tmp_path / "store"), tmp_path / "cache")
    checkpoints = StoredCheckpoints(store, "train_dpo-xyz", logging.getLogger("test.checkpoints"))
    checkpoints.saved(fake_checkpoint(tmp_path / "a", 5))
    checkpoints.wait()
    store.backend.delete("checkpoints/train_dpo-xyz/5/model.safetensors")  # lost in between
    with caplog.at_level(logging.WARNING):
        assert StoredCheckpoints(store, "train_dpo-xyz", logging.getLogger("test.checkpoints")).restore(
            tmp_path / "b" / "checkpoints") is None
    assert "training starts without it" in caplog.text
    assert last_complete_checkpoint(tmp_path / "b" / "checkpoints") is None
