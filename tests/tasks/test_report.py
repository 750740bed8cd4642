"""What training shows in the dashboard: artifact keys Prefect accepts, and the loss-curve picture."""

import base64
import re

from tasks.report import artifact_key, training_curves_markdown


def test_artifact_keys_are_lowercase_letters_digits_and_dashes():
    assert artifact_key("demo.v2", "train_dpo") == "demo-v2-train-dpo"
    assert artifact_key("demo", "evaluate[candidate]") == "demo-evaluate-candidate"


def test_dpo_history_gives_a_loss_and_a_margin_chart():
    history = [{"step": s, "loss": 1.0 / s, "rewards/margins": 0.1 * s} for s in range(1, 6)] + [{"train_loss": 0.3}]
    markdown = training_curves_markdown(history, "train_dpo")
    charts = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert len(charts) == 2
    svg = base64.b64decode(charts[1]).decode()
    assert svg.startswith("<svg") and "reward margin" in svg and svg.count("<polyline") == 1
    assert "reward margin (chosen - rejected) 0.5" in markdown


def test_no_history_no_chart():
    assert training_curves_markdown([{"train_loss": 0.3}], "train_sft") == ""
