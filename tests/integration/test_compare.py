"""The candidate judged against production by an LLM judge that alignflow serves itself (SmolLM2-135M on
vLLM, its verdict held to EvalScope's JSON schema: what is tested is the plumbing, the position swap and
the statistics, not the judge's wisdom). The first run has nothing in production and promotes; the second
trains another candidate, evaluates the production model on the same questions, has the judge rule on
each pair in both orders, and the gate rejects it on min_win_rate_vs_production."""

from __future__ import annotations

import json

import pytest

from storage import open_store
from tests.conftest import SMOLLM2, run_cli, write_spec

pytestmark = pytest.mark.slow

SPEC = """
name: versus
model: builtin://tiny-qwen2
data: {{sft: builtin://reverse/sft, eval: builtin://reverse/eval}}
stages:
  sft: {{tuner: full, max_length: 64, trainer_args: {{max_steps: 2}}}}
  evaluate: {{engine: llm_ckpt, limit: 6, max_tokens: 8}}
  compare: {{judge: {judge}, max_tokens: 48, reasoning_chars: 12}}
  gate: {{min_win_rate_vs_production: 1.0}}
store: {store}
"""


def test_a_served_judge_rules_on_both_orders_and_the_gate_rejects_on_the_win_rate(tmp_path):
    store_dir = tmp_path / "store"
    spec = write_spec(tmp_path / "versus.yaml", SPEC.format(store=store_dir, judge=SMOLLM2))
    first = run_cli("run", str(spec))
    assert first.code == 0, first.output[-3000:]
    assert "compare" not in first.status() and "vs_production" not in first.summary["scores"]  # nothing to judge

    second = run_cli("run", str(spec), "--set", "stages.sft.learning_rate=0.01")
    assert second.code == 3, second.output[-3000:]
    status = second.status()
    assert status["evaluate[production]"] == "ran" and status["compare"] == "ran"
    assert status["download_model[judge]"] == "ran"
    versus = second.summary["scores"]["vs_production"]
    assert versus["wins"] + versus["ties"] + versus["losses"] + versus["unjudged"] == 6
    assert "min_win_rate_vs_production 1.000" in second.stdout and "win/tie/loss" in second.stdout
    assert "LLM judge vs production: win " in second.stdout

    store = open_store(str(store_dir))
    report = store.ref("versus/compare-candidate")
    rows = [json.loads(line) for line in (store.get_dir(report) / "judgements.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["candidate"] is not None and r["production"] is not None for r in rows)
    for row in rows:  # both orders asked; the result follows from the two verdicts
        first_verdict, second_verdict = row["candidate_as_a"]["verdict"], row["candidate_as_b"]["verdict"]
        assert row["candidate_as_a"]["reply"] and row["candidate_as_b"]["reply"]
        if first_verdict and second_verdict:
            agree = {"A>>B": 1, "A>B": 1, "A=B": 0, "B>A": -1, "B>>A": -1}
            a, b = agree[first_verdict], -agree[second_verdict]
            assert row["result"] == ("win" if a == b == 1 else "loss" if a == b == -1 else "tie")
        else:
            assert row["result"] is None
    assert report.metrics["judge"] == SMOLLM2 and report.metrics["n"] == 6 - report.metrics["unjudged"]
    shown = (store.get_dir(report) / "comparison.md").read_text()  # the dashboard's view
    assert "| # | question | candidate | production | candidate as A | candidate as B | result |" in shown
    assert shown.count("\n| ") == 6 + 1 and "positions swapped" in shown
    assert store.alias_target("versus/eval-candidate", "production") == 1  # the rejected candidate did not promote
