"""Outputs that are valid but useless are named with their fix: in the metrics, and in the run summary."""

from __future__ import annotations

import json
import logging

from flows.runner import render
from tasks.degeneracy import empty_answers, few_pairs, mostly_duplicates, noted, training_warnings


def test_too_few_on_policy_pairs_are_named_with_the_fix():
    warning = few_pairs(pairs=18, prompts=1200, ties=1182)
    assert warning.startswith("only 18 on-policy pairs from 1200 prompts (1182 were ties)")
    assert "sampling.temperature" in warning and "pairs: mixed" in warning
    assert few_pairs(pairs=600, prompts=1200, ties=600) is None
    assert few_pairs(pairs=15, prompts=20, ties=5) is None  # a small set that mostly paired up


def test_a_flat_loss_a_zero_margin_and_a_handful_of_steps_are_each_named():
    flat = [{"loss": 0.6931, "rewards/margins": 0.0}, {"loss": 0.6931, "rewards/margins": 0.0}]
    warnings = training_warnings("dpo", flat, steps=2)
    assert [w.split(" ")[1:4] for w in warnings] == [["loss", "did", "not"], ["reward", "margin", "stayed"],
                                                      ["only", "2", "optimizer"]]
    assert "stages.dpo.learning_rate" in warnings[0] and "stages.dpo.batch_size" in warnings[2]
    learning = [{"loss": 2.0, "rewards/margins": 0.0}, {"loss": 0.5, "rewards/margins": 1.2}]
    assert training_warnings("dpo", learning, steps=75) == []


def test_mostly_duplicates_and_all_empty_answers_are_named(tmp_path):
    assert mostly_duplicates(read=100, duplicates=60).startswith("60 of 100 rows were exact duplicates")
    assert mostly_duplicates(read=100, duplicates=10) is None
    predictions = tmp_path / "predictions-qa.jsonl"
    answer = lambda text: json.dumps({"model_output": {"choices": [{"message": {"content": text}}]}})  # noqa: E731
    predictions.write_text("\n".join([answer(""), answer("  "), answer([{"type": "text", "text": ""}])]) + "\n")
    assert empty_answers([predictions]).startswith("every one of the 3 answers was empty")
    predictions.write_text("\n".join([answer(""), answer("c b a")]) + "\n")
    assert empty_answers([predictions]) is None


def test_warnings_go_to_the_metrics_the_log_and_the_run_summary(caplog):
    with caplog.at_level(logging.WARNING):
        metrics = noted({"pairs": 18}, [few_pairs(18, 1200, 1182), None], "score", logging.getLogger("test"))
    assert metrics["pairs"] == 18 and len(metrics["warnings"]) == 1
    assert "score: only 18 on-policy pairs" in caplog.text
    assert noted({"pairs": 600}, [None], "score", logging.getLogger("test")) == {"pairs": 600}
    text = render({"name": "d", "status": "completed", "store": "s",
                   "steps": [{"stage": "score", "status": "ran", "seconds": 1, "warnings": metrics["warnings"]}]})
    assert text.startswith("pipeline d: completed  (store: s)")
    assert "warnings (1; degenerate outputs" in text and "  score: only 18 on-policy pairs" in text
