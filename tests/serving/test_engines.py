"""The contract every serving engine passes, without starting one: its command line, its environment, its
record, the Kubernetes export, and its refusal of what it cannot do. A new engine is added to ENGINES here
and passes the same tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from serving.engine import ENGINES, AdapterLaunch, Engine, Launch, engine_for
from serving.records import Served, ServerRecord
from tasks.deploy import DeployStage

NAMES = ["vllm", "sglang"]
SECRET = "sk-live-4f9a1c77e2"
DIGEST = "sha256:" + "ab" * 32
FOLDER = f"/cache/blobs/{DIGEST[7:]}"


def launch(**changes) -> Launch:
    fields = {"model": FOLDER, "served_name": "shop", "host": "127.0.0.1", "port": 8123,
              "chat_template": "/serve/shop.jinja", "max_model_len": 512, "extra_args": ("--seed", "3")}
    return Launch(**{**fields, **changes})


@pytest.fixture(params=NAMES)
def engine(request) -> Engine:
    return engine_for(request.param)


def test_every_engine_is_one_module_with_what_the_protocol_asks(engine):
    assert isinstance(engine, Engine) and ENGINES[engine.name] is engine
    assert engine.name in DeployStage.model_fields["engine"].annotation.__args__
    assert set(engine.quantizations) == {"cpu", "gpu"}


def test_the_command_line_serves_the_folder_under_the_name_where_deploy_said(engine):
    args = engine.arguments(launch())
    assert FOLDER in args and "shop" in args and "127.0.0.1" in args and "8123" in args
    assert "/serve/shop.jinja" in args and "512" in args
    assert args[-2:] == ["--seed", "3"]  # extra_args last, after everything deploy decides
    cmd = engine.entrypoint("/serve/bin/python") + args
    assert cmd[0] == "/serve/bin/python" and SECRET not in " ".join(cmd)


def test_the_key_reaches_the_server_by_environment_and_only_there(engine, tmp_path, monkeypatch):
    from serving.lifecycle import server_env

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    env = server_env(engine, str(tmp_path), key=SECRET)
    keyless = server_env(engine, str(tmp_path))
    assert env[engine.key_variable] == SECRET and engine.key_variable not in keyless
    assert "AWS_SECRET_ACCESS_KEY" not in env and "PYTHONPATH" not in env and env["HF_HUB_OFFLINE"] == "1"
    assert SECRET not in json.dumps(engine.arguments(launch()))


@pytest.mark.parametrize("option", ["--host", "--port", "--api-key", "--served-model-name", "--chat-template"])
def test_extra_args_may_not_set_again_what_deploy_decides(engine, option):
    for written in ([option, "x"], [f"{option}=x"], [option.replace("-", "_").replace("__", "--"), "x"]):
        problems = DeployStage(engine=engine.name, extra_args=written).problems()
        assert len(problems) == 1 and problems[0].startswith("stages.deploy.extra_args"), (written, problems)
        assert "x" not in problems[0].split(";")[0].split()[-1]  # the value is never quoted back


def test_an_engine_that_is_not_one_is_refused_naming_the_field_and_the_choices():
    from alignflow.errors import ConfigError
    from flows.spec import parse_spec

    raw = {"name": "p", "model": "builtin://tiny-qwen2", "stages": {"deploy": {"engine": "lmdeploy"}}}
    with pytest.raises(ConfigError, match=r"stages\.deploy\.engine.*'vllm'.*'sglang'"):
        parse_spec(raw)
    raw["stages"]["deploy"] = {"backend": "vllm"}  # the field's earlier name is still read
    assert parse_spec(raw).stages.deploy.engine == "vllm"


def test_each_engine_refuses_its_own_spelling_of_the_model_and_context_length():
    assert DeployStage(engine="vllm", extra_args=["--max-model-len", "9"]).problems()
    assert DeployStage(engine="sglang", extra_args=["--context-length", "9"]).problems()
    assert DeployStage(engine="sglang", extra_args=["--model-path", "x"]).problems()
    assert DeployStage(engine="sglang", extra_args=["--tp-size", "2"]).problems() == []
    assert DeployStage(engine="vllm", extra_args=["--tensor-parallel-size", "2"]).problems() == []


def test_adapters_are_served_where_the_engine_can_and_refused_at_spec_time_where_not(engine):
    problems = DeployStage(engine=engine.name, mode="adapter").problems()
    if engine.adapters:
        assert problems == []
        lora = AdapterLaunch("shop", "/cache/blobs/cd", 16, 4)
        assert "/cache/blobs/cd" in " ".join(engine.arguments(launch(adapter=lora)))
    else:
        assert len(problems) == 1 and problems[0].startswith("stages.deploy.mode: adapter:"), problems
        assert "mode: model" in problems[0]


def test_a_quantized_format_the_engine_cannot_run_is_refused_at_spec_time():
    from flows.spec import parse_spec

    raw = {"name": "p", "model": "builtin://tiny-qwen2", "data": {"sft": "builtin://reverse/sft"},
           "stages": {"sft": {}, "quantize": {"method": "w8a8", "target": "cpu"}, "deploy": {"engine": "sglang"}}}
    with pytest.raises(Exception, match="SGLang on CPU cannot run w8a8 models"):
        parse_spec(raw)
    raw["stages"]["deploy"]["engine"] = "vllm"
    assert parse_spec(raw).stages.deploy.engine == "vllm"


def test_likelihood_scoring_through_a_server_that_cannot_is_refused_at_spec_time():
    from flows.spec import parse_spec

    mcq = {"name": "facts", "kind": "mcq", "path": "builtin://reverse/mcq", "answer_by": "likelihood"}
    raw = {"name": "p", "model": "builtin://tiny-qwen2",
           "data": {"sft": "builtin://reverse/sft", "eval": "builtin://reverse/eval"},
           "stages": {"sft": {}, "evaluate": {"sets": [mcq]}, "deploy": {"engine": "sglang"}}}
    with pytest.raises(Exception, match=r"sets\[0\].answer_by: likelihood .* SGLang does not return"):
        parse_spec(raw)
    raw["stages"]["evaluate"]["engine"] = "llm_ckpt"
    assert parse_spec(raw).stages.evaluate.sets[0].answer_by == "likelihood"


def test_requests_in_flight_are_read_from_each_engine_s_metrics():
    vllm, sglang = engine_for("vllm"), engine_for("sglang")
    assert vllm.requests_in_flight('vllm:num_requests_running{model_name="a"} 2.0\n'
                                   'vllm:num_requests_waiting{model_name="a"} 1.0\n') == 3
    assert sglang.requests_in_flight('sglang:num_running_reqs{model_name="a"} 4.0\n'
                                     'sglang:num_queue_reqs{model_name="a"} 0.0\n') == 4
    assert vllm.requests_in_flight("unrelated 1\n") is None


def record(engine: Engine, **changes) -> ServerRecord:
    fields = dict(name="shop", served_name="shop", endpoint="http://127.0.0.1:8123/v1", root="http://127.0.0.1:8123",
                  pid=4242, command=engine.entrypoint("/serve/bin/python") + engine.arguments(launch()),
                  log="/serve/shop.log", model=Served("shop/merged", 3, DIGEST), folder=FOLDER, engine=engine.name,
                  launch=launch(), api_key="env:SHOP_KEY")
    return ServerRecord(**{**fields, **changes})


def test_the_record_is_typed_and_reads_back_what_was_written(engine):
    written = record(engine, smoke={"prompt": "hi", "answer": "ih", "finish_reason": "stop"})
    read = ServerRecord.from_json(json.loads(json.dumps(written.to_json())))
    assert read == written and read.launch.extra_args == ("--seed", "3") and read.engine == engine.name
    older = {k: v for k, v in written.to_json().items() if k not in ("engine", "launch")}  # before engines
    assert ServerRecord.from_json(older).engine == "vllm"


def test_the_kubernetes_export_renders_the_record_s_launch_for_the_pod(engine, tmp_path):
    from serving.k8s import manifest

    template = tmp_path / "shop.jinja"
    template.write_text("{{ messages }}")
    docs = {d["kind"]: d for d in yaml.safe_load_all(manifest(record(engine, launch=launch(
        chat_template=str(template))), "s3://bucket/store"))}
    server = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert server["image"] == engine.image and server["command"] == engine.entrypoint("python3")
    assert server["args"] == engine.arguments(launch(model="/models/model", host="0.0.0.0", port=8000,
                                                     chat_template="/config/chat_template.jinja", gpu=True))
    assert docs["ConfigMap"]["data"]["chat_template.jinja"] == "{{ messages }}"
    key = [e for e in server["env"] if e["name"] == engine.key_variable]
    assert key == [{"name": engine.key_variable, "valueFrom": {"secretKeyRef": {"name": "shop-api-key",
                                                                                "key": "api-key"}}}]
    assert server["readinessProbe"]["httpGet"]["path"] == engine.health_path


def test_sglang_gets_its_key_inside_the_process_and_never_in_its_command_line(tmp_path):
    """SGLang reads the key from --api-key only: the launch moves it from the environment into the parser's
    argv inside the process. A stand-in `sglang.launch_server` reports the argv it parsed."""
    from serving.lifecycle import server_env

    package = tmp_path / "sglang"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "launch_server.py").write_text(
        "import os, sys, time\n"
        "open(os.environ['SEEN'], 'w').write(repr((sys.argv[1:], os.environ.get('ALIGNFLOW_SGLANG_API_KEY'))))\n"
        "time.sleep(30)\n")
    engine = engine_for("sglang")
    env = server_env(engine, str(tmp_path), key=SECRET) | {"PYTHONPATH": str(tmp_path), "SEEN": str(tmp_path / "s")}
    proc = subprocess.Popen(engine.entrypoint(sys.executable) + engine.arguments(launch()), env=env)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "s").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        argv, left_in_env = eval((tmp_path / "s").read_text())  # noqa: S307 (our own repr)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
    finally:
        proc.kill()
        proc.wait()
    assert argv[-2:] == ["--api-key", SECRET] and argv[:2] == ["--model-path", FOLDER]
    assert SECRET not in cmdline and left_in_env is None  # and its own children do not inherit it
