"""Training runs in a child process, launched through `accelerate launch`.

One code path covers one CPU, one GPU and many GPUs (and DeepSpeed, through accelerate's config); a
trainer that crashes or is killed cannot take the Prefect worker down. The parent streams the child's
progress lines into the stage's log, copies each checkpoint to the store as it is written
(tasks/checkpoints.py), and classifies a failure:
    - the child raised: its error (a ConfigError stays a ConfigError) is re-raised here, not retried;
    - the child died without a word (killed, out of memory): a TransientError; the retry, on this machine
      or another, resumes from the newest checkpoint, local or stored.

Every trainer stage shares the parent side, `run_trainer` (job, launch, publish, drop the checkpoints).
Child side: `python -m tasks.trainer JOB.json` imports the stage's module and calls its
`run_training(job) -> metrics`: a readable recipe (load, configure TRL, `train`, `save`).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from alignflow.errors import AlignflowError, ConfigError, TransientError
from alignflow.processes import free_port, owned_child, stop_with_owner
from alignflow.secrets import child_env
from storage.store import default_cache_dir
from tasks import report
from tasks.checkpoints import StoredCheckpoints, last_complete_checkpoint, step_of
from tasks.child import PROGRESS, SEED, describe_failure, emit, failure_error, run_stage
from tasks.config import RayWorkers, StageConfig

PROGRESS_KEYS = ("loss", "reward", "rewards/margins", "rewards/accuracies", "mean_token_accuracy", "learning_rate")


LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate")  # whose versions shape a trainer's result
# the credentials each tracker in `report_to` reads from the environment: all the trainer child gets
TRACKER_CREDENTIALS = {"wandb": ("WANDB_API_KEY",), "mlflow": ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD"),
                       "comet_ml": ("COMET_API_KEY",), "clearml": ("CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY"),
                       "swanlab": ("SWANLAB_API_KEY",), "trackio": ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}


def learning_rate(default: float):
    """The `learning_rate` field, with a stage's own default."""
    return Field(default, gt=0, le=1.0, description="peak learning rate (cosine schedule, 5% warm-up)")


class LoraSpec(StageConfig):
    """The shape of a LoRA adapter (peft.LoraConfig)."""

    r: int = Field(16, ge=1, le=1024, description="rank of the update matrices; higher learns more, costs more")
    alpha: int = Field(32, ge=1, le=4096, description="scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter's input during training")
    target_modules: str | list[str] = Field(
        "all-linear", description="modules that get an adapter: 'all-linear', or names such as ['q_proj', 'v_proj']")
    use_dora: bool = Field(False, description="DoRA: learn each weight's magnitude apart from its direction "
                                              "(closer to full fine-tuning at low rank; slower steps)")
    use_rslora: bool = Field(False, description="rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r, "
                                                "which keeps high ranks learning")

    def peft_config(self, task_type: str = "CAUSAL_LM"):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, use_dora=self.use_dora, use_rslora=self.use_rslora,
                          task_type=task_type)


class Resources(RayWorkers):
    """How wide a trainer runs: processes through `accelerate launch`, or workers on a Ray cluster
    (`engine: ray`); sharding through DeepSpeed or FSDP."""

    processes: int = Field(0, ge=0, le=4096, description="training processes per machine (0: one per GPU, or one "
                                                         "on a CPU host)")
    deepspeed: Literal["none", "zero2", "zero3"] = Field(
        "none", description="DeepSpeed ZeRO: zero2 shards optimizer state and gradients across processes, zero3 the "
                            "weights too (saved gathered, as one model)")
    fsdp: Literal["none", "full_shard", "shard_grad_op", "hybrid_shard"] = Field(
        "none", description="PyTorch FSDP sharding instead of DeepSpeed (GPU hosts)")
    machines: int = Field(1, ge=1, le=1024, description="machines that train together; each runs the stage with "
                                                        "ALIGNFLOW_MACHINE_RANK and ALIGNFLOW_MAIN_PROCESS=host:port "
                                                        "set (docs/OPERATIONS.md)")
    engine: Literal["local", "ray"] = Field(
        "local", description="local: processes on this machine (accelerate); ray: `workers` Ray Train workers on a "
                             "Ray cluster, inputs and checkpoints through the store (distributed/)")

    @model_validator(mode="after")
    def _one_sharding(self) -> "Resources":
        if self.deepspeed != "none" and self.fsdp != "none":
            raise ValueError("deepspeed and fsdp both shard the model; choose one")
        if self.engine == "ray" and (self.machines > 1 or self.processes > 1 or self.fsdp != "none"):
            raise ValueError("engine ray places `workers` on the cluster's nodes itself: leave machines and "
                             "processes unset (and fsdp: use deepspeed)")
        return self


class TrainingStage(StageConfig):
    """What every trainer stage shares. Anything else TRL's config takes goes through `trainer_args`."""

    trl_config: ClassVar[Optional[str]] = None  # TRL's config class (dotted): its fields are what trainer_args take
    makes_policy: ClassVar[bool] = True  # trains the model that is served (the reward model's trainer does not)

    epochs: float = Field(1.0, gt=0, le=1000, description="passes over the data (fractions allowed)")
    learning_rate: float = learning_rate(2.0e-4)
    batch_size: int = Field(8, ge=1, le=65536, description="rows per step on each device")
    max_length: int = Field(1024, ge=8, le=1048576, description="tokens per row; longer rows are truncated")
    trainer_args: dict = Field(default_factory=dict,
                               description="forwarded unchanged to TRL's config class (e.g. {max_steps: 100})")
    resources: Resources = Field(default_factory=Resources,
                                 description="processes, machines, DeepSpeed or FSDP; or a Ray cluster")
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "clearml", "trackio", "swanlab"]] = Field(
        default_factory=list, description="experiment trackers TRL reports to (their packages and credentials from "
                                          "the environment); tensorboard's logs are kept in the output artifact")


class PolicyStage(TrainingStage):
    """What the preference methods share: the training settings, and how the policy is trained."""

    tuner: Literal["lora", "full"] = Field(
        "lora", description="lora: a new adapter on the model so far (for methods with a reference model, the "
                            "adapter-off model is the reference: no second copy in memory); full: every weight")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="adapter shape (tuner lora)")
    trl_module: ClassVar[Optional[str]] = None  # where the method lives, when some TRL versions lack it

    def problems(self) -> list[str]:
        stage = self.declaration.name.removeprefix("train_") if self.declaration else type(self).__name__
        return trl_lacks(self.trl_module, stage) if self.trl_module else []


def launch(stage: str, module: str, job: dict, workdir: Path, logger: logging.Logger | None = None,
           log_file: Path | None = None, dashboard_key: str | None = None,
           checkpoints: StoredCheckpoints | None = None) -> dict:
    """Run `tasks.<module>.run_training(job)` in a child process; return its metrics.

    Progress goes to `logger` and, with a `dashboard_key`, to a progress artifact and a loss-curve picture
    in the Prefect dashboard; everything else the child prints (TRL, accelerate, warnings) to `log_file`.
    With `checkpoints`, a stored checkpoint newer than the local ones is restored first, and each new one
    is stored as the trainer writes it."""
    import torch

    logger = logger or logging.getLogger(f"alignflow.{stage}")
    on_ray = "ray" in job  # the workers restore and store the checkpoints themselves (distributed/worker.py)
    if checkpoints and not on_ray:
        checkpoints.restore(workdir / "checkpoints")
    log_file = log_file or workdir / "trainer.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "failure.json", "history.json"):
        (workdir / stale).unlink(missing_ok=True)
    job = dict(job, stage=stage, stage_module=module, workdir=str(workdir))
    (workdir / "job.json").write_text(json.dumps(job, indent=2))
    gpus = torch.cuda.device_count()
    if on_ray:
        cmd = [sys.executable, "-m", "distributed.driver", str(workdir / "job.json")]
        env = trainer_env(job["config"], gpus, RAY_DEDUP_LOGS="0", RAY_COLOR_PREFIX="0")
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_flags(job["config"].get("resources") or {},
               gpus), "-m", "tasks.trainer", str(workdir / "job.json")]
        env = trainer_env(job["config"], gpus)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    reader = Reader(stage, logger, None if on_ray else checkpoints, workdir, dashboard_key)
    logger.info("%s: trainer output goes to %s", stage, log_file)
    # whatever ends this process early stops the launcher and the trainer (a Ray driver's abort takes longer)
    with owned_child(cmd, grace=60 if on_ray else 10, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                     env=env) as proc, \
            open(log_file, "a", encoding="utf-8") as log:
        for line in proc.stdout:
            if PROGRESS in line:  # a Ray worker's comes prefixed "(RayTrainWorker pid=...) "
                reader.read(line[line.index(PROGRESS) + len(PROGRESS):])
            elif line.strip():
                log.write(line)
                tail.append(line.rstrip())
        code = proc.wait()
    if checkpoints and not on_ray:
        checkpoints.wait()  # the last checkpoint is the retry's starting point: store it before failing
    if code == 0 and on_ray:
        from distributed.worker import receive

        receive(checkpoints.store, checkpoints.key, workdir, stage)
    if code == 0 and (workdir / "result.json").exists():
        if dashboard_key:
            show_curves(workdir, stage, dashboard_key, reader.progress)
        return dict(json.loads((workdir / "result.json").read_text()), **reader.placement())
    raise child_failure(stage, workdir, code, list(tail))


class Reader:
    """The progress lines of the trainer child (or of the Ray workers, each line once: Ray may forward one
    twice): a checkpoint written or stored, a resume, a worker placed, a note, or a step's metrics."""

    def __init__(self, stage: str, logger, checkpoints, workdir: Path, dashboard_key: str | None):
        self.stage, self.logger, self.checkpoints, self.workdir = stage, logger, checkpoints, workdir
        self.started, self.seen, self.workers = time.monotonic(), set(), {}
        self.progress = report.ProgressArtifact(f"{dashboard_key}-progress", f"{stage} steps") \
            if dashboard_key else None

    def read(self, text: str) -> None:
        p = json.loads(text)
        if (p.get("rank"), p.get("pid"), p.get("seq")) in self.seen:
            return
        self.seen.add((p.get("rank"), p.get("pid"), p.get("seq")))
        stage, logger = self.stage, self.logger
        if "checkpoint" in p:
            if self.checkpoints:
                self.checkpoints.saved(self.workdir / "checkpoints" / p["checkpoint"])
        elif "stored" in p:
            logger.info("%s: checkpoint at step %d stored (%s MB)", stage, p["stored"], p["megabytes"])
        elif "resumed_from" in p:
            logger.info("%s: resuming from the checkpoint at step %d", stage, p["resumed_from"])
        elif "worker" in p:
            self.workers[p["worker"]] = p["node"]
            logger.info("%s: Ray worker %d on node %s (pid %d)", stage, p["worker"], p["node"][:12], p["pid"])
        elif "note" in p:
            logger.warning("%s: %s", stage, p["note"])
        else:
            logger.info("%s: %s", stage, describe_progress(p, self.started))
            if self.progress and p.get("max_steps"):
                self.progress.update(p["step"] / p["max_steps"])

    def placement(self) -> dict:
        """Where the Ray workers ran, for the stage card: {} for a local trainer."""
        if not self.workers:
            return {}
        nodes = [f"{node[:12]} (rank {rank})" for rank, node in sorted(self.workers.items())]
        return {"ray_workers": len(self.workers), "ray_nodes": ", ".join(nodes)}


def trainer_env(config: dict, gpus: int, **extra: str) -> dict:
    """The trainer child's environment, for the stage `config` (as a dict) on a host with `gpus` GPUs. No
    store or hub credentials: the parent restores and stores the checkpoints, and the job names local
    folders; only the credentials of the trackers in `report_to`."""
    keep = [name for tracker in config.get("report_to") or [] for name in TRACKER_CREDENTIALS.get(tracker, ())]
    env = child_env(keep, TOKENIZERS_PARALLELISM="false", **extra)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(default_cache_dir() / "torch_extensions"))  # DeepSpeed's built ops
    if not gpus:
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def launch_flags(resources: dict, gpus: int) -> list[str]:
    """`accelerate launch` flags for `resources` (Resources as a dict) on a host with `gpus` GPUs."""
    per_machine = resources.get("processes") or max(gpus, 1)
    machines = resources.get("machines", 1)
    total = per_machine * machines
    # accelerate's --cpu launcher starts one process unless MPI is set up; --multi_gpu is torchrun, which on a
    # CPU host starts `total` workers that meet over gloo
    device = ["--multi_gpu"] if total > 1 else [] if gpus else ["--cpu"]
    flags = ["--num_machines", str(machines), "--num_processes", str(total), "--mixed_precision", "no",
             "--dynamo_backend", "no", *device]
    if machines > 1:
        main = os.environ.get("ALIGNFLOW_MAIN_PROCESS", "")
        if ":" not in main:
            raise ConfigError("resources.machines > 1: set ALIGNFLOW_MAIN_PROCESS=host:port (machine 0's address) and "
                              "ALIGNFLOW_MACHINE_RANK on every machine (docs/OPERATIONS.md)", "environment")
        host, port = main.rsplit(":", 1)
        flags += ["--machine_rank", os.environ.get("ALIGNFLOW_MACHINE_RANK", "0"), "--main_process_ip", host,
                  "--main_process_port", port]
    elif per_machine > 1:  # a free port: two trainers on one machine must not meet
        flags += ["--main_process_port", str(free_port())]
    return flags


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
        return failure_error(info, f"{stage}: {info['message']}")
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


def run_trainer(run, model, data, config: StageConfig, *, suffix: str, kind: str | None = None,
                data_file: str = "data.jsonl", metadata: dict | None = None, extra: dict | None = None, log=None):
    """The parent side every trainer stage shares: materialize the model chain and the data, run the
    stage module's `run_training` in a child process (resuming from a stored checkpoint), publish the
    output as `<pipeline>/<suffix>` (an adapter records its base), then drop the stored checkpoints.

    `kind`: the artifact's kind; by default an `adapter` for `tuner: lora|qlora`, else a `model`.
    `extra`: more input artifacts ({"reward_model": ref}): the job gets their folders, the lineage their names.
    `log(logger, metrics)`: a line for the stage's log once training is done."""
    from prefect import get_run_logger

    from tasks.models import base_record, model_chain
    from tasks.stage import DECLARATIONS, current_stage, publish

    stage, key = current_stage()
    declaration, logger = DECLARATIONS[stage], get_run_logger()
    store, workdir = run.open_store(), run.workdir()
    extra = extra or {}
    job = {"config": config.model_dump(), "model_chain": [str(p) for p in model_chain(store, model)],
           "data": str(store.get_dir(data) / data_file), "output": str(workdir / "output"),
           **{name: str(store.get_dir(ref)) for name, ref in extra.items()}}
    if config.resources.engine == "ray":
        job["ray"] = ray_job(run, store, model, data, data_file, extra, workdir.name, config.resources)
    checkpoints = StoredCheckpoints(store, workdir.name, logger)
    metrics = launch(stage, type(config).__module__.removeprefix("tasks."), job, workdir, logger,
                     run.log_file(stage), report.artifact_key(run.name, stage), checkpoints)
    if log:
        log(logger, metrics)
    metrics = with_warnings(metrics, stage, workdir, logger)
    tuner = getattr(config, "tuner", None)
    adapter = kind is None and tuner not in (None, "full")
    ref = publish(run, suffix, kind or ("adapter" if adapter else "model"), workdir / "output", stage=stage,
                  config=config, inputs={"model": model, "data": data, **extra}, libraries=declaration.libraries,
                  metrics=metrics, metadata=dict(metadata or {}, **({"tuner": tuner} if tuner else {}),
                                                 **({"base": base_record(model)} if adapter else {})))
    checkpoints.drop()
    return ref


def ray_job(run, store, model, data, data_file: str, extra: dict, key: str, resources: Resources) -> dict:
    """What the Ray workers need besides the job: the store (its location; the nodes hold the credentials),
    the inputs as artifacts to fetch on their nodes, the checkpoints' key, the cluster."""
    from distributed.local import cluster_address
    from tasks.models import chain_refs

    address = cluster_address(resources.address, "resources.address")
    inputs = {"model_chain": [r.portable() for r in chain_refs(store, model)], "data": data.portable(),
              "data_file": data_file, "extra": {name: ref.portable() for name, ref in extra.items()}}
    return {"address": address, "store": store.uri, "credentials_block": run.credentials_block,
            "checkpoints": key, "inputs": inputs}


def with_warnings(metrics: dict, stage: str, workdir: Path, logger) -> dict:
    """`metrics` plus what makes the training degenerate (tasks/degeneracy.py), each also logged."""
    from tasks.degeneracy import noted, training_warnings

    history = workdir / "history.json"
    key = {"train_reward_model": "reward"}.get(stage, stage.removeprefix("train_"))  # the spec's stage name
    warnings = training_warnings(key, json.loads(history.read_text()) if history.exists() else [],
                                 int(metrics.get("steps", 0)))
    return noted(metrics, warnings, stage, logger)


# ---- child side -------------------------------------------------------------------------------------

def trl_args(config_cls, job: dict, **fields):
    """A TRL config from the stage config: our defaults, then the stage's fields, then `trainer_args`."""
    import dataclasses

    import torch

    cfg, cuda = job["config"], torch.cuda.is_available()
    args = dict(
        output_dir=str(Path(job["workdir"]) / "checkpoints"), num_train_epochs=cfg["epochs"],
        learning_rate=cfg["learning_rate"], per_device_train_batch_size=cfg["batch_size"],
        max_length=cfg["max_length"], use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=cuda,  # saves GPU memory; on CPU it only costs time
        lr_scheduler_type="cosine", warmup_steps=0.05,  # a fraction of the run
        logging_steps=0.05, save_strategy="steps", save_steps=0.2, save_total_limit=2,  # fractions of the run
        report_to=cfg.get("report_to") or [], disable_tqdm=True, seed=SEED, dataloader_num_workers=0,
    )
    if "tensorboard" in args["report_to"]:  # into the artifact, beside the weights it describes
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(job["output"]) / "tensorboard")
    resources = cfg.get("resources") or {}
    if resources.get("deepspeed", "none") != "none":
        args["deepspeed"] = deepspeed_config(resources["deepspeed"])
    if resources.get("fsdp", "none") != "none":
        args["fsdp"] = f"{resources['fsdp']} auto_wrap"
    known = {f.name for f in dataclasses.fields(config_cls)}
    args = {k: v for k, v in args.items() if k in known}  # e.g. GRPOConfig has no max_length
    args.update(fields)
    args.update(cfg.get("trainer_args") or {})
    try:
        return config_cls(**args)
    except (TypeError, ValueError) as exc:  # an unknown or invalid trainer_args entry
        raise ConfigError(f"trainer_args: trl.{config_cls.__name__} refused the arguments: {exc}",
                          "stage config") from None


def deepspeed_config(zero: str) -> dict:
    """DeepSpeed's config for ZeRO stage 2 or 3; "auto" values are filled in from the Trainer's arguments."""
    stage = {"zero2": 2, "zero3": 3}[zero]
    optimization = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if stage == 3:  # one model.safetensors on save, not shards per process
        optimization["stage3_gather_16bit_weights_on_model_save"] = True
    return {"zero_optimization": optimization, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"}}


def train_policy(job: dict, config, trl_config, trl_trainer, dataset, shown: tuple[str, ...] = (),
                 trainer_kwargs: dict | None = None, **fields) -> dict:
    """The child side of every preference method: the policy is the model so far, with a new LoRA adapter
    (`tuner: lora`) or every weight trainable; TRL's `trl_trainer` (given `trainer_kwargs` too) trains it on
    `dataset` with `trl_config` (our defaults, then `fields`, then `trainer_args`); the result is saved.
    Returns the training metrics and the last logged value of each `shown` metric ("rewards/margins" ->
    "rewards_margins")."""
    from tasks.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(job["model_chain"])
    model = load_causal_lm(job["model_chain"])
    args = trl_args(trl_config, job, **fields)
    peft = config.lora.peft_config() if config.tuner == "lora" else None
    policy = trl_trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft,
                         **(trainer_kwargs or {}))
    metrics = train(policy, job)
    save(policy, tokenizer, job["output"])
    last = {}
    for entry in policy.state.log_history:
        last.update({k: v for k, v in entry.items() if k in shown})
    return {**metrics, **{k.replace("/", "_"): round(v, 4) for k, v in last.items()}}


def preference_pairs(job: dict, method: str):
    """The preference split as chosen/rejected pairs; unpaired rows (prompt/completion/label) are refused,
    since only KTO learns from them."""
    from datasets import load_dataset

    pairs = load_dataset("json", data_files=job["data"], split="train")
    if "chosen" not in pairs.column_names or None in pairs["chosen"]:
        raise ConfigError(f"{method} trains on chosen/rejected pairs, but data.preference has unpaired rows "
                          "(prompt/completion/label): use stages.kto for those, or give pairs", "stage config")
    return pairs.select_columns(["prompt", "chosen", "rejected"])


def trl_lacks(module: str, stage: str) -> list[str]:
    """[] when the installed TRL has `module` (e.g. trl.experimental.orpo), else the problem, naming the
    installed version and the methods every TRL here has. Cheap: finds the module without importing it."""
    import importlib.metadata
    import importlib.util
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental warns on import
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
    if found:
        return []
    return [f"stages.{stage}: the installed TRL {importlib.metadata.version('trl')} has no {module}; use stages.dpo "
            "(its loss_type covers IPO, hinge, ...) or stages.kto, or install a TRL that has it"]


def trl_classes(module: str, method: str) -> tuple[type, type]:
    """(config class, trainer class) of a TRL method, e.g. ("trl.experimental.orpo", "ORPO"), imported
    quietly (trl.experimental warns on import)."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = importlib.import_module(module)
    return getattr(found, f"{method}Config"), getattr(found, f"{method}Trainer")


def train(trainer, job: dict) -> dict:
    """Train with progress lines for the parent, resuming from the newest checkpoint if a retry left one."""
    trainer.add_callback(progress_callback())
    if "ray" in job:  # every rank puts its part of each checkpoint in the store
        from distributed.worker import checkpoint_callback

        trainer.add_callback(checkpoint_callback(job))
    last = last_complete_checkpoint(Path(job["workdir"]) / "checkpoints")
    if last and trainer.state.is_world_process_zero:
        emit({"resumed_from": step_of(last)})
    output = trainer.train(resume_from_checkpoint=last)
    if trainer.state.is_world_process_zero:  # the parent draws the loss curve from it
        (Path(job["workdir"]) / "history.json").write_text(json.dumps(trainer.state.log_history))
    return {"train_loss": round(float(output.training_loss), 6), "steps": int(output.global_step),
            "resumed_from_step": step_of(last) if last else 0, **final_logs(trainer.state.log_history),
            **layout(trainer)}


def layout(trainer) -> dict:
    """How the training was spread: processes, and the ZeRO stage when DeepSpeed ran it."""
    out = {"processes": trainer.args.world_size}
    if getattr(trainer, "is_deepspeed_enabled", False):
        out["zero_stage"] = trainer.accelerator.state.deepspeed_plugin.zero_stage
    return out


def final_logs(history: list[dict]) -> dict:
    """The last logged training loss: comparable between a resumed run and an uninterrupted one (the
    Trainer's `train_loss` averages over the steps of the last attempt only)."""
    last = next((h for h in reversed(history) if "loss" in h and "train_loss" not in h), {})
    return {"final_loss": round(float(last["loss"]), 6)} if "loss" in last else {}


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
        first_step, t0 = None, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if self.first_step is None:  # here, not at train begin: a resumed state is loaded in between
                self.first_step, self.t0 = state.global_step, time.monotonic()

        def on_save(self, args, state, control, **kwargs):
            # the checkpoint is complete: the parent may store it (not the last: the output follows at once)
            if state.is_world_process_zero and state.global_step < state.max_steps:
                emit({"checkpoint": f"checkpoint-{state.global_step}", "step": state.global_step})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                keep = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float)) and k != "epoch"}
                emit({"step": state.global_step, "max_steps": state.max_steps, "logs": keep,
                        "steps_this_run": state.global_step - (self.first_step or 0),
                        "train_seconds": time.monotonic() - self.t0})

    return Progress()


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    workdir = Path(job["workdir"])
    rank0 = int(os.environ.get("RANK", "0")) == 0
    stop_with_owner()  # the stage killed outright: stop training for nobody
    try:
        metrics = run_stage(job)
    except Exception as exc:  # reported to the parent, which decides whether to retry
        if rank0:
            (workdir / "failure.json").write_text(json.dumps(describe_failure(exc)))
        raise
    if rank0:
        (workdir / "result.json").write_text(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
