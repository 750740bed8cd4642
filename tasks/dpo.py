"""Stage `train_dpo`: Direct Preference Optimization with TRL's DPOTrainer, on top of the SFT result.

With `tuner: lora` the policy is a new LoRA adapter on the SFT weights, and the reference model is those
same weights with the adapter disabled (no second copy in memory). `loss_type` picks any of TRL's DPO
losses (IPO, hinge, robust, ...), or a weighted mixture of several (MPO). `pairs` picks the data: the
preference split (offline), pairs the policy itself produced, rated by the reward model (on_policy: the
`sample` and `score` stages run first), or both (mixed). Output: an `adapter` artifact whose base is the
SFT artifact (or a full `model` with `tuner: full`).
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from storage import ArtifactRef
from tasks import trainer
from tasks.on_policy import SampleSpec, ScoreSpec
from tasks.stage import RunContext, stage
from tasks.trainer import PolicyStage

LIBRARIES = trainer.LIBRARIES
DPOLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]  # TRL 1.16's names


class DPOStage(PolicyStage):
    """Direct Preference Optimization (trl.DPOTrainer) on the SFT result. `trainer_args` go to trl.DPOConfig."""

    trl_config: ClassVar[str] = "trl.trainer.dpo_config.DPOConfig"  # checks trainer_args keys at spec time

    beta: float = Field(0.1, gt=0, le=100, description="DPO temperature: higher keeps the policy closer to the "
                                                       "reference model")
    learning_rate: float = trainer.learning_rate(5.0e-5)
    loss_type: DPOLoss | list[DPOLoss] = Field(
        "sigmoid", description="TRL's DPO loss: sigmoid (DPO), ipo, hinge, robust, ...; a list mixes several")
    loss_weights: Optional[list[float]] = Field(None, description="one weight per loss_type entry (default: 1 each)")
    pairs: Literal["offline", "on_policy", "mixed"] = Field(
        "offline", description="offline: the preference split; on_policy: the policy's own answers to the split's "
                               "prompts, best vs worst by the reward model (needs stages.reward); mixed: both")
    sampling: SampleSpec = Field(default_factory=SampleSpec, description="how on-policy answers are drawn")
    scoring: ScoreSpec = Field(default_factory=ScoreSpec, description="how on-policy answers become pairs")

    def needs(self) -> tuple[str, ...]:
        return ("data.preference",) + (("stages.reward",) if self.pairs != "offline" else ())

    @model_validator(mode="after")
    def _weights_match(self) -> "DPOStage":
        losses = self.loss_type if isinstance(self.loss_type, list) else [self.loss_type]
        if self.loss_weights is not None and len(self.loss_weights) != len(losses):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} entries for {len(losses)} loss types; "
                             "give one weight per loss_type")
        return self


@stage("train_dpo", config=DPOStage, needs=("data.preference",), key_metric="rewards_accuracies",
       libraries=LIBRARIES, accelerator=True)
def train_dpo(run: RunContext, model: ArtifactRef, data: ArtifactRef, config: DPOStage) -> ArtifactRef:
    return trainer.run_trainer(run, model, data, config, suffix="dpo")


def run_training(job: dict) -> dict:
    """Child process: train and save into job["output"]."""
    from trl import DPOConfig, DPOTrainer

    config = DPOStage.model_validate(job["config"])
    losses = config.loss_type if isinstance(config.loss_type, list) else [config.loss_type]
    return trainer.train_policy(job, config, DPOConfig, DPOTrainer, trainer.preference_pairs(job, "dpo"),
                                shown=("rewards/accuracies", "rewards/margins"), beta=config.beta,
                                loss_type=losses, loss_weights=config.loss_weights)
