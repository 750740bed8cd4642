"""The sweep's grid, its child specs, the choice of the best candidate and the comparison it shows. The
sweep through real runs is tests/integration/test_sweep.py."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignflow.errors import ConfigError
from flows.spec import parse_spec
from flows.sweep import best, child_specs, grid_points, parse_grid, render, sweep_markdown
from tests.conftest import run_cli, write_spec

SPEC = {"name": "p", "model": "builtin://tiny-qwen2",
        "data": {"sft": "builtin://reverse/sft", "preference": "builtin://reverse/preference",
                 "eval": "builtin://reverse/eval"},
        "stages": {"sft": {}, "dpo": {"beta": 0.1}, "evaluate": {}, "gate": {}}}


def test_the_grid_is_every_combination_read_as_yaml():
    grid = parse_grid(["stages.dpo.beta=0.05, 0.1,0.2", "stages.sft.tuner=lora,full"])
    assert grid == {"stages.dpo.beta": [0.05, 0.1, 0.2], "stages.sft.tuner": ["lora", "full"]}
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"stages.dpo.beta": 0.05, "stages.sft.tuner": "lora"}
    assert points[-1] == {"stages.dpo.beta": 0.2, "stages.sft.tuner": "full"}


@pytest.mark.parametrize("item", ["stages.dpo.beta", "=1,2", "stages.dpo.beta=0.1,,0.2"])
def test_a_grid_without_values_is_refused_with_the_form_it_takes(item):
    with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
        parse_grid([item])


def test_a_grid_value_that_is_not_yaml_is_named_with_how_to_quote_it():
    with pytest.raises(ConfigError) as error:
        parse_grid(["stages.dpo.beta=[0.1,0.2", "stages.sft.epochs=1,2"])
    [problem] = error.value.problems
    assert problem.startswith("--grid stages.dpo.beta: the value is not valid YAML") and "quote it" in problem


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=4))
def test_any_grid_arguments_parse_or_are_one_config_error(items):
    try:
        grid = parse_grid(items)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("--grid ") for p in exc.problems)
    else:
        assert all(values for values in grid.values())


def test_a_value_of_any_yaml_type_reaches_the_child_spec_as_it_was_read():
    spec = parse_spec(SPEC)
    with pytest.raises(ConfigError, match="stages.dpo.beta"):  # a date is no beta, and says so
        child_specs(spec, parse_grid(["stages.dpo.beta=2020-01-01"]))
    with pytest.raises(ConfigError, match="sweep.grid stages.dpo.beta.x: stages.dpo.beta is float"):
        child_specs(spec, {"stages.dpo.beta.x": [1]})


def test_each_point_is_the_spec_with_its_settings_and_no_grid():
    spec = parse_spec(dict(SPEC, sweep={"grid": {"stages.dpo.beta": [0.05, 0.2]}}))
    children = child_specs(spec, spec.sweep.grid)
    assert [(point, child.stages.dpo.beta, child.sweep) for point, child in children] == [
        ({"stages.dpo.beta": 0.05}, 0.05, None), ({"stages.dpo.beta": 0.2}, 0.2, None)]
    assert all(child.name == "p" for _, child in children)  # one pipeline: the children share its cache


def test_every_bad_point_is_named_before_any_work():
    spec = parse_spec(SPEC)
    with pytest.raises(ConfigError) as error:
        child_specs(spec, {"stages.dpo.beta": [0.1, -3], "stages.dpo.betta": [1]})
    text = "\n".join(error.value.problems)
    assert "beta=-3 betta=1" in text and "betta" in text and "did you mean 'beta'" in text
    with pytest.raises(ConfigError, match="nothing to sweep"):
        child_specs(spec, {})
    with pytest.raises(ConfigError, match="set stages.evaluate"):
        child_specs(parse_spec(dict(SPEC, stages={"sft": {}})), {"stages.sft.epochs": [1, 2]})


def test_an_empty_list_in_the_spec_s_grid_is_refused():
    with pytest.raises(ConfigError, match="stages.dpo.beta: no values"):
        parse_spec(dict(SPEC, sweep={"grid": {"stages.dpo.beta": []}}))


def row(label, status, score, seconds, sets=None):
    return {"label": label, "status": status, "score": score, "seconds": seconds, "reasons": [],
            "sets": sets or {"qa": score}}


def test_the_best_held_candidate_wins_and_a_tie_goes_to_the_cheaper_run():
    held = "held for the sweep"
    results = [row("a", held, 0.5, 100), row("b", held, 0.7, 90), row("c", held, 0.7, 40),
               row("d", "rejected by gate", 0.9, 1)]
    assert best(results)["label"] == "c"  # d scored more, but its gate rejected it
    assert best([row("d", "rejected by gate", 0.9, 1), row("e", "failed", None, 0)]) is None


def test_the_comparison_has_a_row_per_point_and_a_line_per_set():
    results = [row("beta=0.05", "held for the sweep", 0.5, 100, {"qa": 0.5, "mcq": 0.4}),
               row("beta=0.1", "held for the sweep", 0.6, 30, {"qa": 0.6, "mcq": 0.3}),
               row("beta=0.2", "rejected by gate", 0.2, 31, {"qa": 0.2, "mcq": 0.2})]
    outcome = {"name": "p", "results": results, "winner": "beta=0.1", "shipped": {"status": "completed"}}
    markdown = sweep_markdown(outcome)
    assert "| beta=0.1 | held for the sweep (winner) | 0.600 | 0.300 | 0.600 | 30 |" in markdown
    [chart] = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    svg = base64.b64decode(chart).decode()
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 6
    assert "shipped beta=0.1: completed" in render(outcome)
    assert "nothing shipped" in render(dict(outcome, winner=None, shipped=None))


def test_the_command_checks_every_point_before_any_work(tmp_path):
    spec = write_spec(tmp_path / "p.yaml", "name: p\nmodel: builtin://tiny-qwen2\n"
                      "data: {sft: builtin://reverse/sft, eval: builtin://reverse/eval}\n"
                      f"stages: {{sft: {{}}, evaluate: {{}}}}\nstore: {tmp_path / 'store'}\n")
    result = run_cli("sweep", str(spec), "--grid", "stages.sft.epochs=1,-1")
    assert result.code == 2 and "epochs=-1" in result.stderr, result.output
    assert not (tmp_path / "store").exists()


def test_a_child_that_failed_is_a_row_that_says_why_and_never_wins():
    from flows.sweep import result_row

    failed = result_row({"stages.dpo.beta": 0.2}, None, "Failed: train_dpo ran out of memory")
    assert failed["status"] == "failed" and failed["score"] is None and failed["seconds"] == 0
    assert failed["reasons"] == ["Failed: train_dpo ran out of memory"] and best([failed]) is None
