"""What training on Ray does to the model: the demo's SFT trained by the local single-process stage (16 rows a
step) and by 2 Ray workers of 8 rows each on a local cluster (a head and one worker node), each run through
the whole pipeline (`alignflow run`: evaluation through the vLLM server, the demo's gate, the deployment),
and their scores on the demo's eval split side by side.

    .venv/bin/python benchmarks/ray_quality.py

A few minutes; the cluster, the store and the servers live in a temporary home and are stopped here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPEC = """
name: {name}
model: builtin://tiny-qwen2
data: {{sft: builtin://reverse/sft, eval: builtin://reverse/eval}}
stages:
  sft: {{tuner: full, epochs: 3, learning_rate: 3.0e-3, batch_size: {batch}, max_length: 64, resources: {resources}}}
  evaluate: {{metric: exact_match, max_tokens: 16, batch_size: 50}}
  gate: {{min_score: 0.6, min_gain_over_base: 0.4}}
  deploy: {{host: 127.0.0.1, port: 0, max_model_len: 256, load_test: null}}
store: {store}
"""


def alignflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignflow.cli", *args], capture_output=True, text=True)


def run(home: Path, name: str, batch: int, resources: dict) -> dict:
    spec = home / f"{name}.yaml"
    spec.write_text(SPEC.format(name=name, batch=batch, resources=json.dumps(resources), store=home / "store"))
    started = time.monotonic()
    try:
        done = alignflow("run", str(spec), "--json", str(home / f"{name}.json"))
    finally:
        alignflow("serve", "stop", name)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    scores = json.loads((home / f"{name}.json").read_text())["scores"]
    return {"run": name, "wall_s": time.monotonic() - started, "candidate": scores["candidate"],
            "base": scores["base"]}


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="alignflow-bench-ray-quality-"))
    os.environ.update(ALIGNFLOW_HOME=str(home / "state"), ALIGNFLOW_CACHE=str(home / "cache"))
    from distributed import local

    results = [run(home, "single-process", 16, {})]
    record = local.up(nodes=1)
    try:
        results.append(run(home, "ray-2-workers", 8, {"engine": "ray", "workers": 2, "address": record["address"]}))
    finally:
        local.down()
    print(f"{'run':16} {'exact match':>12} {'base':>6} {'pipeline wall s':>16}")
    for r in results:
        print(f"{r['run']:16} {r['candidate']:12.3f} {r['base']:6.3f} {r['wall_s']:16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
