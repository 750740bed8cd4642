"""Answers from a model on Ray workers: `engine: ray` of the `sample` and `judge` stages.

The prompts are cut into batches of `batch_size` as the local engine cuts them, and batch i draws with seed
`seed + i`; each worker takes a contiguous run of batches and the answers are joined in batch order. A
batch's answers therefore depend on the batch alone, not on how many workers there were or which took it:
the artifact's digest is the same with 1 worker or 8.

As for training, the stage runs a driver child (`python -m distributed.fanout JOB.json`, in its own process
group: a cancelled run stops it and Ray ends its tasks), the workers fetch the model from the store on their
nodes (no shared filesystem), and the driver holds no store credentials. Answers come back through Ray.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from alignflow.errors import TransientError
from alignflow.processes import stop_with_owner


def answer(store, credentials_block: str | None, chain: list, texts: list[str], settings: dict, placement,
           workdir: Path, logger) -> dict:
    """{"completions": [[k answers] per text], "tokens", "seconds", "engine": "ray"}; `chain`: the model's
    artifacts (tasks.models.chain_refs); `settings`: hf_generate's (max_tokens, batch_size, k, batch_seed,
    sampling); `placement`: RayWorkers."""
    from alignflow.processes import owned_child, tail
    from alignflow.secrets import child_env
    from distributed.local import cluster_address

    address = cluster_address(placement.address, "address")
    job = {"address": address, "store": store.uri, "credentials_block": credentials_block,
           "chain": [r.portable() for r in chain], "texts": texts, "settings": settings,
           "workers": placement.workers, "cpus": placement.cpus_per_worker, "gpus": placement.gpus_per_worker}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "fanout.json").write_text(json.dumps(job))
    (workdir / "answers.json").unlink(missing_ok=True)
    log = workdir / "fanout.log"
    logger.info("%d prompts answered on %d Ray workers at %s; their output goes to %s", len(texts),
                placement.workers, address, log)
    env = child_env(TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0", RAY_COLOR_PREFIX="0")
    with open(log, "w") as out, owned_child([sys.executable, "-m", "distributed.fanout", str(workdir / "fanout.json")],
                                            stdout=out, stderr=subprocess.STDOUT, env=env) as proc:
        code = proc.wait()
    if code != 0 or not (workdir / "answers.json").exists():
        raise TransientError(f"answering on the Ray cluster at {address} failed (exit code {code}); a retry starts "
                             f"it again. Last lines of {log}:\n{tail(log)}")
    return json.loads((workdir / "answers.json").read_text())


def shards(batches: int, workers: int) -> list[range]:
    """Contiguous runs of batch indices, one per worker (fewer when there are fewer batches).

    >>> shards(5, 2)
    [range(0, 3), range(3, 5)]
    """
    workers = max(1, min(workers, batches))
    size, extra = divmod(batches, workers)
    out, start = [], 0
    for w in range(workers):
        end = start + size + (1 if w < extra else 0)
        out.append(range(start, end))
        start = end
    return out


def answer_shard(job: dict, first: int, texts: list[str]) -> dict:
    """On a Ray worker: the model from the store (adapters merged), the answers to `texts`, which begin at
    batch `first`."""
    import tempfile

    from storage import ArtifactRef, open_store
    from tasks.generate import hf_generate
    from tasks.models import materialize

    store = open_store(job["store"], None, job["credentials_block"])
    chain = [store.get_dir(ArtifactRef(**ref)) for ref in job["chain"]]
    settings = dict(job["settings"])
    if settings.get("batch_seed") is not None:  # sampling; greedy answers need no seed
        settings["batch_seed"] += first
    with tempfile.TemporaryDirectory(prefix="alignflow-fanout-") as scratch:
        folder = materialize(chain, Path(scratch) / "model")
        return hf_generate(folder, texts, **settings)


def main(job_path: str) -> int:
    import time

    import ray

    job = json.loads(Path(job_path).read_text())
    started, size = time.monotonic(), job["settings"]["batch_size"]
    batches = (len(job["texts"]) + size - 1) // size
    ray.init(address=job["address"], log_to_driver=True, logging_level="WARNING")
    stop_with_owner()  # the stage killed outright: exit, and Ray ends the tasks
    try:
        task = ray.remote(num_cpus=job["cpus"], num_gpus=job["gpus"], max_retries=0)(answer_shard)
        runs = shards(batches, job["workers"])
        pending = [task.options(scheduling_strategy="SPREAD").remote(
            job, run.start, job["texts"][run.start * size:run.stop * size]) for run in runs]
        parts = ray.get(pending)
    finally:
        ray.shutdown()
    completions = [answers for part in parts for answers in part["completions"]]  # in batch order
    result = {"completions": completions, "tokens": sum(p["tokens"] for p in parts),
              "seconds": time.monotonic() - started, "engine": "ray", "workers": len(runs)}
    Path(job_path).with_name("answers.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
