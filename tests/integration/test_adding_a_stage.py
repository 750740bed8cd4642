"""A new stage takes its module, its config line in the spec and one line in the flow, as
docs/ARCHITECTURE.md ("Adding a stage") describes; the spec's checks, the run summary, docs/CONFIG.md's
tables and the cache follow from its declaration. The stage is added to a copy of the code, then run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

MODULE = '''"""Stage `count_params`: how many parameters the model so far has (a throwaway stage)."""

from __future__ import annotations

from pydantic import Field

from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.stage import RunContext, publish, stage


class CountStage(StageConfig):
    """Counts the model's parameters."""

    unit: int = Field(1, ge=1, le=10**9, description="report the count in units of this many parameters")


@stage("count_params", config=CountStage, needs=("data.sft",), key_metric="params", libraries=("safetensors",))
def count_params(run: RunContext, model: ArtifactRef, config: CountStage) -> ArtifactRef:
    import math

    from safetensors import safe_open

    folder, total = run.open_store().get_dir(model), 0
    for weights in folder.glob("*.safetensors"):
        with safe_open(weights, "pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    out = run.workdir() / "output"
    out.mkdir()
    (out / "count.json").write_text(str(total))
    return publish(run, "params", "report", out, stage="count_params", config=config, inputs={"model": model},
                   metrics={"params": total // config.unit})
'''
SPEC = """
name: added
model: builtin://tiny-qwen2
data: {{sft: builtin://reverse/sft}}
store: {store}
stages:
  sft: {{tuner: full, max_length: 64, trainer_args: {{max_steps: 4}}}}
  count_params: {{unit: 1000}}
"""


def add_stage(tree: Path) -> None:
    """The three edits the docs ask for, and nothing else."""
    (tree / "tasks" / "count_params.py").write_text(MODULE)
    spec = tree / "flows" / "spec.py"
    text = spec.read_text()
    anchor = "class Stages(StageConfig):"
    assert anchor in text
    text = text.replace("from tasks.config import StageConfig, valid_range",
                        "from tasks.config import StageConfig, valid_range\nfrom tasks.count_params import CountStage")
    head, tail = text.split(anchor)
    docstring_end = tail.index('"""', tail.index('"""') + 3) + 3
    field = '\n    count_params: Optional[CountStage] = Field(None, description="count the parameters")'
    spec.write_text(head + anchor + tail[:docstring_end] + "\n" + field + tail[docstring_end:])
    flow = tree / "flows" / "post_train.py"
    text = flow.read_text()
    anchor = "    reward = steps.run(train_reward_model"
    assert anchor in text
    line = "    steps.run(count_params, run, model, stages.count_params) if stages.count_params else None\n"
    text = text.replace(anchor, line + anchor).replace("from tasks.cpo import train_cpo",
                                                       "from tasks.count_params import count_params\n"
                                                       "from tasks.cpo import train_cpo")
    flow.write_text(text)


def cli(tree: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignflow.cli", *args], cwd=tree, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(tree), **env), timeout=1500)


def test_a_stage_added_through_the_public_seam_runs_is_checked_documented_and_cached(tmp_path):
    tree = tmp_path / "tree"
    for package in ("alignflow", "flows", "tasks", "storage", "serving"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    add_stage(tree)
    env = {"ALIGNFLOW_CACHE": str(tmp_path / "cache")}

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(store=tmp_path / "store"))
    summary = tmp_path / "summary.json"
    result = cli(tree, "run", str(spec), "--json", str(summary), env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = {row["stage"]: row for row in json.loads(summary.read_text())["steps"]}
    assert rows["count_params"]["status"] == "ran"
    assert rows["count_params"]["metric"].startswith("params=")  # the summary reads the declared key metric
    assert int(rows["count_params"]["metric"].split("=")[1]) > 0

    again = cli(tree, "run", str(spec), "--json", str(summary), env=env)
    assert again.returncode == 0
    assert {row["stage"]: row["status"] for row in json.loads(summary.read_text())["steps"]}["count_params"] == "cached"

    spec.write_text(SPEC.format(store=tmp_path / "store").replace("data: {sft: builtin://reverse/sft}", ""))
    refused = cli(tree, "run", str(spec), env=env)
    assert refused.returncode == 2
    assert "stages.count_params: needs data.sft, which is not set" in refused.stderr  # the declared need

    docs = subprocess.run([sys.executable, "-m", "flows.config_docs"], cwd=tree, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(tree)))
    assert "### `stages.count_params`" in docs.stdout and "report the count in units" in docs.stdout
