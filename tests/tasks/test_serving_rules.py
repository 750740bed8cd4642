"""The rules around serving that need no server: what `extra_args` may not set, which bind address counts as
loopback, which names and logs `alignflow serve` accepts, and which process a stop may signal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from alignflow.errors import ConfigError, UsageError
from alignflow.processes import pid_alive, process_start
from alignflow.cli import main
from tasks.deploy import DeployStage

SECRET = "sk-live-4f9a1c77e2"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An ALIGNFLOW_HOME of the test's own, and its serve folder."""
    monkeypatch.setenv("ALIGNFLOW_HOME", str(tmp_path / "home"))
    serve = tmp_path / "home" / "serve"
    serve.mkdir(parents=True)
    return serve


@pytest.fixture
def bystander():
    """A live process alignflow did not start, leading its own process group (as a server would)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "prefect"], start_new_session=True)
    deadline = time.monotonic() + 10
    while process_start(proc.pid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- extra_args ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, field", [
    (["--host", "0.0.0.0"], "stages.deploy.host"),
    (["--host=0.0.0.0"], "stages.deploy.host"),
    (["--ho", "0.0.0.0"], "stages.deploy.host"),  # vLLM's parser takes an unambiguous prefix
    (["--host.x", "1"], "stages.deploy.host"),  # vLLM's dotted JSON form names --host
    (["--port", "8000"], "stages.deploy.port"),
    (["--api_key", SECRET], "stages.deploy.api_key: env:VARIABLE or secret:BLOCK"),  # vLLM reads _ as -
    (["--api-key=" + SECRET], "stages.deploy.api_key: env:VARIABLE or secret:BLOCK"),
    (["--served_model_name", "other"], "pipeline's name"),
    (["--model", "/elsewhere"], "the model the stage is given"),
    (["--chat-template", "t.jinja"], "the template the model was trained with"),
    (["--max-model-len", "64"], "stages.deploy.max_model_len"),
    (["--enable-lora"], "stages.deploy.mode: adapter"),
    (["--no-enable-lora"], "stages.deploy.mode: model"),
    (["--max-lora-rank", "8"], "stages.deploy.max_lora_rank"),
    (["--max-loras", "2"], "stages.deploy.max_loras"),
    (["--lora-modules", "x=/tmp/x"], "stages.deploy.mode: adapter"),
    (["--generation-config", "vllm"], "generation settings"),
    (["--config", "serve.yaml"], "a vLLM config file can set any option"),
])
def test_extra_args_that_set_what_deploy_decides_are_refused_with_the_field_to_use(args, field):
    problems = DeployStage(extra_args=args).problems()
    assert len(problems) == 1 and problems[0].startswith("stages.deploy.extra_args:"), problems
    assert field in problems[0]


@pytest.mark.parametrize("args", [["some/model"], ["--enforce-eager", "--", "some/model"]])
def test_a_positional_model_in_extra_args_is_refused(args):
    problems = DeployStage(extra_args=args).problems()
    assert len(problems) == 1 and "positional model" in problems[0], problems


@pytest.mark.parametrize("args", [["--tensor-parallel-size", "2"], ["-tp", "2", "--enforce-eager"],
                                  ["--config-format", "hf", "--model-impl", "vllm"],
                                  ["--chat-template-content-format", "openai"],
                                  ["--cudagraph-capture-sizes", "1", "2", "4"], ["--seed", "-1"]])
def test_other_vllm_options_pass(args):
    assert DeployStage(extra_args=args).problems() == []


@pytest.mark.parametrize("args", [["--api-key", SECRET], ["--api_key=" + SECRET], ["--ho=" + SECRET],
                                  [SECRET], ["--", SECRET]])
def test_an_extra_args_value_never_appears_in_the_error(args):
    from flows.spec import parse_spec

    raw = {"name": "p", "model": "builtin://tiny-qwen2", "stages": {"deploy": {"extra_args": args}}}
    with pytest.raises(ConfigError) as refused:
        parse_spec(raw)
    assert "stages.deploy.extra_args" in str(refused.value)
    assert SECRET not in str(refused.value)


# ---- loopback ------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_a_loopback_address_needs_no_key(host):
    assert DeployStage(host=host).problems() == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.7", "[::]"])
def test_every_interface_or_another_address_needs_a_key(host):
    problems = DeployStage(host=host).problems()
    assert len(problems) == 1 and "exposes the server beyond this machine" in problems[0], problems
    assert DeployStage(host=host, api_key="env:KEY").problems() == []


def test_a_name_counts_by_what_it_resolves_to_not_how_it_begins(monkeypatch):
    resolves = {"localhost.evil.example": ["203.0.113.9"], "both.example": ["127.0.0.1", "203.0.113.9"]}

    def getaddrinfo(host, *args, **kwargs):
        if host not in resolves:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0)) for address in resolves[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for host in resolves:
        problems = DeployStage(host=host).problems()
        assert len(problems) == 1 and f"{host} exposes the server" in problems[0], problems
    problems = DeployStage(host="127.0.0.1.nip.io").problems()
    assert len(problems) == 1 and "127.0.0.1.nip.io could not be resolved" in problems[0], problems


# ---- record names and logs -----------------------------------------------------------------------

def record_json(**fields) -> dict:
    """A whole server record as alignflow writes it, with `fields` changed."""
    return {"name": "demo", "served_name": "demo", "endpoint": "http://127.0.0.1:9/v1", "root": "http://127.0.0.1:9",
            "pid": 1, "command": [sys.executable, "-m", "vllm.entrypoints.openai.api_server"], "log": "demo.log",
            "model": {"name": "demo/sft", "version": "1", "digest": "sha256:" + "0" * 64}, "folder": "/x", **fields}


def test_a_record_is_found_by_a_pipeline_name_only(home):
    from serving.records import ServerRecord, read_record, record_path, remove_record, write_record

    record = ServerRecord.from_json(record_json())
    for bad in ("../../x", "../serve/demo", "Demo", "demo/x", ".hidden"):
        with pytest.raises(UsageError, match="is not a pipeline name"):
            read_record(bad)
        with pytest.raises(UsageError):
            write_record(record, bad)
        with pytest.raises(UsageError):
            remove_record(bad, record)
    write_record(record, "demo~green")  # a green server's record, kept internally
    assert read_record("demo~green") == record
    assert json.loads(record_path("demo~green").read_text())["pid"] == 1


def test_a_record_that_is_not_one_is_a_clear_error(home, capsys):
    (home / "demo.json").write_text(json.dumps({"name": "demo", "pid": 1}))
    code, _, err = cli(capsys, "serve", "ls")
    assert code == 2 and "demo.json is not a server record" in err and "remove the file" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("verb", ["logs", "url", "stop", "rollback", "k8s"])
def test_serve_with_a_path_for_a_name_exits_2_and_reads_nothing(home, capsys, verb):
    secret = home.parent.parent / "secret.txt"
    secret.write_text(SECRET)
    planted = home.parent.parent / "x.json"  # where serve/../../x.json points
    planted.write_text(json.dumps(record_json(name="x", log=str(secret))))
    code, out, err = cli(capsys, "serve", verb, "../../x")
    assert code == 2
    assert SECRET not in out + err and "Traceback" not in err
    assert err.startswith("error: serve ") and err.count("error:") == 1 and "is not a pipeline name" in err


def test_serve_logs_refuses_a_record_whose_log_is_outside_the_serve_folder(home, capsys):
    secret = home.parent.parent / "secret.txt"
    secret.write_text(SECRET)
    (home / "demo.json").write_text(json.dumps(record_json(log=str(secret))))
    code, out, err = cli(capsys, "serve", "logs", "demo")
    assert code == 2 and SECRET not in out
    assert f"names the log {secret}, outside" in err
    (home / "demo.log").write_text("server says hello\n")
    (home / "demo.json").write_text(json.dumps(record_json(log=str(home / "demo.log"))))
    assert cli(capsys, "serve", "logs", "demo")[:2] == (0, "server says hello\n")


def test_serve_of_an_unknown_server_exits_2(home, capsys):
    for argv in (["url", "nosuch"], ["logs", "nosuch"], ["stop", "nosuch"], ["stop"]):
        code, _, err = cli(capsys, "serve", *argv)
        assert code == 2 and err.startswith("error: serve "), (argv, err)


def test_an_alignflow_home_that_is_a_file_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from alignflow.service import server

    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("ALIGNFLOW_HOME", str(tmp_path / "home"))
    code, _, err = cli(capsys, "serve", "ls")
    assert code == 2 and "ALIGNFLOW_HOME" in err and "is a file" in err and "Traceback" not in err
    with pytest.raises(UsageError, match="is a file"):
        server.home()


# ---- which process a stop may signal -------------------------------------------------------------

def record_of(proc: subprocess.Popen, **fields):
    from serving.records import ServerRecord

    return ServerRecord.from_json(record_json(pid=proc.pid, **fields))


@pytest.mark.parametrize("identity", ["start", "command"])
def test_a_stop_never_signals_a_pid_that_is_now_another_process(home, bystander, identity, capsys):
    """The server died and the system gave its pid to an unrelated process: `serve stop` leaves that
    process alone and forgets the record. Records from older versions carry no start time: the command
    line tells them apart."""
    from serving.records import read_record, write_record

    stale = {"pid_start": process_start(bystander.pid) + 1} if identity == "start" else {}
    write_record(record_of(bystander, **stale))
    code, out, _ = cli(capsys, "serve", "stop", "demo")
    time.sleep(0.3)
    assert code == 0 and bystander.poll() is None and pid_alive(bystander.pid)
    assert f"pid {bystander.pid} is now another process; forgot the stale record" in out
    assert read_record("demo") is None


def test_stop_server_signals_the_process_it_started_and_no_other(home, bystander):
    from serving.lifecycle import stop_server
    from serving.records import read_record, write_record

    stale = record_of(bystander, pid_start=process_start(bystander.pid) + 1)
    write_record(stale)
    assert stop_server(stale) is False and bystander.poll() is None and read_record("demo") is None
    live = record_of(bystander, pid_start=process_start(bystander.pid))
    write_record(live)
    assert stop_server(live, timeout=5) is True
    assert bystander.wait(timeout=10) is not None and read_record("demo") is None


def test_server_down_never_signals_a_pid_that_is_now_another_process(home, bystander, capsys):
    """The same for the Prefect server and worker `alignflow server up` recorded: the bystander even runs
    something named prefect, which older records could not tell from their own worker."""
    from alignflow.service import server

    worker = {"pid": bystander.pid, "pid_start": process_start(bystander.pid) + 1, "name": "w", "pool": "alignflow"}
    server.write_state({"worker": worker})
    assert server.down() == []
    time.sleep(0.3)
    assert bystander.poll() is None
    assert f"worker: pid {bystander.pid} is now another process; forgot the stale record" in capsys.readouterr().err
    assert server.read_state() == {}
