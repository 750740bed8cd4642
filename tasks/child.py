"""What every trainer child shares, whether `accelerate launch` started it here (tasks/trainer.py) or Ray Train
on a cluster's node (distributed/worker.py): the same set-up before the stage's recipe, progress lines for the
parent, and failures described so that the parent keeps their class."""

from __future__ import annotations

import itertools
import json
import os

from alignflow.errors import AlignflowError, ConfigError

PROGRESS = "@@alignflow-progress "
SEED = 42

_emitted = itertools.count()


def run_stage(job: dict) -> dict:
    """`tasks.<stage_module>.run_training(job)`, after the set-up every trainer child does first."""
    import importlib

    from transformers import set_seed

    from tasks import lm_head

    join_deepspeed(job)
    lm_head.install()
    set_seed(SEED)  # before any model is built: a new head (the reward model's) starts the same everywhere
    return importlib.import_module(f"tasks.{job['stage_module']}").run_training(job)


def emit(message: dict) -> None:
    """One progress line for the parent (numbered, so that a line forwarded twice is read once)."""
    print(PROGRESS + json.dumps(dict(message, seq=next(_emitted), pid=os.getpid(),
                                     rank=int(os.environ.get("RANK", "0")))), flush=True)


def describe_failure(exc: Exception) -> dict:
    """Our own errors keep their class (a ConfigError is not retried); anything else is a StageError."""
    if isinstance(exc, ConfigError):
        return {"type": "ConfigError", "message": "; ".join(exc.problems)}
    if isinstance(exc, AlignflowError):
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": "StageError", "message": f"{type(exc).__name__}: {exc}"}


def failure_error(info: dict, message: str | None = None) -> AlignflowError:
    """The error `describe_failure` described, its class kept; `message` instead of the recorded one."""
    from alignflow.errors import DataError, StageError, TransientError

    message = info["message"] if message is None else message
    if info["type"] == "ConfigError":
        return ConfigError(message, "stage config")
    return {"DataError": DataError, "TransientError": TransientError}.get(info["type"], StageError)(message)


def join_deepspeed(job: dict) -> None:
    """On a CPU host, DeepSpeed would pick Intel's oneCCL for its collectives; start it on gloo instead."""
    import torch

    if (job["config"].get("resources") or {}).get("deepspeed", "none") != "none" and not torch.cuda.is_available():
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
