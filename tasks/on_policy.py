"""The settings of on-policy pairs: how answers are drawn from the policy (the `sample` stage) and how the
reward model's scores turn them into pairs (the `score` stage). DPO's spec holds both (stages.dpo.sampling,
stages.dpo.scoring)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from tasks.config import RayWorkers, StageConfig


class SampleSpec(RayWorkers):
    """How answers are drawn from the policy (for on-policy pairs)."""

    k: int = Field(4, ge=2, le=64, description="answers drawn per prompt; the best and the worst become a pair")
    temperature: float = Field(1.0, gt=0, le=5, description="sampling temperature (higher: more varied answers)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the smallest set of tokens with this "
                                                      "much probability")
    max_tokens: int = Field(64, ge=1, le=65536, description="generation budget per answer")
    max_prompts: Optional[int] = Field(None, ge=1, description="sample for at most this many prompts (empty: all)")
    engine: Literal["auto", "vllm", "transformers", "ray"] = Field(
        "auto", description="vllm: the serve env's offline engine; transformers: generate in the worker; auto: "
                            "vLLM on a GPU host where it can run the model, else transformers; ray: transformers "
                            "on `workers` Ray workers, the prompts split between them by batch (distributed/)")
    batch_size: int = Field(16, ge=1, le=4096, description="prompts per generate call (transformers and ray)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="sampling seed (engine ray: batch i draws with seed + i, "
                                                          "so the answers do not depend on the number of workers)")



class ScoreSpec(StageConfig):
    """How sampled answers become pairs."""

    min_margin: float = Field(0.0, ge=0, le=1000, description="best and worst rewards must differ by more than "
                                                              "this; closer prompts are ties, dropped and counted")
    batch_size: int = Field(16, ge=1, le=4096, description="answers scored at once")
