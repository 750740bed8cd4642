"""Stage `train_dpo`: Direct Preference Optimization with TRL's DPOTrainer, on top of the SFT result.

With `tuner: lora` the policy is a new LoRA adapter on the SFT weights, and the reference model is those
same weights with the adapter disabled (no second copy in memory). Output: an `adapter` artifact whose
base is the SFT artifact (or a full `model` with `tuner: full`).
"""

from __future__ import annotations

from dataclasses import asdict

from flows.spec import DPOStage, LoraSpec
from storage import ArtifactRef
from tasks import trainer
from tasks.models import base_record, model_chain
from tasks.stage import RunContext, publish, stage

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate")


@stage("train_dpo", libraries=LIBRARIES, uses=("tasks.trainer", "tasks.models", "tasks.sft"))
def train_dpo(run: RunContext, model: ArtifactRef, data: ArtifactRef, config: DPOStage) -> ArtifactRef:
    from prefect import get_run_logger

    store, workdir = run.open_store(), run.workdir()
    job = {"config": asdict(config), "model_chain": [str(p) for p in model_chain(store, model)],
           "data": str(store.get_dir(data) / "data.jsonl"), "output": str(workdir / "output")}
    metrics = trainer.launch("train_dpo", "dpo", job, workdir, get_run_logger())
    adapter = config.tuner == "lora"
    return publish(run, "dpo", "adapter" if adapter else "model", workdir / "output", stage="train_dpo",
                   config=config, inputs={"model": model, "data": data}, libraries=LIBRARIES, metrics=metrics,
                   metadata={"base": base_record(model), "tuner": "lora"} if adapter else {"tuner": "full"})


def run_training(job: dict) -> dict:
    """Child process: train and save into job["output"]."""
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    from tasks.models import load_causal_lm, load_tokenizer
    from tasks.sft import lora_config

    config = DPOStage(**{**job["config"], "lora": LoraSpec(**job["config"]["lora"])})
    tokenizer = load_tokenizer(job["model_chain"])
    model = load_causal_lm(job["model_chain"])
    args = trainer.trl_args(DPOConfig, job, beta=config.beta)
    dataset = load_dataset("json", data_files=job["data"], split="train")
    peft = lora_config(config.lora, "CAUSAL_LM") if config.tuner == "lora" else None
    dpo = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft)
    metrics = trainer.train(dpo, job)
    last = next((h for h in reversed(dpo.state.log_history) if "rewards/accuracies" in h), {})
    final = {k.replace("/", "_"): round(v, 4) for k, v in last.items() if k in ("rewards/accuracies", "rewards/margins")}
    trainer.save(dpo, tokenizer, job["output"])
    return {**metrics, **final}
