"""Spec validation: every problem at once, with field paths and suggestions, before any work."""

from __future__ import annotations

import pytest

from alignflow.errors import ConfigError
from flows.spec import apply_override, load_spec, parse_spec

MINIMAL = {"name": "p", "model": "builtin://tiny-qwen2", "data": {"sft": "builtin://reverse/sft"}}


def test_demo_spec_is_valid():
    spec = load_spec("deployments/demo.yaml")
    assert spec.stages.sft.tuner == "full" and spec.stages.dpo.lora.r == 8
    assert spec.stages.deploy.port == 0


def test_two_mistakes_are_reported_together_with_paths_and_suggestions():
    raw = {**MINIMAL, "stages": {"sft": {"learning_rat": 1e-4, "epochs": "three"}}}
    with pytest.raises(ConfigError) as err:
        parse_spec(raw)
    message = str(err.value)
    assert "2 problems" in message
    assert "stages.sft.learning_rat: unknown field; did you mean 'learning_rate'?" in message
    assert "stages.sft.epochs: expected a number, got 'three'" in message
    assert err.value.exit_code == 2


def test_bad_choice_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'lora'"):
        parse_spec({**MINIMAL, "stages": {"sft": {"tuner": "lorra"}}})


def test_stage_written_without_settings_is_on_with_defaults():
    spec = parse_spec({**MINIMAL, "stages": {"sft": None}})
    assert spec.stages.sft is not None and spec.stages.sft.tuner == "lora"
    assert spec.stages.dpo is None


def test_stage_needing_missing_data_is_refused():
    with pytest.raises(ConfigError, match="stages.dpo: needs data.preference"):
        parse_spec({**MINIMAL, "stages": {"dpo": {}}})


def test_override_sets_nested_typed_values():
    raw = dict(MINIMAL)
    apply_override(raw, "stages.dpo.beta=0.25")
    apply_override(raw, "data.preference=builtin://reverse/preference")
    assert parse_spec(raw).stages.dpo.beta == 0.25


def test_override_without_equals_is_a_config_error():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, "stages.dpo.beta")


def test_integers_are_accepted_where_numbers_are_expected_but_not_booleans():
    assert parse_spec({**MINIMAL, "stages": {"sft": {"epochs": 2}}}).stages.sft.epochs == 2.0
    with pytest.raises(ConfigError, match="stages.sft.batch_size: expected an integer"):
        parse_spec({**MINIMAL, "stages": {"sft": {"batch_size": True}}})


def test_spec_survives_the_round_trip_through_flow_parameters():
    spec = load_spec("deployments/demo.yaml", ["stages.reward=null"])
    spec.stages.reward = None
    assert parse_spec(spec.to_dict()) == spec
