"""Stage `train_kto`: Kahneman-Tversky Optimization with TRL's KTOTrainer, on top of the SFT result.

KTO learns from unpaired feedback: single answers labelled good or bad (a thumbs up or down), which is
what production logs usually hold. Its data is the preference split: unpaired rows (prompt/completion/
label) as they are, and each chosen/rejected pair as one good and one bad answer. The reference model
is the adapter-off model, as for DPO. Output: an `adapter` artifact on the SFT result (or a full `model`).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from storage import ArtifactRef
from tasks import trainer
from tasks.stage import RunContext, stage
from tasks.trainer import PolicyStage

LIBRARIES = trainer.LIBRARIES


class KTOStage(PolicyStage):
    """Kahneman-Tversky Optimization (trl.KTOTrainer) on good/bad answers. `trainer_args` go to trl.KTOConfig."""

    trl_config: ClassVar[str] = "trl.trainer.kto_config.KTOConfig"  # checks trainer_args keys at spec time

    beta: float = Field(0.1, gt=0, le=100, description="how far the policy may move from the reference model "
                                                       "(higher: less)")
    learning_rate: float = trainer.learning_rate(5.0e-5)
    desirable_weight: float = Field(1.0, gt=0, le=100, description="weight of the good answers' loss (raise it "
                                                                   "when good answers are the rarer kind)")
    undesirable_weight: float = Field(1.0, gt=0, le=100, description="weight of the bad answers' loss")


@stage("train_kto", config=KTOStage, needs=("data.preference",), key_metric="train_loss", libraries=LIBRARIES,
       accelerator=True)
def train_kto(run: RunContext, model: ArtifactRef, data: ArtifactRef, config: KTOStage) -> ArtifactRef:
    return trainer.run_trainer(run, model, data, config, suffix="kto")


def run_training(job: dict) -> dict:
    """Child process: train and save into job["output"]."""
    from trl import KTOConfig, KTOTrainer

    config = KTOStage.model_validate(job["config"])
    return trainer.train_policy(job, config, KTOConfig, KTOTrainer, feedback(job["data"]),
                                shown=("kl", "rewards/chosen_sum"), beta=config.beta,
                                desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight)


def feedback(path: str):
    """prompt/completion/label rows: unpaired rows as they are, each pair as a good and a bad answer."""
    import json

    from datasets import Dataset

    rows = []
    with open(path, encoding="utf-8") as f:
        for row in map(json.loads, f):
            if row.get("chosen"):
                rows += [{"prompt": row["prompt"], "completion": row["chosen"], "label": True},
                         {"prompt": row["prompt"], "completion": row["rejected"], "label": False}]
            else:
                rows.append({"prompt": row["prompt"], "completion": row["completion"], "label": row["label"]})
    return Dataset.from_list(rows)
