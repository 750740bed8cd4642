"""Specs and `--set` overrides as a careless or hostile user writes them: each one validates or ends in one
ConfigError naming the field; never another exception, never a write."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from alignflow.errors import ConfigError
from flows.spec import PipelineSpec, apply_override, load_spec, parse_spec

DEMO = yaml.safe_load(Path("deployments/demo.yaml").read_text())
FIELDS = ["name", "model", "store", "storage", "data.sft", "data.eval_fraction", "data.on_bad_rows",
          "stages.sft", "stages.sft.epochs", "stages.sft.tuner", "stages.sft.lora.r", "stages.sft.trainer_args",
          "stages.dpo.beta", "stages.dpo.loss_type", "stages.gate", "stages.gate.min_score", "stages.deploy.host",
          "stages.deploy.extra_args", "stages.deploy.api_key", "stages.deploy.port", "stages.deploy.engine",
          "stages.deploy.mode", "stages.evaluate.sets",
          "stages.quantize.method", "service.nightly.cron", "service.nightly.timezone", "service.notify",
          "service.watch.sources", "retry.retries", "stages.merge", "stages.judge", "stages", "data"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["", " ", "lora", "full", "0.0.0.0", "--host", "env:", "s3://", "1e-4", "\n",
                                     "../../x", "demo/x\n", "ipoo", "* * * * * *", "Europe/Berln", "sglang",
                                     "adapter"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def set_path(raw: dict, path: str, value) -> None:
    node = raw
    *parents, leaf = path.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def assert_config_error(exc: ConfigError) -> None:
    assert exc.exit_code == 2 and exc.problems
    for problem in exc.problems:
        assert isinstance(problem, str) and problem.strip() and "Traceback" not in problem


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(FIELDS), values), min_size=1, max_size=4))
@example([("stages.gate.min_score", "abc"), ("stages.sft.epochs", -5)])
@example([("stages.deploy.extra_args", ["--host", "0.0.0.0"])])
@example([("service.watch.sources", {"demo/x\n": "./d"})])
@example([("stages.sft.epochs", math.nan)])
def test_any_mutation_of_the_demo_spec_validates_or_names_its_fields(mutations):
    raw = copy.deepcopy(DEMO)
    for path, value in mutations:
        set_path(raw, path, value)
    try:
        spec = parse_spec(raw)
    except ConfigError as exc:
        assert_config_error(exc)
        return
    assert isinstance(spec, PipelineSpec)
    assert parse_spec(json.loads(json.dumps(spec.to_dict()))) == spec  # the flow parameters round-trip


override_keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=30))
override_values = st.one_of(st.text(max_size=30), st.sampled_from(
    ["[", "{a: 1", "*x", "&a [*a]", "!!python/object:os.system x", "0.9", "null", "'", "- a\n- b", "{", "]"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(override_keys, override_values), max_size=4))
@example([("stages.gate.min_score", "0.9")])
@example([("stages.sft.lr", "[")])
@example([("", "x")])
@example([("a..b", "1")])
def test_any_set_overrides_validate_or_name_the_option(overrides):
    raw = {"name": "p", "model": "builtin://tiny-qwen2", "data": {"sft": "builtin://reverse/sft"},
           "stages": {"sft": {}, "gate": None}}
    problems = []
    for key, value in overrides:
        try:
            apply_override(raw, f"{key}={value}")
        except ConfigError as exc:
            assert_config_error(exc)
            problems += exc.problems
    try:
        parse_spec(raw)
    except ConfigError as exc:
        assert_config_error(exc)


yaml_texts = st.one_of(
    st.text(max_size=300),
    values.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    st.builds(lambda base, cut: base[:cut], st.just(Path("deployments/demo.yaml").read_text()),
              st.integers(0, 3000)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=yaml_texts)
@example(text="name: p\nname: q\n")
@example(text="a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
              "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e]\n")
@example(text="x: " + "[" * 3000 + "]" * 3000)
@example(text="\x00\x01binary")
def test_any_spec_file_loads_or_is_one_config_error(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))  # lone surrogates: bytes that are not UTF-8
    try:
        load_spec(path)
    except ConfigError as exc:
        assert_config_error(exc)


@pytest.mark.parametrize("data", [b"\xff\xfen\x00a\x00m\x00e\x00", "name: p\n".encode("utf-16"),
                                  b"name: \xff\n", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_a_spec_that_is_not_utf8_text_is_named_as_such(tmp_path, data):
    path = tmp_path / "spec.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match="UTF"):
        load_spec(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.tuples(st.sampled_from(FIELDS), override_values), max_size=3),
       skip=st.lists(st.sampled_from(["judge", "merge", "deploy", "dpoo", "gate", ""]), max_size=2))
@example(overrides=[("stages.gate.min_score", "abc")], skip=[])
@example(overrides=[("store", "''")], skip=["merge"])
def test_plan_with_any_overrides_ends_in_0_or_2_and_writes_nothing(tmp_path, capsys, overrides, skip):
    """The whole command, as a user calls it: `alignflow plan` with any --set and --skip either lists the
    stages (exit 0) or names every problem (exit 2); never a traceback, and no store is ever created."""
    from alignflow.cli import main

    store = tmp_path / "never-created"
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: p\nmodel: builtin://tiny-qwen2\ndata: {sft: builtin://reverse/sft, "
                    "preference: builtin://reverse/preference}\nstages: {sft: {tuner: lora}, dpo:, gate:}\n")
    argv = ["plan", str(spec), "--store", str(store)]
    for key, value in overrides:
        argv += ["--set", f"{key}={value}"]
    for name in skip:
        argv += ["--skip", name]
    code = main(argv)
    out = capsys.readouterr()
    assert code in (0, 2), out
    assert "Traceback" not in out.err and (code == 0 or out.err.startswith("error: "))
    assert not store.exists()
