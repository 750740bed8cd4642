"""The trainer child for `resources.engine: ray`: `python -m distributed.driver JOB.json`.

It is a Ray driver: it joins the cluster, runs Ray Train's `TorchTrainer` with `workers` workers (spread over
the nodes, gloo on CPUs, NCCL on GPUs) each running distributed/worker.py, and leaves the same files the
local trainer child leaves: failure.json in the work folder when it failed; on success the parent fetches
the output, result and history rank 0 put in the store (worker.receive). The driver holds no store
credentials; the parent side (tasks/trainer.py) is one for both engines. Ray forwards the workers'
output here, and from here it reaches the parent: progress lines, log lines.

Failures: a stage's own error on a worker keeps its class (a ConfigError is not retried); anything else Ray
reports (a node lost, a worker killed, a cluster that does not answer) is a TransientError: the Prefect retry
resumes from the newest checkpoint in the store, on the nodes there are then.

Ray Train's own restarts are off (`max_failures=0`): retries are Prefect's, so that a retry is visible in the
run, counted and bounded like every other stage's.

Stopping: a cancelled or interrupted run sends this process SIGTERM, which it takes as Ray Train's Ctrl-C:
the controller aborts the workers and stops its helpers (the detached placement-group cleaner among them),
then the job ends. Killed outright instead, the driver's job still ends and takes the controller and the
workers with it, but Ray Train's cleaner only notices where the cluster runs Ray's dashboard (its State API).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from alignflow.errors import AlignflowError, TransientError
from alignflow.processes import stop_with_owner

# what the workers' environment takes from this one (never a credential: the nodes hold their own; nothing
# about devices either: a worker's node may have GPUs where this machine has none)
PASSED_ON = ("TOKENIZERS_PARALLELISM", "GOMP_SPINCOUNT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONHASHSEED")


def main(job_path: str) -> int:
    from tasks.child import describe_failure

    job = json.loads(Path(job_path).read_text())
    workdir = Path(job["workdir"])
    try:
        train(job)
    except Exception as exc:  # noqa: BLE001 (reported to the parent, which decides whether to retry)
        (workdir / "failure.json").write_text(json.dumps(describe_failure(exc)))
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def train(job: dict) -> None:
    """Run the workers on the cluster; rank 0 hands the output over through the store."""
    import ray

    resources, address = job["config"]["resources"], job["ray"]["address"]
    try:
        ray.init(address=address, log_to_driver=True, logging_level="WARNING", configure_logging=True,
                 runtime_env={"env_vars": {k: os.environ[k] for k in PASSED_ON if k in os.environ}})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise TransientError(f"cannot reach the Ray cluster at {address} ({exc}). Fix: start it (`alignflow ray "
                             "up` on this machine), or set resources.address / RAY_ADDRESS to a running one") from None
    # after ray.init, which sets its own (an exit): SIGTERM is Ray Train's Ctrl-C, a graceful abort
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    stop_with_owner()  # the stage killed outright: the same abort
    try:
        workers = workers_that_fit(resources)
        fit(job, workers)
    finally:
        ray.shutdown()


def workers_that_fit(resources: dict) -> int:
    """`workers`, or fewer when the live nodes cannot hold that many (a node was lost): as many as fit, one
    warning. None fitting is a TransientError (the cluster may grow back before the retry)."""
    import ray

    from tasks.child import emit

    cpus, gpus, asked = resources["cpus_per_worker"], resources["gpus_per_worker"], resources["workers"]
    fits = 0
    for node in ray.nodes():
        if node["Alive"]:
            have = node["Resources"]
            per_node = int(have.get("CPU", 0) // cpus)
            fits += min(per_node, int(have.get("GPU", 0) // gpus)) if gpus else per_node
    if fits == 0:
        raise TransientError(f"no node of the Ray cluster has {cpus} CPUs and {gpus} GPUs for a worker "
                             "(resources.cpus_per_worker, gpus_per_worker); `alignflow ray status` lists the nodes")
    if fits < asked:
        emit({"note": f"{asked} workers asked, the cluster has room for {fits} now: training on {fits}"})
    return min(asked, fits)


def fit(job: dict, workers: int) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.exceptions import TrainingFailedError, WorkerGroupError

    from distributed.worker import train_loop

    resources = job["config"]["resources"]
    asked = resources["workers"]
    if workers < asked and asked % workers == 0:  # the same rows per optimizer step on fewer workers
        args = job["config"].setdefault("trainer_args", {})
        args["gradient_accumulation_steps"] = args.get("gradient_accumulation_steps", 1) * asked // workers
    gpus = resources["gpus_per_worker"]
    trainer = TorchTrainer(
        train_loop, train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, placement_strategy="SPREAD",
                                     resources_per_worker={"CPU": resources["cpus_per_worker"],
                                                           **({"GPU": gpus} if gpus else {})}),
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        run_config=RunConfig(name=f"alignflow-{job['stage']}", storage_path=str(Path(job["workdir"]) / "ray"),
                             failure_config=FailureConfig(max_failures=0)))
    try:
        trainer.fit()
    except WorkerGroupError as exc:
        raise stage_error(exc.worker_failures) from None
    except TrainingFailedError as exc:
        raise TransientError(f"Ray Train failed ({exc}); a retry resumes from the checkpoint in the store") from None


def stage_error(failures: dict) -> AlignflowError:
    """A worker lost (its failure is Ray's, not one the stage raised) makes the others fail too, in their
    collectives: that is a TransientError. Otherwise the stage's own error (worker.FAILURE in its message)."""
    from distributed.worker import FAILURE

    lost = {rank: exc for rank, exc in failures.items() if FAILURE not in str(exc)}
    if lost:
        rank, exc = sorted(lost.items())[0]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return TransientError(f"Ray worker {rank} was lost ({type(exc).__name__}: {first[:300]}): its node died or it "
                              "was killed. A retry resumes from the checkpoint in the store on the nodes that remain")
    from tasks.child import failure_error

    text = str(failures[min(failures)])
    return failure_error(json.loads(text[text.index(FAILURE) + len(FAILURE):].splitlines()[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
