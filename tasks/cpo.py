"""Stage `train_cpo`: Contrastive Preference Optimization and SimPO (TRL's experimental CPOTrainer).

Both are reference-free. CPO is a DPO-like loss without the reference model plus an SFT term on the
chosen answer; SimPO (`loss_type: simpo`) scores an answer by its length-normalized log-likelihood and
asks for a margin `simpo_gamma` between chosen and rejected. Output: an `adapter` artifact on the model
so far (or a full `model`).
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field

from storage import ArtifactRef
from tasks import trainer
from tasks.stage import RunContext, stage
from tasks.trainer import PolicyStage

LIBRARIES = trainer.LIBRARIES


class CPOStage(PolicyStage):
    """CPO or SimPO (trl.experimental.cpo). `trainer_args` go to its CPOConfig."""

    trl_config: ClassVar[str] = "trl.experimental.cpo.cpo_config.CPOConfig"  # checks trainer_args keys at spec time

    loss_type: Literal["sigmoid", "hinge", "ipo", "simpo", "alphapo"] = Field(
        "sigmoid", description="sigmoid: CPO; simpo: SimPO (length-normalized, with a target margin); hinge, "
                               "ipo, alphapo as TRL names them")
    beta: float = Field(0.1, gt=0, le=100, description="temperature of the preference loss (SimPO: 2.0 is usual)")
    cpo_alpha: float = Field(1.0, ge=0, le=100, description="weight of the SFT term on the chosen answer "
                                                            "(0 with simpo gives pure SimPO)")
    simpo_gamma: float = Field(0.5, ge=0, le=100, description="SimPO's target reward margin")
    learning_rate: float = trainer.learning_rate(1.0e-6)
    trl_module: ClassVar[Optional[str]] = "trl.experimental.cpo"


@stage("train_cpo", config=CPOStage, needs=("data.preference",), key_metric="rewards_accuracies",
       libraries=LIBRARIES, accelerator=True)
def train_cpo(run: RunContext, model: ArtifactRef, data: ArtifactRef, config: CPOStage) -> ArtifactRef:
    return trainer.run_trainer(run, model, data, config, suffix="cpo")


def run_training(job: dict) -> dict:
    """Child process: train and save into job["output"]."""
    config = CPOStage.model_validate(job["config"])
    return trainer.train_policy(job, config, *trainer.trl_classes(config.trl_module, "CPO"),
                                trainer.preference_pairs(job, "cpo"),
                                shown=("rewards/accuracies", "rewards/margins"), loss_type=config.loss_type,
                                beta=config.beta, cpo_alpha=config.cpo_alpha, simpo_gamma=config.simpo_gamma)
