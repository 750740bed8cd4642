"""Quality over time, read from a real local store: three evaluation reports promoted in turn, each with the
lineage a run records (data -> tokens -> model -> report), as a history, a table, a chart and a command."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from flows.trend import production_history, trend_markdown, trend_table
from storage import open_store
from tests.conftest import run_cli

SETS = [{"qa": 0.50, "mcq": 0.55}, {"qa": 0.60, "mcq": 0.52}, {"qa": 0.70, "mcq": 0.58}]


def publish(store, tmp: Path, name: str, kind: str, stage: str, inputs: dict, metrics: dict | None = None):
    """The next version of `name`, with the lineage `publish` in tasks/stage.py records."""
    folder = tmp / f"{name.replace('/', '-')}-{len(store.versions(name))}"
    folder.mkdir()
    (folder / "content.txt").write_text(f"{name} {len(store.versions(name))}")
    lineage = {"stage": stage, "inputs": {role: {"name": ref.name, "version": ref.version, "digest": ref.digest}
                                          for role, ref in inputs.items()}}
    return store.put_dir(name, kind, folder, lineage=lineage, metrics=metrics)


@pytest.fixture
def store(tmp_path):
    """Three runs of `demo`: new SFT data each time, the eval split once, each report promoted in turn."""
    store = open_store(str(tmp_path / "store"), tmp_path / "cache")
    evaluation = publish(store, tmp_path, "demo/data-eval", "dataset", "convert_dataset", {})
    for sets in SETS:
        data = publish(store, tmp_path, "demo/data-sft", "dataset", "convert_dataset", {})
        tokens = publish(store, tmp_path, "demo/tokens-sft", "tokens", "tokenize", {"data": data})
        model = publish(store, tmp_path, "demo/sft", "model", "train_sft", {"tokens": tokens})
        report = publish(store, tmp_path, "demo/eval-candidate", "eval_report", "evaluate",
                         {"model": model, "data": evaluation},
                         {"metric": "exact_match", "score": sets["qa"], "primary": "qa", "sets": sets})
        store.promote(report, "production")
    return store


def test_each_production_version_is_a_row_with_its_model_data_and_scores(store):
    rows = production_history(store, "demo")
    assert [(r["version"], r["model"], r["data"]) for r in rows] == [
        (1, "demo/sft@1", "sft@1 eval@1"), (2, "demo/sft@2", "sft@2 eval@1"), (3, "demo/sft@3", "sft@3 eval@1")]
    assert [r["sets"] for r in rows] == SETS
    assert [r["promoted"] is not None for r in rows] == [False, False, True]  # known for the current one only
    store.rollback("demo/eval-candidate", "production")
    assert [r["version"] for r in production_history(store, "demo")] == [1, 2]
    assert production_history(store, "other") == []


def test_the_table_has_a_line_per_version_and_a_column_per_set(store):
    header, rule, *lines = trend_table(production_history(store, "demo")).splitlines()
    assert header.split() == ["version", "model", "data", "promoted", "qa", "mcq"]
    assert len(lines) == 3
    assert lines[0].split() == ["1", "demo/sft@1", "sft@1", "eval@1", "0.500", "0.550"]


def test_the_markdown_has_the_table_and_a_chart_with_a_line_per_set(store):
    markdown = trend_markdown(production_history(store, "demo"))
    assert "| version | model | data | promoted | qa | mcq |" in markdown
    assert "| 3 | demo/sft@3 | sft@3 eval@1 |" in markdown
    [chart] = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    svg = base64.b64decode(chart).decode()
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 6
    assert all(f">{label}</tspan>" in svg for label in ("v1", "v3", "sft@1", "sft@3", "eval@1"))


def test_the_history_command_prints_the_table(store):
    result = run_cli("artifacts", "--store", store.uri, "history", "demo")
    assert result.code == 0, result.output
    assert "the gate judges qa" in result.stdout
    assert trend_table(production_history(store, "demo")) in result.stdout


def test_a_pipeline_with_nothing_in_production_is_named_with_how_to_get_one(store):
    result = run_cli("artifacts", "--store", store.uri, "history", "other")
    assert result.code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: other has nothing in production") and "promote" in result.stderr


def test_the_dashboard_gets_the_history_as_a_markdown_artifact(store):
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    from flows.trend import show_trend

    with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: False}):  # no log left to send after the server
        state = flow(name="show-trend")(show_trend)("demo", store, return_state=True)
    with get_client(sync_client=True) as client:  # this run's artifact: other tests on this server promote `demo` too
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["demo-quality-trend"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert artifact.type == "markdown" and "| 3 | demo/sft@3 | sft@3 eval@1 |" in artifact.data
