"""Cold vs warm demo pipeline, side by side in one run.

    .venv/bin/python benchmarks/pipeline_cache.py        (or `make bench`)

Cold: a fresh store, download cache, Prefect home and serve state. Warm: the same command again at once,
which should be all cache hits plus an idempotent deploy. Prints each stage's seconds and the ratio.
The server it starts is stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALIGNFLOW = str(Path(sys.executable).parent / "alignflow")


def run_demo(home: Path, label: str) -> tuple[float, dict]:
    summary = home / f"{label}.json"
    started = time.monotonic()
    proc = subprocess.run([ALIGNFLOW, "demo", "--store", str(home / "store"), "--json", str(summary)],
                          capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{label} run failed:\n{proc.stderr[-3000:]}")
    return seconds, json.loads(summary.read_text())


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="alignflow-bench-") as tmp:
        home = Path(tmp)
        os.environ.update(ALIGNFLOW_CACHE=str(home / "cache"), ALIGNFLOW_HOME=str(home / "state"),
                          PREFECT_HOME=str(home / "prefect"))
        try:
            cold_s, cold = run_demo(home, "cold")
            warm_s, warm = run_demo(home, "warm")
        finally:
            subprocess.run([ALIGNFLOW, "serve", "stop", "--all"], capture_output=True)
    warm_rows = {r["stage"]: r for r in warm["steps"]}
    print(f"{'stage':<28} {'cold s':>8} {'warm s':>8}  warm status")
    for row in cold["steps"]:
        w = warm_rows[row["stage"]]
        print(f"{row['stage']:<28} {row['seconds']:>8.1f} {w['seconds']:>8.1f}  {w['status']}")
    print(f"{'whole command (wall)':<28} {cold_s:>8.1f} {warm_s:>8.1f}")
    print(f"warm/cold ratio: {warm_s / cold_s:.3f}   eval: base {cold['scores']['base']:.3f} -> "
          f"candidate {cold['scores']['candidate']:.3f}")


if __name__ == "__main__":
    main()
