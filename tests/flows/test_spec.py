"""Spec validation: every problem at once, with field paths and suggestions, before any work."""

from __future__ import annotations

import copy

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


def test_stage_written_without_settings_in_yaml_is_on_with_defaults(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: p\nmodel: builtin://tiny-qwen2\ndata: {sft: builtin://reverse/sft}\nstages:\n  sft:\n")
    spec = load_spec(path)
    assert spec.stages.sft is not None and spec.stages.sft.tuner == "lora"
    assert spec.stages.dpo is None


def test_a_null_stage_in_flow_parameters_is_off():
    """The dashboard's form sends null for a stage the user switched off."""
    assert parse_spec({**MINIMAL, "stages": {"sft": None}}).stages.sft is None


@pytest.mark.parametrize("field, value, expected", [
    ("sft.epochs", -1, "stages.sft.epochs: -1 is out of range (valid: 0 < x <= 1000)"),
    ("sft.learning_rate", -0.1, "stages.sft.learning_rate: -0.1 is out of range (valid: 0 < x <= 1)"),
    ("sft.batch_size", 0, "stages.sft.batch_size: 0 is out of range (valid: 1 <= x <= 65536)"),
    ("sft.lora.r", 0, "stages.sft.lora.r: 0 is out of range (valid: 1 <= x <= 1024)"),
    ("gate.min_score", 5, "stages.gate.min_score: 5 is out of range (valid: 0 <= x <= 1)"),
])
def test_values_out_of_range_name_the_field_and_its_range(field, value, expected):
    raw = {**MINIMAL, "data": {**MINIMAL["data"], "eval": "builtin://reverse/eval"},
           "stages": {"evaluate": {}, "sft": {}, "gate": {}}}
    apply_override(raw, f"stages.{field}={value}")
    with pytest.raises(ConfigError) as err:
        parse_spec(raw)
    assert expected in str(err.value)
    assert err.value.exit_code == 2


def test_the_run_form_schema_carries_descriptions_defaults_and_ranges():
    """What the Prefect dashboard renders as the run form comes from these models."""
    from flows.spec import PipelineSpec

    schema = PipelineSpec.model_json_schema()
    sft = schema["$defs"]["SFTStage"]["properties"]
    assert sft["epochs"]["exclusiveMinimum"] == 0 and sft["epochs"]["default"] == 1.0
    assert sft["batch_size"]["minimum"] == 1
    assert "passes over the data" in sft["epochs"]["description"]
    assert schema["$defs"]["GateStage"]["properties"]["min_score"]["maximum"] == 1


def test_stage_needing_missing_data_is_refused():
    with pytest.raises(ConfigError, match="stages.dpo: needs data.preference"):
        parse_spec({**MINIMAL, "stages": {"dpo": {}}})


def test_override_sets_nested_typed_values():
    raw = copy.deepcopy(MINIMAL)
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
    spec = load_spec("deployments/demo.yaml", skip=["reward"])
    assert spec.stages.reward is None
    assert parse_spec(spec.to_dict()) == spec


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    (tmp_path / "s.yaml").write_text("name: x\nmodel: builtin://tiny-qwen2\ndata: {sft: builtin://reverse/sft}\n"
                                     "stages:\n  sft: {learning_rate: 1e-4}\n")
    assert load_spec(tmp_path / "s.yaml").stages.sft.learning_rate == 1e-4
    assert load_spec(tmp_path / "s.yaml", ["stages.sft.learning_rate=5e-5"]).stages.sft.learning_rate == 5e-5


def test_data_sources_take_one_or_many_with_options_and_named_formats_are_checked():
    spec = parse_spec({"name": "x", "model": "m", "data": {
        "sft": ["a.jsonl", {"source": "s3://b/chat/", "format": "sharegpt", "max_rows": 100,
                            "columns": {"dialog": "conversations"}}],
        "eval_fraction": 0.1}, "stages": {"sft": {}, "evaluate": {}}})
    splits = spec.data.splits()
    assert [s.source for s in splits["sft"][0]] == ["a.jsonl", "s3://b/chat/"]
    assert splits["sft"][1].holdout == "train" and splits["eval"][1].holdout == "eval"
    with pytest.raises(ConfigError) as err:
        parse_spec({"name": "x", "model": "m", "data": {"sft": {"source": "a", "format": "sharegtp"},
                                                        "preference": {"source": "b", "format": "hh"}}})
    assert "data.sft.format: 'sharegtp' is not a sft format" in str(err.value) and "did you mean 'sharegpt'" in \
        str(err.value)
    assert "data.preference.format: 'hh' is not a preference format" in str(err.value)
    with pytest.raises(ConfigError, match=r"stages.evaluate: needs data.eval \(or data.eval_fraction"):
        parse_spec({"name": "x", "model": "m", "data": {"sft": "a"}, "stages": {"evaluate": {}}})


def test_each_stage_s_declared_needs_are_checked():
    with pytest.raises(ConfigError) as err:
        parse_spec({**MINIMAL, "stages": {"kto": {}, "cpo": {}, "gate": {}}})
    message = str(err.value)
    for line in ("stages.kto: needs data.preference", "stages.cpo: needs data.preference",
                 "stages.gate: needs stages.evaluate"):
        assert line in message


def test_dpo_losses_are_trl_s_names_and_weights_match_them():
    spec = parse_spec({**MINIMAL, "data": {**MINIMAL["data"], "preference": "builtin://reverse/preference"},
                       "stages": {"dpo": {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.2]}}})
    assert spec.stages.dpo.loss_type == ["sigmoid", "sft"]
    with pytest.raises(ConfigError, match="stages.dpo.loss_type: 'ipoo' is not one of .*did you mean 'ipo'"):
        parse_spec({**MINIMAL, "stages": {"dpo": {"loss_type": "ipoo"}}})
    with pytest.raises(ConfigError, match="loss_weights has 1 entries for 2 loss types"):
        parse_spec({**MINIMAL, "stages": {"dpo": {"loss_type": ["sigmoid", "ipo"], "loss_weights": [1.0]}}})


def test_a_method_the_installed_trl_lacks_is_refused_before_any_work():
    from tasks import trainer

    assert trainer.trl_lacks("trl.experimental.orpo", "orpo") == []
    problems = trainer.trl_lacks("trl.experimental.no_such_method", "orpo")
    assert problems and "the installed TRL 1.16" in problems[0] and "use stages.dpo" in problems[0]
