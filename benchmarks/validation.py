"""What checking everything up front costs: the demo spec's validation, and how fast a bad spec is refused.

    .venv/bin/python benchmarks/validation.py [--repeat 5]

Measured side by side in one run:
  - in-process, after imports: the demo spec's own checks (`load_spec`), and the same plus every check of what
    it names (`load_spec(before_work=True)`: model, data, store, serve env); the target is under 1 s;
  - whole commands, each a fresh process: `alignflow --help` (the floor: Python and the CLI starting),
    `alignflow plan` of the demo on an empty store (every check, then the walk), and `alignflow run` of a spec
    with four problems (a missing data file, a missing model folder, a bad trainer_args key, an unreachable
    S3 store) to its exit 2; the target for that last one is under 3 s.
Prints min / median / max of each and the ratios to the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALIGNFLOW = str(Path(sys.executable).parent / "alignflow")
FOUR = """name: four
model: {tmp}/no-such-model
data: {{sft: {tmp}/no-such-data.jsonl}}
stages: {{sft: {{trainer_args: {{max_step: 10}}}}}}
store: s3://runs/four
"""


def in_process(repeat: int) -> dict[str, list[float]]:
    sys.path.insert(0, str(ROOT))
    from flows.spec import load_spec

    demo = ROOT / "deployments" / "demo.yaml"
    load_spec(demo, before_work=True)  # imports and first reads out of the way
    times: dict[str, list[float]] = {"spec checks": [], "spec + before-work checks": []}
    for _ in range(repeat):
        for label, before_work in (("spec checks", False), ("spec + before-work checks", True)):
            started = time.perf_counter()
            load_spec(demo, before_work=before_work)
            times[label].append(time.perf_counter() - started)
    return times


def command(args: list[str], env: dict, expect: int) -> float:
    started = time.perf_counter()
    proc = subprocess.run([ALIGNFLOW, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - started
    if proc.returncode != expect:
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}, not {expect}:\n{proc.stdout}{proc.stderr}")
    return seconds


def commands(repeat: int, tmp: Path) -> dict[str, list[float]]:
    from alignflow.processes import free_port

    spec = tmp / "four.yaml"
    spec.write_text(FOUR.format(tmp=tmp))
    env = dict(os.environ, ALIGNFLOW_HOME=str(tmp / "home"), ALIGNFLOW_CACHE=str(tmp / "cache"),
               AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
               PREFECT_HOME=str(tmp / "prefect"))
    runs = {"alignflow --help": (["--help"], 0),
            "plan of the demo (empty store)": (["plan", "deployments/demo.yaml", "--store", str(tmp / "store")], 0),
            "run with four problems, to exit 2": (["run", str(spec)], 2)}
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeat):  # interleaved: a machine that slows down slows every command alike
        for label, (args, expect) in runs.items():
            times[label].append(command(args, env, expect))
    return times


def line(label: str, values: list[float], floor: float | None = None, unit: float = 1.0, suffix: str = "s") -> str:
    ratio = f"  {statistics.median(values) / floor:5.2f}x the floor" if floor else ""
    shown = " / ".join(f"{v * unit:.3f}" for v in (min(values), statistics.median(values), max(values)))
    return f"  {label:<36} {shown} {suffix}{ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    inner = in_process(max(args.repeat, 20))
    with tempfile.TemporaryDirectory(prefix="alignflow-validation-") as tmp:
        outer = commands(args.repeat, Path(tmp))
    print("in process, after imports (min / median / max):")
    for label, values in inner.items():
        print(line(label, values, unit=1000, suffix="ms"))
    floor = statistics.median(outer["alignflow --help"])
    print("whole commands, fresh processes (min / median / max):")
    for label, values in outer.items():
        print(line(label, values, floor if label != "alignflow --help" else None))


if __name__ == "__main__":
    main()
