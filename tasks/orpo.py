"""Stage `train_orpo`: Odds Ratio Preference Optimization (TRL's experimental ORPOTrainer).

ORPO needs no reference model: it adds an odds-ratio penalty on the rejected answer to the SFT loss on
the chosen one, so it can align a base model in one stage, or refine the SFT result as here. Output:
an `adapter` artifact on the model so far (or a full `model`).
"""

from __future__ import annotations

from typing import ClassVar, Optional

from pydantic import Field

from storage import ArtifactRef
from tasks import trainer
from tasks.stage import RunContext, stage
from tasks.trainer import PolicyStage

LIBRARIES = trainer.LIBRARIES


class ORPOStage(PolicyStage):
    """Odds Ratio Preference Optimization (trl.experimental.orpo). `trainer_args` go to its ORPOConfig."""

    trl_config: ClassVar[str] = "trl.experimental.orpo.orpo_config.ORPOConfig"  # checks trainer_args keys at spec time

    beta: float = Field(0.1, gt=0, le=100, description="weight of the odds-ratio term against the SFT loss "
                                                       "(lambda in the paper)")
    learning_rate: float = trainer.learning_rate(8.0e-6)
    trl_module: ClassVar[Optional[str]] = "trl.experimental.orpo"


@stage("train_orpo", config=ORPOStage, needs=("data.preference",), key_metric="rewards_accuracies",
       libraries=LIBRARIES, accelerator=True)
def train_orpo(run: RunContext, model: ArtifactRef, data: ArtifactRef, config: ORPOStage) -> ArtifactRef:
    return trainer.run_trainer(run, model, data, config, suffix="orpo")


def run_training(job: dict) -> dict:
    """Child process: train and save into job["output"]."""
    config = ORPOStage.model_validate(job["config"])
    return trainer.train_policy(job, config, *trainer.trl_classes(config.trl_module, "ORPO"),
                                trainer.preference_pairs(job, "orpo"), shown=("rewards/accuracies", "rewards/margins"),
                                beta=config.beta)
