"""Stage `train_reward_model`: a scalar reward model trained with TRL's RewardTrainer on preference pairs.

It starts from the SFT model (a sequence-classification head on its body) and reports the held-out
pairwise accuracy: the share of unseen pairs where it scores `chosen` above `rejected`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from storage import ArtifactRef
from tasks import trainer
from tasks.models import materialize
from tasks.reward_model import rewards
from tasks.stage import RunContext, stage
from tasks.trainer import TrainingStage

LIBRARIES = trainer.LIBRARIES


class RewardStage(TrainingStage):
    """A scalar reward model (trl.RewardTrainer) on preference pairs. `trainer_args` go to trl.RewardConfig."""

    trl_config: ClassVar[str] = "trl.trainer.reward_config.RewardConfig"  # checks trainer_args keys at spec time
    makes_policy: ClassVar[bool] = False

    learning_rate: float = trainer.learning_rate(1.0e-4)
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="share of pairs held out to measure pairwise "
                                                              "accuracy")


@stage("train_reward_model", config=RewardStage, needs=("data.preference",), key_metric="pairwise_accuracy",
       libraries=LIBRARIES, accelerator=True)
def train_reward_model(run: RunContext, model: ArtifactRef, data: ArtifactRef, config: RewardStage) -> ArtifactRef:
    return trainer.run_trainer(run, model, data, config, suffix="reward", kind="reward_model",
                               metadata={"max_length": config.max_length}, log=lambda logger, m:
                               logger.info("reward model: held-out pairwise accuracy %.3f on %d pairs",
                                           m["pairwise_accuracy"], m["eval_pairs"]))


def run_training(job: dict) -> dict:
    """Child process: train, score held-out pairs, save into job["output"]."""
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from tasks.models import load_tokenizer

    config = RewardStage.model_validate(job["config"])
    tokenizer = load_tokenizer(job["model_chain"])
    body = materialize(job["model_chain"], Path(job["workdir"]) / "merged-base")
    model = AutoModelForSequenceClassification.from_pretrained(body, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    pairs = trainer.preference_pairs(job, "reward").train_test_split(test_size=config.eval_fraction, seed=42)
    args = trainer.trl_args(RewardConfig, job)
    reward = RewardTrainer(model=model, args=args, train_dataset=pairs["train"], processing_class=tokenizer)
    metrics = trainer.train(reward, job)
    metrics.update(pairwise_accuracy(reward.model, tokenizer, pairs["test"], config.max_length))
    trainer.save(reward, tokenizer, job["output"])
    return metrics


def pairwise_accuracy(model, tokenizer, pairs, max_length: int) -> dict:
    """Share of pairs where the model scores chosen above rejected."""
    chosen = rewards(model, tokenizer, [row["prompt"] + row["chosen"] for row in pairs], max_length)
    rejected = rewards(model, tokenizer, [row["prompt"] + row["rejected"] for row in pairs], max_length)
    wins = sum(c > r for c, r in zip(chosen, rejected))
    return {"pairwise_accuracy": round(wins / max(len(pairs), 1), 4), "eval_pairs": len(pairs)}

