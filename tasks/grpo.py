"""Stage `train_grpo`: Group Relative Policy Optimization with TRL's GRPOTrainer.

The policy answers each prompt `num_generations` times; each answer's reward is a weighted sum of the
trained reward model's score and rule-based rewards named in the spec (`exact_match` against the
reference answer, `length_penalty`); answers better than their group's mean are reinforced. Prompts (and
references) come from the SFT split (the last assistant turn is the reference) or the preference split
(the chosen answer is). Output: an `adapter` artifact on the model so far (or a full `model`); metrics
include the mean reward over the first and the last tenth of training.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from storage import ArtifactRef
from tasks import trainer
from tasks.config import StageConfig
from tasks.stage import RunContext, stage
from tasks.trainer import PolicyStage

LIBRARIES = trainer.LIBRARIES


class GRPORewards(StageConfig):
    """Weights of the rewards GRPO sums per answer (0 turns one off)."""

    reward_model: float = Field(1.0, ge=0, le=1000, description="the trained reward model's score (needs "
                                                                "stages.reward)")
    exact_match: float = Field(0.0, ge=0, le=1000, description="1 when the answer equals the reference (trimmed), "
                                                               "else 0")
    length_penalty: float = Field(0.0, ge=0, le=1000, description="minus the answer's length in tokens over "
                                                                  "max_completion_length")


class GRPOStage(PolicyStage):
    """GRPO (trl.GRPOTrainer) with the reward model and rule-based rewards. `trainer_args` go to trl.GRPOConfig."""

    trl_config: ClassVar[str] = "trl.trainer.grpo_config.GRPOConfig"  # checks trainer_args keys at spec time

    prompts: Literal["sft", "preference"] = Field(
        "sft", description="where prompts and reference answers come from: the SFT split (last assistant turn) or "
                           "the preference split (chosen answer)")
    rewards: GRPORewards = Field(default_factory=GRPORewards, description="reward weights")
    num_generations: int = Field(4, ge=2, le=256, description="answers per prompt; batch_size must be a multiple")
    max_completion_length: int = Field(64, ge=1, le=65536, description="generation budget per answer")
    temperature: float = Field(1.0, gt=0, le=5, description="sampling temperature of the answers")
    beta: float = Field(0.0, ge=0, le=100, description="KL penalty against the reference model (0: none, and no "
                                                       "reference model in memory)")
    learning_rate: float = trainer.learning_rate(1.0e-5)

    @model_validator(mode="after")
    def _consistent(self) -> "GRPOStage":
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of num_generations "
                             f"{self.num_generations}: each step takes whole groups of answers")
        if not any(self.rewards.model_dump().values()):
            raise ValueError("rewards: every weight is 0; give reward_model, exact_match or length_penalty a weight")
        return self

    def needs(self) -> tuple[str, ...]:
        return (f"data.{self.prompts}",) + (("stages.reward",) if self.rewards.reward_model else ())


@stage("train_grpo", config=GRPOStage, key_metric="reward_last_tenth", libraries=LIBRARIES, accelerator=True)
def train_grpo(run: RunContext, model: ArtifactRef, data: ArtifactRef, reward: Optional[ArtifactRef],
               config: GRPOStage) -> ArtifactRef:
    """`data`: the split the prompts come from; `reward`: the reward model (when its weight is not 0)."""
    extra = {"reward_model": reward} if config.rewards.reward_model else {}
    return trainer.run_trainer(run, model, data, config, suffix="grpo", extra=extra)


def run_training(job: dict) -> dict:
    """Child process: train and save into job["output"]."""
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOStage.model_validate(job["config"])
    funcs, tokenizers, weights = reward_functions(config, job)
    metrics = trainer.train_policy(
        job, config, GRPOConfig, GRPOTrainer, prompts(job["data"]),
        trainer_kwargs={"reward_funcs": funcs, "reward_processing_classes": tokenizers}, reward_weights=weights,
        num_generations=config.num_generations, beta=config.beta,
        max_completion_length=config.max_completion_length, temperature=config.temperature)
    return {**metrics, **reward_trend(job)}


def prompts(path: str):
    """{"prompt": messages without the answer, "reference": the answer} per row of the split."""
    import json

    from datasets import Dataset

    rows = []
    with open(path, encoding="utf-8") as f:
        for row in map(json.loads, f):
            if "messages" in row:
                rows.append({"prompt": row["messages"][:-1], "reference": row["messages"][-1]["content"]})
            elif row.get("chosen"):
                rows.append({"prompt": row["prompt"], "reference": row["chosen"][0]["content"]})
    return Dataset.from_list(rows)


def reward_functions(config: GRPOStage, job: dict) -> tuple[list, list, list[float]]:
    """(reward functions, their tokenizers, weights) for GRPOTrainer: the reward model as a loaded model with
    its tokenizer, the rules as functions of the answers (and the reference column)."""
    funcs, tokenizers, weights = [], [], []
    if config.rewards.reward_model:
        from tasks.reward_model import load_reward_model

        model, tokenizer = load_reward_model(job["reward_model"])
        funcs.append(model)
        tokenizers.append(tokenizer)
        weights.append(config.rewards.reward_model)
    if config.rewards.exact_match:
        funcs.append(exact_match)
        tokenizers.append(None)
        weights.append(config.rewards.exact_match)
    if config.rewards.length_penalty:
        limit = config.max_completion_length

        def length_penalty(completion_ids, **_):
            return [-len(ids) / limit for ids in completion_ids]

        funcs.append(length_penalty)
        tokenizers.append(None)
        weights.append(config.rewards.length_penalty)
    return funcs, tokenizers, weights


def exact_match(completions, reference, **_) -> list[float]:
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(t.strip() == r.strip()) for t, r in zip(texts, reference)]


def reward_trend(job: dict) -> dict:
    """Mean reward over the first and the last tenth of the logged steps: did training raise it?"""
    import json
    from pathlib import Path

    history = json.loads((Path(job["workdir"]) / "history.json").read_text())
    rewards = [h["reward"] for h in history if "reward" in h]
    if not rewards:
        return {}
    tenth = max(1, len(rewards) // 10)
    return {"reward_first_tenth": round(sum(rewards[:tenth]) / tenth, 4),
            "reward_last_tenth": round(sum(rewards[-tenth:]) / tenth, 4)}
