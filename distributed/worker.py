"""What each Ray Train worker runs (`train_loop`): the stage's own recipe, as the local trainer child runs it.

No shared filesystem is assumed: each worker materializes the model chain and the data from the store into
its node's cache, restores the newest stored checkpoint into its own folder, and, at every save, puts its
part of the checkpoint (rank 0's weights and optimizer, each rank's RNG state or ZeRO shard) into the store.
After a barrier rank 0 makes that checkpoint the newest. When training is done rank 0 uploads the output's
files (content-addressed, as a published artifact's) and `output.json` beside the checkpoints: the stage
publishes that.

    <checkpoints prefix>/output.json    {"files": {relpath: {sha256, size}}, "result": metrics, "history": [...]}
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

FAILURE = "@@alignflow-failure "  # begins the message of a worker's error: the driver reads its class back


class WorkerFailure(RuntimeError):
    """The stage's own error on a worker, described (tasks.child.describe_failure) for the driver."""


def train_loop(config: dict) -> None:
    """Ray Train's `train_loop_per_worker`: one worker's share of the stage."""
    import ray
    from ray import train

    from tasks.child import describe_failure, emit, run_stage

    job, rank = config["job"], train.get_context().get_world_rank()
    emit({"worker": rank, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()})
    try:
        local, store = materialize(job, rank)
        metrics = run_stage(local)
        if rank == 0:
            hand_over(store, job["ray"]["checkpoints"], local, metrics)
        shutil.rmtree(local["workdir"], ignore_errors=True)
    except Exception as exc:
        raise WorkerFailure(FAILURE + json.dumps(describe_failure(exc))) from exc


def materialize(job: dict, rank: int) -> tuple[dict, object]:
    """The job with local folders on this node: the inputs from the store, a work folder of this rank's own
    with the newest stored checkpoint restored into it."""
    from storage import ArtifactRef, open_store
    from storage.store import default_cache_dir
    from tasks.checkpoints import StoredCheckpoints

    ray = job["ray"]
    store = open_store(ray["store"], None, ray.get("credentials_block"))
    workdir = default_cache_dir() / "ray-work" / ray["checkpoints"] / f"rank-{rank}"
    workdir.mkdir(parents=True, exist_ok=True)

    def get(ref: dict) -> str:
        return str(store.get_dir(ArtifactRef(**ref)))

    inputs = ray["inputs"]
    local = dict(job, workdir=str(workdir), output=str(workdir / "output"),
                 model_chain=[get(ref) for ref in inputs["model_chain"]],
                 data=str(Path(get(inputs["data"])) / inputs["data_file"]),
                 **{name: get(ref) for name, ref in inputs["extra"].items()})
    StoredCheckpoints(store, ray["checkpoints"], logging.getLogger("alignflow.ray")).restore(workdir / "checkpoints")
    return local, store


def hand_over(store, prefix: str, job: dict, metrics: dict) -> None:
    """Rank 0: the output's files into the store, and `output.json` naming them, for the stage to publish."""
    from tasks.checkpoints import PREFIX

    history = Path(job["workdir"]) / "history.json"
    record = {"files": store.upload_tree(Path(job["output"])), "result": metrics,
              "history": json.loads(history.read_text()) if history.exists() else []}
    store.backend.put(f"{PREFIX}/{prefix}/output.json", json.dumps(record).encode())


def checkpoint_callback(job: dict):
    """The Trainer callback that stores each checkpoint from every rank (see the module's docstring)."""
    from transformers import TrainerCallback

    from storage import open_store
    from tasks.checkpoints import StoredCheckpoints
    from tasks.child import emit

    ray = job["ray"]
    checkpoints = StoredCheckpoints(open_store(ray["store"], None, ray.get("credentials_block")),
                                    ray["checkpoints"], logging.getLogger("alignflow.ray"))

    class StoreCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if state.global_step >= state.max_steps:
                return  # the last: the output follows at once
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            sizes = checkpoints.put_files(folder) if folder.is_dir() else {}
            if dist.is_initialized():
                dist.barrier()  # every rank's part is in
            if state.is_world_process_zero:
                files = checkpoints.commit(state.global_step, sizes)
                emit({"stored": state.global_step, "megabytes": round(sum(files.values()) / 1e6, 1)})

    return StoreCheckpoints()


def receive(store, prefix: str, workdir: Path, stage: str) -> None:
    """The stage's side of `hand_over`: the output's files into `workdir/output`, the result and history
    beside it, as the local trainer child leaves them."""
    from tasks.checkpoints import PREFIX

    record = json.loads(store.backend.get(f"{PREFIX}/{prefix}/output.json")[0])
    output = workdir / "output"
    shutil.rmtree(output, ignore_errors=True)
    store.materialize(record["files"], output, f"the output of {stage}")
    (workdir / "history.json").write_text(json.dumps(record["history"]))
    (workdir / "result.json").write_text(json.dumps(record["result"]))
