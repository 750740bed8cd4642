"""Spec validation: every problem at once, with field paths and suggestions, before any work."""

from __future__ import annotations

import copy
import re

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


GATED = """name: p
model: builtin://tiny-qwen2
data: {sft: builtin://reverse/sft, eval: builtin://reverse/eval}
stages:
  sft:
  evaluate:
  gate:
"""


def test_a_set_on_a_stage_written_without_settings_is_applied_and_checked(tmp_path):
    """`gate:` is "on, with defaults": an override of its fields lands in it (it once went to a detached
    mapping, so a stricter gate was silently dropped and a worse model shipped)."""
    path = tmp_path / "s.yaml"
    path.write_text(GATED)
    assert load_spec(path, ["stages.gate.min_score=0.9"]).stages.gate.min_score == 0.9
    with pytest.raises(ConfigError) as err:
        load_spec(path, ["stages.gate.min_score=abc", "stages.sft.epochs=-5"])
    assert "stages.gate.min_score: expected a number, got 'abc'" in str(err.value)
    assert "stages.sft.epochs: -5 is out of range" in str(err.value)


def test_set_values_that_are_not_yaml_and_keys_that_are_not_paths_are_named(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GATED)
    with pytest.raises(ConfigError) as err:
        load_spec(path, ["stages.sft.epochs=[", "a..b=1", "stages.sft=3", "stages.sft.lora.r=4"])
    message = str(err.value)
    assert "--set stages.sft.epochs: the value is not valid YAML" in message
    assert "--set 'a..b=1': expected KEY=VALUE with a dotted KEY" in message
    assert "--set stages.sft.lora.r: stages.sft is int, not a mapping" in message


def test_skip_of_judge_turns_it_off_and_skip_of_merge_or_an_empty_store_is_refused(tmp_path):
    spec = load_spec("deployments/demo.yaml", skip=["judge"])
    assert spec.stages.judge is None and load_spec("deployments/demo.yaml").stages.judge is not None
    with pytest.raises(ConfigError) as err:
        load_spec("deployments/demo.yaml", skip=["merge", "dpoo"], store="")
    message = str(err.value)
    assert "--skip merge: merge is not optional" in message and "--skip dpoo: no such stage; did you mean 'dpo'?" \
        in message and "--store: empty" in message


@pytest.mark.parametrize("text, expected", [
    ("name: p\nname: q\n", "s.yaml:2: not valid YAML: key 'name' appears twice in one mapping (first on line 1)"),
    ("a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
     "expands to more than 100000 values"),
    ("x: " + "[" * 5000 + "]" * 5000, "nested too deeply"),
    ("- a\n- b\n", "expected a mapping (name:, model:, ...) at the top level, got list"),
])
def test_duplicate_keys_alias_bombs_and_odd_documents_are_refused(tmp_path, text, expected):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_spec(path)


def test_yaml_merge_keys_may_be_overridden_beside_them(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: p\nmodel: builtin://tiny-qwen2\n"
                    "data: {sft: builtin://reverse/sft, preference: builtin://reverse/preference}\n"
                    "stages:\n  sft: &train {epochs: 2, batch_size: 4}\n  reward: {<<: *train, epochs: 3}\n")
    spec = load_spec(path)
    assert (spec.stages.reward.epochs, spec.stages.reward.batch_size, spec.stages.sft.epochs) == (3, 4, 2)


def test_a_spec_path_that_is_a_folder_is_named(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; pass the spec file itself"):
        load_spec(tmp_path)


@pytest.mark.parametrize("service, expected", [
    ({"nightly": {"cron": "61 2 * * *"}}, "service.nightly.cron: '61 2 * * *' is not a cron schedule"),
    ({"nightly": {"timezone": "Europe/Berln"}}, "did you mean 'Europe/Berlin'?"),
    ({"notify": "alerts"}, "service.notify: 'alerts' must name a saved Prefect block as TYPE/NAME"),
    ({"watch": {"sources": {"demo/x\n": "./d"}}}, "service.watch.sources.'demo/x\\n': must be PIPELINE/NAME"),
])
def test_the_service_section_is_checked_at_spec_time(service, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_spec({**MINIMAL, "service": service})


def test_a_trainer_args_typo_is_refused_at_spec_time_with_the_close_name():
    with pytest.raises(ConfigError, match=re.escape("stages.sft.trainer_args.max_step: TRL's SFTConfig has no "
                                                    "argument 'max_step'; did you mean 'max_steps'?")):
        parse_spec({**MINIMAL, "stages": {"sft": {"trainer_args": {"max_step": 3}}}})


def test_ray_resources_are_opt_in_and_their_mistakes_named():
    spec = parse_spec({**MINIMAL, "stages": {"sft": {"resources": {"engine": "ray", "workers": 4,
                                                                   "gpus_per_worker": 1}}}})
    assert spec.stages.sft.resources.workers == 4 and spec.stages.sft.resources.engine == "ray"
    assert parse_spec({**MINIMAL, "stages": {"sft": {}}}).stages.sft.resources.engine == "local"  # the default
    with pytest.raises(ConfigError, match="resources: workers and address are engine ray's; set engine: ray"):
        parse_spec({**MINIMAL, "stages": {"sft": {"resources": {"workers": 2}}}})
    with pytest.raises(ConfigError, match="engine ray places `workers` on the cluster's nodes itself"):
        parse_spec({**MINIMAL, "stages": {"sft": {"resources": {"engine": "ray", "machines": 2}}}})
    with pytest.raises(ConfigError, match="did you mean 'ray'"):
        parse_spec({**MINIMAL, "stages": {"sft": {"resources": {"engine": "rya"}}}})


def test_engine_ray_without_a_cluster_names_where_to_give_one(monkeypatch, tmp_path):
    from distributed.local import cluster_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("ALIGNFLOW_HOME", str(tmp_path))  # no local cluster recorded there
    with pytest.raises(ConfigError, match=r"no Ray cluster is named: set resources.address or RAY_ADDRESS, or "
                                          r"start one here with `alignflow ray up`"):
        cluster_address(None, "resources.address")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cluster_address(None, "resources.address") == "10.0.0.5:6379"
    assert cluster_address("head:6379", "resources.address") == "head:6379"


def test_gate_rules_per_set_name_sets_the_evaluation_has():
    raw = {**MINIMAL, "data": {"sft": "builtin://reverse/sft", "eval": "builtin://reverse/eval"},
           "stages": {"evaluate": {}, "gate": {"max_drop": {"qa": 0.1}, "max_set_regression": {"mcq": 0.05}}}}
    with pytest.raises(ConfigError) as err:
        parse_spec(raw)
    assert "stages.gate.max_set_regression.mcq: no such evaluation set; stages.evaluate has qa" in str(err.value)
    assert "max_drop" not in str(err.value)


def test_a_contamination_mode_that_is_not_one_names_the_choices():
    with pytest.raises(ConfigError) as err:
        parse_spec({**MINIMAL, "data": {**MINIMAL["data"], "contamination": "dorp"}})
    assert "data.contamination" in str(err.value) and "did you mean 'drop'" in str(err.value)
