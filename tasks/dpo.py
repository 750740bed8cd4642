"""Stage `train_dpo`: Direct Preference Optimization with TRL's DPOTrainer, on top of the SFT result.

With `tuner: lora` the policy is a new LoRA adapter on the SFT weights, and the reference model is those
same weights with the adapter disabled (no second copy in memory). Output: an `adapter` artifact whose
base is the SFT artifact (or a full `model` with `tuner: full`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from storage import ArtifactRef
from tasks import trainer
from tasks.models import base_record
from tasks.stage import RunContext, publish, stage
from tasks.trainer import LoraSpec, TrainingStage

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate")


class DPOStage(TrainingStage):
    """Direct Preference Optimization (trl.DPOTrainer) on the SFT result. `trainer_args` go to trl.DPOConfig."""

    tuner: Literal["lora", "full"] = Field(
        "lora", description="lora: a new adapter on the SFT weights, whose adapter-off self is the reference "
                            "model; full: every weight, with a frozen copy as reference")
    beta: float = Field(0.1, gt=0, le=100, description="DPO temperature: higher keeps the policy closer to the "
                                                       "reference model")
    learning_rate: float = Field(5.0e-5, gt=0, le=1.0, description="peak learning rate (cosine schedule, "
                                                                   "5% warm-up)")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="adapter shape (tuner lora)")


@stage("train_dpo", libraries=LIBRARIES, uses=("tasks.trainer", "tasks.models", "tasks.sft"), accelerator=True)
def train_dpo(run: RunContext, model: ArtifactRef, data: ArtifactRef, config: DPOStage) -> ArtifactRef:
    metrics, out = trainer.run_trainer(run, "train_dpo", "dpo", model, data, config)
    adapter = config.tuner == "lora"
    return publish(run, "dpo", "adapter" if adapter else "model", out, stage="train_dpo",
                   config=config, inputs={"model": model, "data": data}, libraries=LIBRARIES, metrics=metrics,
                   metadata={"base": base_record(model), "tuner": "lora"} if adapter else {"tuner": "full"})


def run_training(job: dict) -> dict:
    """Child process: train and save into job["output"]."""
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    from tasks.models import load_causal_lm, load_tokenizer
    from tasks.sft import lora_config

    config = DPOStage.model_validate(job["config"])
    tokenizer = load_tokenizer(job["model_chain"])
    model = load_causal_lm(job["model_chain"])
    args = trainer.trl_args(DPOConfig, job, beta=config.beta)
    dataset = load_dataset("json", data_files=job["data"], split="train")
    peft = lora_config(config.lora, "CAUSAL_LM") if config.tuner == "lora" else None
    dpo = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft)
    metrics = trainer.train(dpo, job)
    last = next((h for h in reversed(dpo.state.log_history) if "rewards/accuracies" in h), {})
    final = {k.replace("/", "_"): round(v, 4) for k, v in last.items()
             if k in ("rewards/accuracies", "rewards/margins")}
    trainer.save(dpo, tokenizer, job["output"])
    return {**metrics, **final}
