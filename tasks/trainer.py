"""Training runs in a child process, launched through `accelerate launch`.

One code path covers one CPU, one GPU and many GPUs (and DeepSpeed, through accelerate's config); a
trainer that crashes or is killed cannot take the Prefect worker down. The parent streams the child's
progress lines into the stage's log, and classifies a failure:
    - the child raised: its error (a ConfigError stays a ConfigError) is re-raised here, not retried;
    - the child died without a word (killed, out of memory): a TransientError; the retry resumes from the
      newest checkpoint in the stage's work folder.

Child side: `python -m tasks.trainer JOB.json` imports `tasks.<job["stage"]>` and calls its
`run_training(job) -> metrics`.
"""

from __future__ import annotations

import collections
import importlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from pydantic import Field

from alignflow.errors import AlignflowError, ConfigError, DataError, StageError, TransientError
from tasks import report
from tasks.config import StageConfig

PROGRESS = "@@alignflow-progress "
PROGRESS_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "mean_token_accuracy", "learning_rate")
SEED = 42


class LoraSpec(StageConfig):
    """The shape of a LoRA adapter (peft.LoraConfig)."""

    r: int = Field(16, ge=1, le=1024, description="rank of the update matrices; higher learns more, costs more")
    alpha: int = Field(32, ge=1, le=4096, description="scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter's input during training")
    target_modules: str | list[str] = Field(
        "all-linear", description="modules that get an adapter: 'all-linear', or names such as ['q_proj', 'v_proj']")


class TrainingStage(StageConfig):
    """What every trainer stage shares. Anything else TRL's config takes goes through `trainer_args`."""

    epochs: float = Field(1.0, gt=0, le=1000, description="passes over the data (fractions allowed)")
    learning_rate: float = Field(2.0e-4, gt=0, le=1.0, description="peak learning rate (cosine schedule, 5% warm-up)")
    batch_size: int = Field(8, ge=1, le=65536, description="rows per step on each device")
    max_length: int = Field(1024, ge=8, le=1048576, description="tokens per row; longer rows are truncated")
    trainer_args: dict = Field(default_factory=dict,
                               description="forwarded unchanged to TRL's config class (e.g. {max_steps: 100})")


def launch(stage: str, module: str, job: dict, workdir: Path, logger: logging.Logger | None = None,
           log_file: Path | None = None, dashboard_key: str | None = None) -> dict:
    """Run `tasks.<module>.run_training(job)` in a child process; return its metrics.

    Progress goes to `logger` and, with a `dashboard_key`, to a progress artifact and a loss-curve picture
    in the Prefect dashboard; everything else the child prints (TRL, accelerate, warnings) to `log_file`."""
    import torch

    logger = logger or logging.getLogger(f"alignflow.{stage}")
    log_file = log_file or workdir / "trainer.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "failure.json", "history.json"):
        (workdir / stale).unlink(missing_ok=True)
    job = dict(job, stage=stage, stage_module=module, workdir=str(workdir))
    (workdir / "job.json").write_text(json.dumps(job, indent=2))
    gpus = torch.cuda.device_count()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--num_processes", str(max(gpus, 1)), "--mixed_precision", "no", "--dynamo_backend", "no",
           *([] if gpus else ["--cpu"]), "-m", "tasks.trainer", str(workdir / "job.json")]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if not gpus:
        env.setdefault("DS_ACCELERATOR", "cpu")
    tail: collections.deque[str] = collections.deque(maxlen=40)
    started, progress = time.monotonic(), report.ProgressArtifact(f"{dashboard_key}-progress", f"{stage} steps") \
        if dashboard_key else None
    logger.info("%s: trainer output goes to %s", stage, log_file)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc, \
            open(log_file, "a", encoding="utf-8") as log:
        for line in proc.stdout:
            if line.startswith(PROGRESS):
                p = json.loads(line[len(PROGRESS):])
                logger.info("%s: %s", stage, describe_progress(p, started))
                if progress and p.get("max_steps"):
                    progress.update(p["step"] / p["max_steps"])
            elif line.strip():
                log.write(line)
                tail.append(line.rstrip())
        code = proc.wait()
    if code == 0 and (workdir / "result.json").exists():
        if dashboard_key:
            show_curves(workdir, stage, dashboard_key, progress)
        return json.loads((workdir / "result.json").read_text())
    raise child_failure(stage, workdir, code, list(tail))


def show_curves(workdir: Path, stage: str, dashboard_key: str, progress) -> None:
    """After training: the progress bar at 100% and the loss curve as a picture in the dashboard."""
    from prefect.artifacts import create_markdown_artifact

    if progress:
        progress.update(1.0)
    history = workdir / "history.json"
    markdown = report.training_curves_markdown(json.loads(history.read_text()), stage) if history.exists() else ""
    if markdown:
        create_markdown_artifact(key=f"{dashboard_key}-curves", markdown=markdown,
                                 description=f"{stage}: loss curve")


def child_failure(stage: str, workdir: Path, code: int, tail: list[str]) -> AlignflowError:
    failure = workdir / "failure.json"
    if failure.exists():
        info = json.loads(failure.read_text())
        kind = {"ConfigError": ConfigError, "DataError": DataError, "TransientError": TransientError}.get(
            info["type"], StageError)
        message = f"{stage}: {info['message']}"
        return ConfigError(message, "stage config") if kind is ConfigError else kind(message)
    last = "\n".join(tail[-15:])
    return TransientError(f"{stage}: the trainer process ended without a result (exit code {code}; killed or "
                          f"out of memory?). A retry resumes from the last checkpoint. Last output:\n{last}")


def describe_progress(p: dict, started: float) -> str:
    """'step 120/564 (21%) loss 0.4312 | 9.8 steps/s, ETA 45s'"""
    step, total = p.get("step", 0), p.get("max_steps") or 0
    elapsed = time.monotonic() - started
    parts = [f"step {step}/{total}" + (f" ({100 * step // total}%)" if total else "")]
    logs = p.get("logs", {})
    parts += [f"{k} {logs[k]:.4g}" for k in PROGRESS_KEYS if isinstance(logs.get(k), (int, float))]
    if step and total and p.get("steps_this_run"):
        rate = p["steps_this_run"] / max(p.get("train_seconds", elapsed), 1e-6)
        parts.append(f"| {rate:.1f} steps/s, ETA {max(total - step, 0) / rate:.0f}s")
    return " ".join(parts)


def run_trainer(run, stage: str, module: str, model, data, config, data_file: str = "data.jsonl") -> tuple[dict, Path]:
    """The parent side every trainer stage shares: materialize the model chain and the data, run
    `tasks.<module>.run_training` in a child process, return (metrics, output folder)."""
    from prefect import get_run_logger

    from tasks.models import model_chain

    store, workdir = run.open_store(), run.workdir()
    job = {"config": config.model_dump(), "model_chain": [str(p) for p in model_chain(store, model)],
           "data": str(store.get_dir(data) / data_file), "output": str(workdir / "output")}
    metrics = launch(stage, module, job, workdir, get_run_logger(), run.log_file(stage),
                     report.artifact_key(run.name, stage))
    return metrics, workdir / "output"


# ---- child side -------------------------------------------------------------------------------------

def trl_args(config_cls, job: dict, **fields):
    """A TRL config from the stage config: our defaults, then the stage's fields, then `trainer_args`."""
    import torch

    cfg, cuda = job["config"], torch.cuda.is_available()
    args = dict(
        output_dir=str(Path(job["workdir"]) / "checkpoints"), num_train_epochs=cfg["epochs"],
        learning_rate=cfg["learning_rate"], per_device_train_batch_size=cfg["batch_size"],
        max_length=cfg["max_length"], use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=cuda,  # saves GPU memory; on CPU it only costs time
        lr_scheduler_type="cosine", warmup_steps=0.05,  # a fraction of the run
        logging_steps=0.05, save_strategy="steps", save_steps=0.2, save_total_limit=2,  # fractions of the run
        report_to=[], disable_tqdm=True, seed=SEED, dataloader_num_workers=0,
    )
    args.update(fields)
    args.update(cfg.get("trainer_args") or {})
    try:
        return config_cls(**args)
    except (TypeError, ValueError) as exc:  # an unknown or invalid trainer_args entry
        raise ConfigError(f"trainer_args: trl.{config_cls.__name__} refused the arguments: {exc}",
                          "stage config") from None


def train(trainer, job: dict) -> dict:
    """Train with progress lines for the parent, resuming from the newest checkpoint if a retry left one."""
    trainer.add_callback(progress_callback())
    last = last_complete_checkpoint(Path(job["workdir"]) / "checkpoints")
    if last:
        print(f"resuming from {last}", flush=True)
    output = trainer.train(resume_from_checkpoint=last)
    if trainer.state.is_world_process_zero:  # the parent draws the loss curve from it
        (Path(job["workdir"]) / "history.json").write_text(json.dumps(trainer.state.log_history))
    return {"train_loss": round(float(output.training_loss), 6), "steps": int(output.global_step),
            "resumed_from_step": int(Path(last).name.split("-")[-1]) if last else 0}


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint that was fully written. A process killed while saving leaves a folder
    without `trainer_state.json`, which the Trainer writes last: skip it."""
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for path in sorted(candidates, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            continue
    return None


def save(trl_trainer, tokenizer, output: str) -> None:
    """Save weights (or the adapter) and tokenizer, and nothing that names local paths: the same training
    on another machine must give the same bytes, hence the same digest and the same downstream cache hits."""
    trl_trainer.save_model(output)
    tokenizer.save_pretrained(output)
    for machine_specific in ("README.md", "training_args.bin"):  # model card; pickled args with output_dir
        (Path(output) / machine_specific).unlink(missing_ok=True)
    adapter_config = Path(output) / "adapter_config.json"
    if adapter_config.exists():  # the base is recorded in the artifact's metadata, by digest
        config = json.loads(adapter_config.read_text())
        config["base_model_name_or_path"] = None
        if isinstance(config.get("target_modules"), list):  # saved from a set: order varies per process
            config["target_modules"] = sorted(config["target_modules"])
        adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True))


def progress_callback():
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step, self.t0 = state.global_step, time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                keep = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float)) and k != "epoch"}
                print(PROGRESS + json.dumps({
                    "step": state.global_step, "max_steps": state.max_steps, "logs": keep,
                    "steps_this_run": state.global_step - self.first_step,
                    "train_seconds": time.monotonic() - self.t0}), flush=True)

    return Progress()


def describe_failure(exc: Exception) -> dict:
    """Our own errors keep their class (a ConfigError is not retried); anything else is a StageError."""
    if isinstance(exc, ConfigError):
        return {"type": "ConfigError", "message": "; ".join(exc.problems)}
    if isinstance(exc, AlignflowError):
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": "StageError", "message": f"{type(exc).__name__}: {exc}"}


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    workdir = Path(job["workdir"])
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        from transformers import set_seed

        set_seed(SEED)  # before any model is built: a new head (the reward model's) starts the same everywhere
        module = importlib.import_module(f"tasks.{job['stage_module']}")
        metrics = module.run_training(job)
    except Exception as exc:  # reported to the parent, which decides whether to retry
        if rank0:
            (workdir / "failure.json").write_text(json.dumps(describe_failure(exc)))
        raise
    if rank0:
        (workdir / "result.json").write_text(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
