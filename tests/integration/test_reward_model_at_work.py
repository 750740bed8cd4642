"""The reward model earns its place: it rates the policy's own answers into on-policy DPO pairs, it is
GRPO's reward, and it judges every candidate against the SFT policy on held-out prompts (real Prefect,
real trainer processes, the tiny model, the local store). The SFT stage is kept short on purpose, so
there is something left to learn."""

from __future__ import annotations

import pytest

from storage import open_store
from tests.conftest import run_cli, write_spec

pytestmark = pytest.mark.slow

SPEC = """
name: rm
model: builtin://tiny-qwen2
data: {{sft: builtin://reverse/sft, preference: builtin://reverse/preference, eval: builtin://reverse/eval}}
store: {store}
stages:
  sft: {{tuner: full, learning_rate: 3.0e-3, batch_size: 16, max_length: 64, trainer_args: {{max_steps: 80}}}}
  reward: {{learning_rate: 1.0e-3, batch_size: 16, max_length: 64}}
"""
DPO = """  evaluate: {engine: llm_ckpt, max_tokens: 16, batch_size: 50, limit: 40}
  judge: {prompts: 100, max_tokens: 16}
  dpo: {tuner: lora, epochs: 2, learning_rate: 1.0e-3, batch_size: 16, max_length: 64, lora: {r: 8, alpha: 16},
        pairs: on_policy, sampling: {k: 4, max_tokens: 16, max_prompts: 400}}
  gate: {min_win_rate: 0.5}
"""
GRPO = """  grpo: {tuner: lora, learning_rate: 2.0e-4, batch_size: 16, num_generations: 4, max_completion_length: 16,
         lora: {r: 8, alpha: 16}, rewards: {reward_model: 1.0, exact_match: 1.0},
         trainer_args: {max_steps: 60, logging_steps: 1}}
"""


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("rm") / "store"


def test_on_policy_dpo_pairs_are_stored_with_their_lineage_and_the_policy_beats_sft(tmp_path, store_dir):
    spec = write_spec(tmp_path / "dpo.yaml", SPEC.format(store=store_dir) + DPO)
    result = run_cli("run", str(spec))
    assert result.code == 0, result.output[-3000:]
    status = result.status()
    assert [s for s in status if s in ("sample", "score", "train_dpo", "judge")] == ["sample", "score", "train_dpo",
                                                                                     "judge"]

    store = open_store(str(store_dir))
    pairs = store.ref("rm/data-on-policy")
    manifest = store.manifest(pairs.digest)
    sft, reward = store.ref("rm/sft"), store.ref("rm/reward")
    assert manifest["metadata"]["policy"]["digest"] == sft.digest  # the policy that answered
    assert manifest["metadata"]["reward_model"]["digest"] == reward.digest  # the judge of its answers
    assert manifest["metadata"]["sampling"]["k"] == 4 and manifest["metadata"]["engine"] == "transformers"
    assert set(manifest["lineage"]["inputs"]) == {"samples", "reward_model", "policy"}
    assert pairs.metrics["pairs"] + pairs.metrics["ties"] == 400
    dpo = store.manifest(store.ref("rm/dpo").digest)
    assert dpo["lineage"]["inputs"]["data"]["digest"] == pairs.digest  # DPO trained on exactly those pairs

    win_rate = result.summary["scores"]["win_rate"]
    assert win_rate > 0.5, win_rate  # the reward model prefers the DPO policy's answers to the SFT policy's
    assert f"the candidate wins {win_rate:.1%} of held-out prompts" in result.stdout
    assert store.ref("rm/judge-candidate").metrics["win_rate"] == win_rate


def test_grpo_with_the_reward_model_raises_the_reward(tmp_path, store_dir):
    spec = write_spec(tmp_path / "grpo.yaml", SPEC.format(store=store_dir) + GRPO)
    result = run_cli("run", str(spec))
    assert result.code == 0, result.output[-3000:]
    assert result.status()["train_sft"] == "cached" and result.status()["train_reward_model"] == "cached"
    grpo = open_store(str(store_dir)).ref("rm/grpo")
    assert grpo.metrics["steps"] == 60
    assert grpo.metrics["reward_last_tenth"] > grpo.metrics["reward_first_tenth"], grpo.metrics
