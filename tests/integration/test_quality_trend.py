"""Quality over time, through real runs: three data versions arrive and each candidate is promoted, so the
history has three production versions, each with its data version and its score per set; then a
candidate that holds the primary score but drops on a secondary set by more than its allowance is
rejected, naming the set and the drop."""

from __future__ import annotations

import json

import pytest

from flows.trend import production_history
from storage import open_store
from tasks.builtin import reverse_task
from tests.conftest import run_cli, write_spec

pytestmark = pytest.mark.slow

SPEC = """
name: trend
model: builtin://tiny-qwen2
data: {{eval: store://trend/eval}}
stages:
  evaluate:
    engine: llm_ckpt
    limit: 4
    max_tokens: 4
    sets: [{{name: choice, kind: mcq, path: {folder}, answer_by: likelihood}}]
  gate: {{max_set_regression: {{choice: 0.1}}}}
store: {store}
"""


def choice_folder(path, answer: str):
    """One question, two options: the model's pick by likelihood is fixed, so `answer` makes it right or wrong."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "reverse_val.csv").write_text(f"id,question,A,B,answer\n0,reverse: a b c,c b a,a b c,{answer}\n")
    return path


def add_eval_version(tmp_path, store: str, first: int) -> None:
    rows = reverse_task.splits()["eval"][first:first + 4]
    data = tmp_path / f"eval-{first}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_cli("data", "add", "trend/eval", str(data), "--store", store).code == 0


def test_three_production_versions_make_a_trend_and_a_drop_on_a_secondary_set_is_rejected(tmp_path):
    store_dir, folder = str(tmp_path / "store"), tmp_path / "choice"
    spec = write_spec(tmp_path / "trend.yaml", SPEC.format(folder=folder, store=store_dir))
    answer = "A"
    for version in range(3):
        choice_folder(folder, answer)
        add_eval_version(tmp_path, store_dir, 4 * version)
        result = run_cli("run", str(spec))
        assert result.code == 0, result.output[-3000:]
        if version == 0 and result.summary["scores"]["sets"]["choice"]["candidate"] == 0:
            answer = "B"  # the model picks B: from the next version on, it is right

    rows = production_history(open_store(store_dir), "trend")
    assert [(r["version"], r["data"]) for r in rows] == [(1, "eval@1"), (2, "eval@2"), (3, "eval@3")]
    assert rows[-1]["sets"]["choice"] == 1.0
    history = run_cli("artifacts", "--store", store_dir, "history", "trend")
    assert history.code == 0 and "eval@3" in history.stdout and "choice" in history.stdout, history.output

    choice_folder(folder, "B" if answer == "A" else "A")  # now the model's pick is wrong: 1.0 -> 0.0
    rejected = run_cli("run", str(spec))
    assert rejected.code == 3, rejected.output[-3000:]
    assert "choice: 0.000 is 1.000 below production's 1.000, more than max_set_regression 0.100" in rejected.stdout
    assert len(production_history(open_store(store_dir), "trend")) == 3
