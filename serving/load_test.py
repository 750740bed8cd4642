"""`evalscope perf` against a live endpoint, at several concurrency levels: what deploy measures once a
new server takes traffic (throughput, time to first token, latency percentiles), stored with the
deployment record and shown in the dashboard.

It runs in a child process (EvalScope's import reconfigures logging); the api key reaches it by
environment, never argv or a file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from alignflow.processes import run_logged, tail
from alignflow.secrets import child_env

KEY_VARIABLE = "ALIGNFLOW_PERF_API_KEY"


class LoadTest(BaseModel):
    """A short load test of the live endpoint after each deploy."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16], description="requests in flight, one run "
                                                                                  "per level")
    rounds: int = Field(2, ge=1, le=1000, description="requests per level = concurrency x rounds")
    max_tokens: int = Field(32, ge=1, le=65536, description="tokens per answer (exactly: min = max)")


def measure(endpoint: str, served_name: str, prompts: list[str], config: LoadTest, key: str | None,
            workdir: Path, log_path: Path) -> list[dict]:
    """One row per concurrency level: requests, successes, output tokens/s, requests/s, TTFT and latency
    percentiles. Raises RuntimeError with the log's tail when evalscope perf fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prompts.txt").write_text("\n".join(p.replace("\n", " ") for p in prompts) + "\n")
    job = {"url": f"{endpoint}/chat/completions", "model": served_name, "prompts": str(workdir / "prompts.txt"),
           "concurrency": config.concurrency, "number": [c * config.rounds for c in config.concurrency],
           "max_tokens": config.max_tokens, "outputs": str(workdir / "perf")}
    code = run_logged([sys.executable, "-m", "serving.load_test", json.dumps(job)], log_path, perf_env(key))
    if code != 0:
        raise RuntimeError(f"evalscope perf failed (exit code {code}); {log_path} ends:\n{tail(log_path, 15)}")
    return rows(Path(job["outputs"]))


def perf_env(key: str | None) -> dict:
    """`evalscope perf`'s environment: the endpoint's api key (as KEY_VARIABLE) and no other credential."""
    return child_env(**{KEY_VARIABLE: key})


def measure_live(record, config: LoadTest, prompts: list[str], key: str | None, log_path: Path,
                 logger) -> list[dict]:
    """The load test of a server deploy just made live (`record`, a ServerRecord); a failure is logged and
    recorded, never raised: the new version is serving already. evalscope's output goes to `log_path`."""
    import tempfile

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=log_path.parent, prefix=".load-test-") as tmp:
        try:
            results = measure(record.endpoint, record.served_name, prompts, config, key, Path(tmp), log_path)
        except Exception as exc:  # noqa: BLE001 (a measurement)
            logger.warning("deploy: the load test failed: %s", exc)
            return [{"error": str(exc)[-2000:]}]
    for row in results:
        logger.info("deploy: load test at concurrency %d: %.1f output tokens/s, %.2f requests/s, TTFT p50 %s ms, "
                    "latency p50 %s s, p99 %s s (%d/%d ok)", row["concurrency"], row["output_tok_s"], row["req_s"],
                    row["ttft_ms_p50"], row["latency_s_p50"], row["latency_s_p99"], row["succeeded"], row["requests"])
    return results


def rows(outputs: Path) -> list[dict]:
    """evalscope perf's files (`parallel_P_number_N/benchmark_summary.json` and `benchmark_percentile.json`)
    as one flat row per concurrency level."""
    out = []
    for folder in outputs.rglob("parallel_*_number_*"):
        summary = json.loads((folder / "benchmark_summary.json").read_text())
        table = json.loads((folder / "benchmark_percentile.json").read_text())
        percentiles = {row["Percentiles"]: row for row in table}
        out.append({"concurrency": int(summary["Concurrency"]), "requests": int(summary["Total Requests"]),
                    "succeeded": int(summary["Success Requests"]),
                    "output_tok_s": round(summary["Output Throughput (tok/s)"], 2),
                    "req_s": round(summary["Req Throughput (req/s)"], 3),
                    "ttft_ms_p50": percentile(percentiles, "50%", "TTFT (ms)", 1),
                    "latency_s_p50": percentile(percentiles, "50%", "Latency (s)", 3),
                    "latency_s_p99": percentile(percentiles, "99%", "Latency (s)", 3)})
    return sorted(out, key=lambda r: r["concurrency"])


def percentile(percentiles: dict, p: str, column: str, digits: int) -> float | None:
    value = percentiles.get(p, {}).get(column)
    return None if value is None else round(value, digits)


def child(job: dict) -> None:
    from evalscope.perf.main import run_perf_benchmark

    run_perf_benchmark({
        "url": job["url"], "api": "openai", "model": job["model"], "dataset": "line_by_line",
        "dataset_path": job["prompts"], "parallel": job["concurrency"], "number": job["number"],
        "max_tokens": job["max_tokens"], "min_tokens": job["max_tokens"], "stream": True,
        "api_key": os.environ.get(KEY_VARIABLE), "outputs_dir": job["outputs"], "no_timestamp": True, "seed": 42})


if __name__ == "__main__":
    child(json.loads(sys.argv[1]))
