"""A 3-point DPO beta sweep through real runs: SFT trains once (the other two children take it from the
cache), each child is a normal run held back from promotion, exactly one candidate (the winner's) is
promoted, and the comparison is printed and kept as JSON."""

from __future__ import annotations

import json

import pytest

from flows.trend import production_history
from storage import open_store
from tests.conftest import run_cli, write_spec

pytestmark = pytest.mark.slow

SPEC = """
name: sweeper
model: builtin://tiny-qwen2
data: {{sft: builtin://reverse/sft, preference: builtin://reverse/preference, eval: builtin://reverse/eval}}
stages:
  sft: {{tuner: lora, max_length: 64, trainer_args: {{max_steps: 4}}}}
  dpo: {{max_length: 64, trainer_args: {{max_steps: 2}}}}
  evaluate: {{engine: llm_ckpt, limit: 4, max_tokens: 8}}
  gate: {{}}
store: {store}
"""


def test_a_beta_sweep_trains_sft_once_and_promotes_only_the_best_candidate(tmp_path):
    store_dir = tmp_path / "store"
    spec = write_spec(tmp_path / "sweep.yaml", SPEC.format(store=store_dir))
    out = tmp_path / "sweep.json"
    result = run_cli("sweep", str(spec), "--grid", "stages.dpo.beta=0.05,0.1,0.2", "--json", str(out))
    assert result.code == 0, result.output[-3000:]
    outcome = json.loads(out.read_text())
    assert [r["label"] for r in outcome["results"]] == ["beta=0.05", "beta=0.1", "beta=0.2"]
    assert all(r["status"] == "held for the sweep" for r in outcome["results"])
    assert outcome["winner"] in {r["label"] for r in outcome["results"]}
    assert outcome["shipped"]["status"] == "completed"
    sft = [next(s["status"] for s in r["steps"] if s["stage"] == "train_sft") for r in outcome["results"]]
    assert sft == ["ran", "cached", "cached"]  # SFT trained once
    assert outcome["shipped"]["steps"] and all(
        s["status"] in ("cached", "unchanged") for s in outcome["shipped"]["steps"] if s["stage"] != "gate")
    store = open_store(str(store_dir))
    assert store.versions("sweeper/eval-candidate") == [1, 2, 3]  # one report per point, the winner's replay reused
    assert store.alias_target("sweeper/eval-candidate", "production") is not None
    assert store.versions("sweeper/dpo") == [1, 2, 3] and store.versions("sweeper/sft") == [1]
    [winner] = [r for r in outcome["results"] if r["label"] == outcome["winner"]]
    assert len({r["model"] for r in outcome["results"]}) == 3  # three candidates ...
    assert [r["model"] for r in production_history(store, "sweeper")] == [winner["model"]]  # ... one promoted
    assert "beta=0.05" in result.stdout and "(winner)" in result.stdout
    assert_dashboard_shows(outcome["winner"])


def assert_dashboard_shows(winner: str) -> None:
    """The sweep's flow run has the comparison: a row per point and the chart."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["sweeper-sweep"])))
    assert f"| {winner} | held for the sweep (winner) |" in artifact.data
    assert "data:image/svg+xml;base64," in artifact.data and artifact.data.count("| beta=") == 3
