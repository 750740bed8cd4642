"""alignflow as a service, measured: a warm (all-cached) re-run against a running Prefect server vs
Prefect's temporary API, and the time from a new data file landing to its triggered run starting.

    .venv/bin/python benchmarks/service.py [--scan-interval 15]

Everything runs in a temporary home: a Prefect server and worker (`alignflow server up`), a local S3
(SeaweedFS) holding the watched prefix, the demo pipeline without its vLLM stage. All are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ALIGNFLOW = str(Path(sys.executable).parent / "alignflow")
DEMO = Path(__file__).resolve().parent.parent / "deployments" / "demo.yaml"


def alignflow(*args: str, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    proc = subprocess.run([ALIGNFLOW, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"alignflow {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.monotonic() - started, proc


def warm_reruns(home: Path) -> dict:
    """Cold once, then warm with the temporary API, then warm against a running server."""
    args = ("run", str(DEMO), "--skip", "deploy", "--store", str(home / "store"))
    cold, _ = alignflow(*args)
    ephemeral, _ = alignflow(*args)
    alignflow("server", "up", "--port", "0")
    first_on_server, _ = alignflow(*args)  # the server's database has not seen these tasks yet
    on_server = min(alignflow(*args)[0] for _ in range(3))
    return {"cold": cold, "ephemeral_warm": ephemeral, "server_first": first_on_server, "server_warm": on_server}


def new_data_latency(home: Path, interval: float) -> dict:
    """Deploy a spec that watches an S3 prefix, drop a file there, time until the triggered run starts."""
    from storage import seaweed
    from storage.s3 import make_client

    info = seaweed.up(home / "seaweed")
    os.environ.update(seaweed.env_lines(info, seaweed.credentials(info)))
    alignflow("server", "down")
    alignflow("server", "up", "--port", "0")  # the worker needs the S3 credentials in its environment
    spec = home / "watch.yaml"
    spec.write_text(DEMO.read_text().replace("preference: builtin://reverse/preference",
                                             "preference: store://demo/preference@latest")
                    + f"service: {{watch: {{sources: {{demo/preference: 's3://alignflow/bench/'}}, "
                      f"interval_seconds: {interval}, settle_seconds: 2}}}}\n")
    alignflow("deploy", str(spec), "--set", "stages.deploy=null", "--store", str(home / "store"))
    from tasks.builtin import reverse_task

    rows = reverse_task.splits()["preference"]
    landed = time.time()
    make_client().put_object(Bucket="alignflow", Key="bench/part-0.jsonl",
                             Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    started = wait_triggered_run_start(json.loads((home / "state" / "server" / "state.json").read_text()))
    seaweed.down(home / "seaweed")
    return {"interval": interval, "latency": started - landed}


def wait_triggered_run_start(state: dict, timeout: float = 600) -> float:
    from prefect import get_client
    from prefect.settings import temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings(updates={"api.url": state["server"]["api_url"]}), get_client(sync_client=True) as c:
        dep = c.read_deployment_by_name("post-train/demo:on-new-data")
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        while time.monotonic() < deadline:
            runs = c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
            started = [r.start_time for r in runs if r.start_time]
            if started:
                return min(started).timestamp()
            time.sleep(0.5)
    sys.exit("no triggered run started")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scan-interval", type=float, default=15.0)
    args = parser.parse_args()
    from alignflow.service.server import throwaway_home

    with throwaway_home("alignflow-bench-service-") as home:
        warm = warm_reruns(home)
        trigger = new_data_latency(home, args.scan_interval)
    print(f"{'measure':<52} {'seconds':>8}")
    print(f"{'demo without deploy, cold':<52} {warm['cold']:>8.1f}")
    print(f"{'warm re-run, temporary API (today without a server)':<52} {warm['ephemeral_warm']:>8.1f}")
    print(f"{'warm re-run, running server, first time':<52} {warm['server_first']:>8.1f}")
    print(f"{'warm re-run, running server (best of 3)':<52} {warm['server_warm']:>8.1f}")
    print(f"ratio server / temporary API: {warm['server_warm'] / warm['ephemeral_warm']:.2f}   (target: under 3 s)")
    print(f"new file -> triggered run started: {trigger['latency']:.1f} s with a {trigger['interval']:.0f} s scan "
          f"interval   (target: under {trigger['interval'] + 15:.0f} s)")


if __name__ == "__main__":
    main()
