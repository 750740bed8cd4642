"""A trainer killed mid-run (out of memory, a pre-empted node) is reported as transient, and the retry,
on this machine or on another with an empty cache, resumes from the newest checkpoint instead of step 0."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess

import pytest

from alignflow.errors import TransientError
from storage import open_store
from tasks import trainer
from tasks.builtin import reverse_task
from tasks.checkpoints import StoredCheckpoints
from tasks.download import fetch_model
from tasks.sft import SFTStage

pytestmark = pytest.mark.slow


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


class KillAtStep(logging.Handler):
    """Kills the trainer processes once a progress line reports `step >= at`."""

    def __init__(self, job_path: str, at: int):
        super().__init__()
        self.job_path, self.at, self.killed_at = job_path, at, None

    def emit(self, record):
        match = re.search(r"step (\d+)/", record.getMessage())
        if match and self.killed_at is None and int(match.group(1)) >= self.at:
            self.killed_at = int(match.group(1))
            subprocess.run(["pkill", "-9", "-f", self.job_path])


def sft_job(tmp_path, **config) -> tuple[dict, object]:
    from transformers import AutoTokenizer

    from tasks.tokens import tokenize_file

    model = fetch_model("builtin://tiny-qwen2", tmp_path / "model")
    rows = tmp_path / "sft" / "data.jsonl"
    rows.parent.mkdir()
    rows.write_text("".join(json.dumps(r) + "\n" for r in reverse_task.splits()["sft"][:800]))
    stage = SFTStage(tuner="full", epochs=2, learning_rate=3e-3, batch_size=16, max_length=64, **config)
    data = tmp_path / "tokens.parquet"  # what the tokenize stage gives train_sft
    tokenize_file(AutoTokenizer.from_pretrained(model), rows, data, stage.tokenize_config("fail"),
                  tmp_path / "quarantine.jsonl")
    workdir = tmp_path / "work"
    workdir.mkdir()
    return {"config": stage.model_dump(), "model_chain": [str(model)], "data": str(data),
            "output": str(workdir / "output")}, workdir


def test_killed_trainer_resumes_on_another_machine_from_the_stored_checkpoint(tmp_path):
    """SIGKILL mid-run, then the whole local work folder gone (a retry on another machine): the retry
    restores the newest stored checkpoint, ends at the same optimizer step as an uninterrupted run, with
    the same final loss; the store keeps only the newest checkpoint, and none once told to drop them."""
    job, workdir = sft_job(tmp_path, trainer_args={"save_steps": 0.1, "logging_steps": 0.05})
    store = open_store(str(tmp_path / "store"), tmp_path / "cache")
    logger, lines = logging.getLogger("test.resume"), Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)

    uninterrupted = trainer.launch("train_sft", "sft", job, tmp_path / "work-uninterrupted", logger)

    killer = KillAtStep(str(workdir / "job.json"), at=50)
    logger.addHandler(killer)
    with pytest.raises(TransientError, match="resumes from the last checkpoint"):
        trainer.launch("train_sft", "sft", job, workdir, logger, checkpoints=StoredCheckpoints(store, "sft-k", logger))
    logger.removeHandler(killer)
    stored = StoredCheckpoints(store, "sft-k", logger).latest()
    assert killer.killed_at and 0 < stored["step"] <= killer.killed_at
    kept = {key.split("/")[2] for key in store.backend.list("checkpoints/sft-k/")}
    assert kept == {str(stored["step"]), "latest.json"}  # the newest complete checkpoint only

    shutil.rmtree(workdir)  # another machine: nothing local survives
    workdir.mkdir()
    lines.lines.clear()
    checkpoints = StoredCheckpoints(store, "sft-k", logger)
    resumed = trainer.launch("train_sft", "sft", job, workdir, logger, checkpoints=checkpoints)
    assert f"restored the checkpoint at step {stored['step']} from" in " ".join(lines.lines)
    assert f"train_sft: resuming from the checkpoint at step {stored['step']}" in lines.lines
    assert resumed["resumed_from_step"] == stored["step"]
    assert resumed["steps"] == uninterrupted["steps"] == 100  # 800 rows / 16 per step * 2 epochs
    assert resumed["final_loss"] == pytest.approx(uninterrupted["final_loss"], abs=0.02)
    assert (workdir / "output" / "model.safetensors").exists()
    checkpoints.drop()
    assert store.backend.list("checkpoints/") == []



class RaiseAtStep(logging.Handler):
    """Raises KeyboardInterrupt in the parent's reading loop once a step is reported: Ctrl-C mid-training."""

    def emit(self, record):
        if re.search(r"step \d+/", record.getMessage()):
            raise KeyboardInterrupt


def trainers_running(job_path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", str(job_path)], capture_output=True, text=True).stdout
    return found.split()


def test_an_interrupted_parent_leaves_no_trainer_behind(tmp_path):
    """Ctrl-C in the stage's thread stops the launcher and the trainer at once; an interrupt the thread
    never sees (the main thread's, then `stop_owned` on the way out, as `alignflow` does) stops them too."""
    import threading

    from alignflow.processes import stop_owned

    job, workdir = sft_job(tmp_path, trainer_args={"logging_steps": 1})
    job["config"]["epochs"] = 50  # minutes of work left when it is cut
    logger = logging.getLogger("test.interrupt")
    logger.setLevel(logging.INFO)
    handler = RaiseAtStep()
    logger.addHandler(handler)
    with pytest.raises(KeyboardInterrupt):
        trainer.launch("train_sft", "sft", job, workdir, logger)
    logger.removeHandler(handler)
    assert trainers_running(workdir / "job.json") == []

    outcome, other = [], tmp_path / "work-thread"
    thread = threading.Thread(target=lambda: outcome.append(
        pytest.raises(Exception, trainer.launch, "train_sft", "sft", job, other, logger)), daemon=True)
    thread.start()
    while not trainers_running(other / "job.json") or not (other / "trainer.log").exists():
        thread.join(0.5)
    stop_owned()
    thread.join(60)
    assert not thread.is_alive() and outcome and trainers_running(other / "job.json") == []
