"""A trainer killed mid-run (out of memory, a pre-empted node) is reported as transient, and the retry
resumes from its newest checkpoint instead of step 0."""

from __future__ import annotations

import json
import logging
import re
import subprocess

import pytest

from alignflow.errors import ConfigError, TransientError
from tasks import trainer
from tasks.builtin import reverse_task
from tasks.download import fetch_model
from tasks.sft import SFTStage

pytestmark = pytest.mark.slow


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


def test_killed_trainer_is_transient_and_the_retry_resumes(tmp_path):
    job, workdir = sft_job(tmp_path, trainer_args={"save_steps": 0.1, "logging_steps": 0.05})
    logger = logging.getLogger("test.resume")
    killer = KillAtStep(str(workdir / "job.json"), at=50)
    logger.addHandler(killer)
    logger.setLevel(logging.INFO)
    with pytest.raises(TransientError, match="resumes from the last checkpoint"):
        trainer.launch("train_sft", "sft", job, workdir, logger)
    assert killer.killed_at is not None
    logger.removeHandler(killer)

    metrics = trainer.launch("train_sft", "sft", job, workdir, logger)
    assert 0 < metrics["resumed_from_step"] <= killer.killed_at
    assert metrics["steps"] == 100  # 800 rows / 16 per step * 2 epochs: the run finished where it should
    assert (workdir / "output" / "model.safetensors").exists()


def test_bad_trainer_argument_is_a_config_error(tmp_path):
    job, workdir = sft_job(tmp_path, trainer_args={"no_such_argument": 1})
    with pytest.raises(ConfigError, match="no_such_argument"):
        trainer.launch("train_sft", "sft", job, workdir)
