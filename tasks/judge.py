"""Stage `judge`: the reward model compares the candidate with the SFT policy on held-out prompts.

Both models answer the eval split's prompts (greedy, the same budget); the reward model scores every
answer. Reported: each model's mean reward and the candidate's win rate (a win counts 1, a tie 0.5).
Runs whenever the pipeline trains a reward model and evaluates; the gate can require `min_win_rate`.
Output: `<pipeline>/judge-candidate` (kind `judge_report`): per-prompt answers and rewards in
judgements.jsonl.
"""

from __future__ import annotations

import json
import statistics

from typing import Literal

from pydantic import Field

from storage import ArtifactRef
from tasks.config import RayWorkers
from tasks.models import conversations
from tasks.stage import RunContext, publish, stage

LIBRARIES = ("torch", "transformers", "peft")


class JudgeStage(RayWorkers):
    """Reward-model judgement of the candidate against the SFT policy (runs when stages.reward is set)."""

    prompts: int = Field(64, ge=1, le=1000000, description="held-out prompts from the eval split")
    max_tokens: int = Field(64, ge=1, le=65536, description="generation budget per answer (greedy)")
    batch_size: int = Field(16, ge=1, le=4096, description="prompts answered, and answers scored, at once")
    engine: Literal["local", "ray"] = Field("local", description="local: answer here; ray: on `workers` Ray "
                                                                 "workers, the prompts split by batch")



@stage("judge", config=JudgeStage, key_metric="win_rate", libraries=LIBRARIES, accelerator=True)
def judge(run: RunContext, candidate: ArtifactRef, reference: ArtifactRef, reward: ArtifactRef,
          prompts: ArtifactRef, config: JudgeStage) -> ArtifactRef:
    from prefect import get_run_logger

    from tasks.generate import hf_generate, ready_to_answer
    from tasks.reward_model import rewards, stored_reward_model

    store, workdir = run.open_store(), run.workdir()
    asked = conversations(store.get_dir(prompts) / "data.jsonl", config.prompts, with_answers=False)
    answers = {}
    for role, ref in (("candidate", candidate), ("reference", reference)):
        folder, texts = ready_to_answer(store, ref, asked, workdir / role)
        if config.engine == "ray":
            from distributed import fanout
            from tasks.models import chain_refs

            settings = {"max_tokens": config.max_tokens, "batch_size": config.batch_size, "do_sample": False}
            result = fanout.answer(store, run.credentials_block, chain_refs(store, ref), texts, settings, config,
                                   workdir / f"ray-{role}", get_run_logger())
        else:
            result = hf_generate(folder, texts, config.max_tokens, config.batch_size, do_sample=False)
        answers[role] = [a[0] for a in result["completions"]]
    model, tokenizer, max_length = stored_reward_model(store, reward)
    scores = {role: rewards(model, tokenizer, [m + [{"role": "assistant", "content": a}]
                                               for m, a in zip(asked, answers[role])], max_length, config.batch_size)
              for role in answers}
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(scores["candidate"], scores["reference"])]
    metrics = {"win_rate": round(statistics.fmean(wins), 4), "prompts": len(asked),
               "reward_mean": round(statistics.fmean(scores["candidate"]), 4),
               "reference_reward_mean": round(statistics.fmean(scores["reference"]), 4)}
    out = workdir / "output"
    out.mkdir(exist_ok=True)
    with open(out / "judgements.jsonl", "w", encoding="utf-8") as f:
        for i, messages in enumerate(asked):
            f.write(json.dumps({"prompt": messages, **{f"{role}_answer": answers[role][i] for role in answers},
                                **{f"{role}_reward": round(scores[role][i], 4) for role in scores}},
                               ensure_ascii=False) + "\n")
    get_run_logger().info("judge: candidate wins %.1f%% of %d held-out prompts against %s; mean reward %.3f vs %.3f",
                          100 * metrics["win_rate"], len(asked), reference.label, metrics["reward_mean"],
                          metrics["reference_reward_mean"])
    return publish(run, "judge-candidate", "judge_report", out, stage="judge", config=config,
                   inputs={"candidate": candidate, "reference": reference, "reward_model": reward, "prompts": prompts},
                   libraries=LIBRARIES, metrics=metrics)
