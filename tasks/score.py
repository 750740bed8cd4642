"""Stage `score`: the reward model rates each sampled answer, and each prompt's best against its worst
becomes an on-policy preference pair.

A prompt whose best and worst answers are closer than `min_margin` (or identical) teaches nothing: it is
dropped and counted (`ties`). With `pairs: mixed` the offline pairs are added after the on-policy ones.
Output: `<pipeline>/data-on-policy` (kind `dataset`, canonical preference rows in data.jsonl, report.json)
whose metadata names the policy, the reward model and the sampling settings.
"""

from __future__ import annotations

import json
import statistics
from typing import Optional

from alignflow.errors import DataError
from storage import ArtifactRef
from tasks.models import base_record
from tasks.on_policy import ScoreSpec
from tasks.stage import RunContext, publish, stage

LIBRARIES = ("torch", "transformers")


@stage("score", config=ScoreSpec, key_metric="pairs", libraries=LIBRARIES, accelerator=True)
def score(run: RunContext, samples: ArtifactRef, reward: ArtifactRef, policy: ArtifactRef,
          offline: Optional[ArtifactRef], config: ScoreSpec) -> ArtifactRef:
    """`policy`: the model that was sampled (named in the lineage); `offline`: pairs to add (pairs: mixed)."""
    from prefect import get_run_logger

    from tasks.degeneracy import few_pairs, noted
    from tasks.reward_model import rewards, stored_reward_model

    store, out = run.open_store(), run.workdir() / "output"
    model, tokenizer, max_length = stored_reward_model(store, reward)
    with open(store.get_dir(samples) / "samples.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    answers = [row["prompt"] + [{"role": "assistant", "content": a}] for row in rows for a in row["completions"]]
    scores = rewards(model, tokenizer, answers, max_length, config.batch_size)
    pairs, margins, ties, start = [], [], 0, 0
    for row in rows:
        k = len(row["completions"])
        rated = sorted(zip(scores[start:start + k], row["completions"]), key=lambda pair: pair[0])
        start += k
        (low, worst), (high, best) = rated[0], rated[-1]
        if high - low <= config.min_margin or best == worst:
            ties += 1
            continue
        margins.append(high - low)
        pairs.append({"prompt": row["prompt"], "chosen": [{"role": "assistant", "content": best}],
                      "rejected": [{"role": "assistant", "content": worst}]})
    if not pairs:
        raise DataError(f"score: all {len(rows)} prompts were ties (best and worst answers within min_margin "
                        f"{config.min_margin:g} of each other); sample more varied answers (stages.dpo.sampling: "
                        "higher temperature or k) or lower stages.dpo.scoring.min_margin")
    offline_rows = (store.get_dir(offline) / "data.jsonl").read_text(encoding="utf-8") if offline else ""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "data.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
        f.write(offline_rows)
    metrics = {"rows": len(pairs) + offline_rows.count("\n"), "pairs": len(pairs), "ties": ties,
               "reward_margin_mean": round(statistics.fmean(margins), 4),
               "reward_mean": round(statistics.fmean(scores), 4)}
    metrics = noted(metrics, [few_pairs(len(pairs), len(rows), ties)], "score", get_run_logger())
    (out / "report.json").write_text(json.dumps(metrics, indent=2))
    get_run_logger().info("score: %d on-policy pairs from %d prompts (%d ties dropped), mean margin %.3f%s",
                          len(pairs), len(rows), ties, metrics["reward_margin_mean"],
                          f", plus {metrics['rows'] - len(pairs)} offline pairs" if offline else "")
    sampling = store.manifest(samples.digest)["metadata"]
    return publish(run, "data-on-policy", "dataset", out, stage="score", config=config,
                   inputs={"samples": samples, "reward_model": reward, "policy": policy,
                           **({"offline": offline} if offline else {})},
                   libraries=LIBRARIES, metrics=metrics,
                   metadata={"policy": base_record(policy), "reward_model": base_record(reward),
                             "sampling": sampling.get("sampling"), "engine": sampling.get("engine"),
                             "min_margin": config.min_margin})
