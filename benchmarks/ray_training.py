"""Ray's overhead on one machine: the demo's SFT as the local single-process stage runs it, and as two local
processes (accelerate, DDP), against the same training on a local Ray cluster (a head and one worker node)
with 2 workers, on the same cores. Ray against two local processes is Ray's own share; against one process,
what data parallelism costs on shared cores comes on top.

    .venv/bin/python benchmarks/ray_training.py [--epochs 40]

All runs share this machine's cores, so this measures what Ray costs, not what it gains. Printed per run:
the wall time of the stage's trainer (start to output in the work folder), the time to its first training
step (start-up: processes, the cluster's placement, the process group, model and data through the store),
and the time per optimizer step. Every run's steps see the same rows (1 x 16, or 2 processes or workers
x 8), so per-step times compare the same work. The Ray cluster is started and stopped here,
in a temporary home.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class Steps(logging.Handler):
    """The time of the first and the last progress line, and the step each reports."""

    def __init__(self):
        super().__init__()
        self.first = self.last = None
        self.steps = (0, 0)

    def emit(self, record):
        match = re.search(r"step (\d+)/(\d+)", record.getMessage())
        if match:
            now = time.monotonic()
            if self.first is None:
                self.first, self.first_step = now, int(match.group(1))
            self.last, self.steps = now, (int(match.group(1)), int(match.group(2)))


def job_for(root: Path, epochs: float, batch_size: int, resources: dict) -> tuple[dict, Path]:
    """The demo's SFT settings on its 3000 rows, tokenized as the tokenize stage does."""
    from transformers import AutoTokenizer

    from tasks.builtin import reverse_task
    from tasks.download import fetch_model
    from tasks.sft import SFTStage
    from tasks.tokens import tokenize_file

    model = fetch_model("builtin://tiny-qwen2", root / "model")
    rows = root / "sft.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in reverse_task.splits()["sft"]))
    stage = SFTStage(tuner="full", epochs=epochs, learning_rate=3e-3, batch_size=batch_size, max_length=64,
                     resources=resources, trainer_args={"save_steps": 0.25})
    (root / "tokens").mkdir()
    tokenize_file(AutoTokenizer.from_pretrained(model), rows, root / "tokens" / "tokens.parquet",
                  stage.tokenize_config("fail"), root / "quarantine.jsonl")
    workdir = root / "work"
    workdir.mkdir()
    return {"config": stage.model_dump(), "model_chain": [str(model)], "data": str(root / "tokens" / "tokens.parquet"),
            "output": str(workdir / "output")}, workdir


def timed(name: str, job: dict, workdir: Path, checkpoints) -> dict:
    from tasks import trainer

    steps = Steps()
    logger = logging.getLogger(f"bench.{name}")
    logger.setLevel(logging.INFO)
    logger.addHandler(steps)
    started = time.monotonic()
    metrics = trainer.launch("train_sft", "sft", job, workdir, logger, checkpoints=checkpoints)
    wall = time.monotonic() - started
    per_step = (steps.last - steps.first) / max(steps.steps[0] - steps.first_step, 1)
    startup = steps.first - started - per_step * steps.first_step  # to the first step's start
    return {"run": name, "wall_s": round(wall, 1), "startup_s": round(startup, 1),
            "step_ms": round(1000 * per_step, 1), "steps": metrics["steps"], "final_loss": metrics["final_loss"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=40.0,
                        help="passes over the demo's 3000 rows (default 40: runs of 2 to 4 minutes)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="alignflow-bench-ray-"))
    os.environ.update(ALIGNFLOW_HOME=str(home / "state"), ALIGNFLOW_CACHE=str(home / "cache"))
    from distributed import local
    from storage import open_store
    from tasks.checkpoints import StoredCheckpoints

    logging.basicConfig(level=logging.WARNING)
    results = []
    job, workdir = job_for(home / "local", args.epochs, 16, {})
    results.append(timed("local, 1 process", job, workdir, None))
    job, workdir = job_for(home / "local-2", args.epochs, 8, {"processes": 2})
    results.append(timed("local, 2 processes", job, workdir, None))
    cluster_started = time.monotonic()
    record = local.up(nodes=1)
    cluster_s = time.monotonic() - cluster_started
    try:
        job, workdir = job_for(home / "ray", args.epochs, 8, {"engine": "ray", "workers": 2})
        store = open_store(str(home / "store"), home / "cache")
        model = store.put_dir("bench/model", "model", Path(job["model_chain"][0]))
        data = store.put_dir("bench/tokens", "dataset", home / "ray" / "tokens")
        job["ray"] = {"address": record["address"], "store": store.uri, "credentials_block": None,
                      "checkpoints": "bench-ray", "inputs": {"model_chain": [model.portable()], "data": data.portable(),
                                                             "data_file": "tokens.parquet", "extra": {}}}
        logger = logging.getLogger("bench.checkpoints")
        results.append(timed("ray, 2 workers on 2 nodes", job, workdir, StoredCheckpoints(store, "bench-ray", logger)))
    finally:
        local.down()
    local_run, two_run, ray_run = results
    print(f"{'run':28} {'wall s':>8} {'start-up s':>11} {'ms/step':>8} {'steps':>6} {'final loss':>11}")
    for r in results:
        print(f"{r['run']:28} {r['wall_s']:8.1f} {r['startup_s']:11.1f} {r['step_ms']:8.1f} {r['steps']:6d} "
              f"{r['final_loss']:11.2e}")
    print(f"cluster start (`alignflow ray up --nodes 1`, once per cluster, not per run): {cluster_s:.1f} s")
    for name, base in (("local, 1 process", local_run), ("local, 2 processes", two_run)):
        print(f"Ray / {name}: wall {ray_run['wall_s'] / base['wall_s']:.2f}x, "
              f"per step {ray_run['step_ms'] / base['step_ms']:.2f}x, "
              f"start-up +{ray_run['startup_s'] - base['startup_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
