"""Stage `deploy`: serve a model artifact behind vLLM's OpenAI-compatible server.

Idempotent rather than cached: if the server recorded for this pipeline is alive and serves the same
digest, nothing happens; otherwise a new server starts (from the serve env, detached, on loopback by
default), passes /health and one chat request, and only then replaces the old one. The record
(endpoint, pid, model digest, command) goes to the store as a `deployment` artifact and to a local
state file that `alignflow serve ls|stop` reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from alignflow.errors import ConfigError, StageError, StorageError, TransientError
from alignflow.processes import free_port, pid_alive, stop_group
from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.models import first_question
from tasks.stage import RunContext, publish, stage

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class DeployStage(StageConfig):
    """vLLM's OpenAI-compatible server, started from the serve env."""

    backend: Literal["vllm"] = Field("vllm", description="the serving engine")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port; a fixed port replaces the previous "
                                                     "server in place")
    max_model_len: Optional[int] = Field(None, ge=16, description="context length (empty: the model's)")
    start_timeout: float = Field(300.0, gt=0, le=86400, description="seconds to wait for /health")
    python: Optional[str] = Field(None, description="the serve env's python (empty: $ALIGNFLOW_SERVE_PYTHON, "
                                                    "else .venv-serve beside the project)")
    extra_args: list[str] = Field(default_factory=list, description="appended to the vLLM command line, e.g. "
                                                                    "['--tensor-parallel-size', '2']")


def state_dir() -> Path:
    path = Path(os.environ.get("ALIGNFLOW_HOME", Path.home() / ".alignflow")) / "serve"
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_state(name: str) -> dict | None:
    path = state_dir() / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def all_states() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(state_dir().glob("*.json"))]


def http_json(url: str, payload: dict | None = None, timeout: float = 5.0) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def serving_digest(state: dict) -> str | None:
    """The digest of the model the recorded server is actually serving, or None if it is not answering."""
    if not pid_alive(state["pid"]):
        return None
    try:
        models = http_json(f"{state['endpoint']}/models")["data"]
    except (OSError, ValueError, KeyError):
        return None
    roots = [m.get("root", "") for m in models]
    digest = state["model"]["digest"]
    return digest if any(digest.removeprefix("sha256:") in r for r in roots) else None


def stop_server(state: dict, timeout: float = 30.0) -> bool:
    """SIGINT the server's process group, then SIGKILL if it lingers; remove its state file."""
    pid = state["pid"]
    stopped = stop_group(pid, signal.SIGINT, timeout)  # vLLM stops on SIGINT in under a second
    current = read_state(state["name"])
    if current and current["pid"] == pid:
        (state_dir() / f"{state['name']}.json").unlink(missing_ok=True)
    return stopped


def serve_python(configured: str | None = None) -> str:
    """The serve env's python: `configured` (stages.deploy.python), $ALIGNFLOW_SERVE_PYTHON, or .venv-serve."""
    python = configured or os.environ.get("ALIGNFLOW_SERVE_PYTHON") or str(PROJECT_ROOT / ".venv-serve/bin/python")
    if not Path(python).exists():
        raise ConfigError(f"stages.deploy.python: the serve env's python {python} does not exist; run `make setup` "
                          "(it creates .venv-serve with vLLM) or point stages.deploy.python / "
                          "ALIGNFLOW_SERVE_PYTHON at a python that has vLLM", "spec")
    return python


def server_command(python: str, model_dir: Path, name: str, host: str, port: int, config: DeployStage) -> list[str]:
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", name, "--host", host, "--port", str(port), "--generation-config", "auto"]
    if config.max_model_len:
        cmd += ["--max-model-len", str(config.max_model_len)]
    return cmd + list(config.extra_args)


def server_env(cache_dir: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
               VLLM_CACHE_ROOT=str(Path(cache_dir) / "vllm"))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU hosts; vLLM's default takes 4
    for var in ("PYTHONPATH", "VIRTUAL_ENV"):  # the serve env is its own world
        env.pop(var, None)
    for var in [v for v in env if v.startswith("AWS_") or v.endswith(("_TOKEN", "_SECRET", "_PASSWORD", "_KEY"))]:
        env.pop(var)  # the server reads a local folder: it gets no store or hub credentials
    return env


def wait_healthy(proc: subprocess.Popen, endpoint: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StageError(f"deploy: vLLM exited with code {proc.returncode} while starting. "
                             f"Last lines of {log_path}:\n{_tail(log_path)}")
        try:
            urllib.request.urlopen(f"{endpoint}/health", timeout=2).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(1.0)
    raise TransientError(f"deploy: vLLM did not answer /health within {timeout:.0f}s (stages.deploy.start_timeout). "
                         f"Last lines of {log_path}:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def smoke_test(endpoint: str, name: str, prompt: str) -> dict:
    """One chat request, as a user would send it."""
    reply = http_json(f"{endpoint}/chat/completions", {
        "model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64, "temperature": 0.0},
        timeout=60)
    choice = reply["choices"][0]
    return {"prompt": prompt, "answer": choice["message"]["content"], "finish_reason": choice["finish_reason"]}


def start_server(run: RunContext, model: ArtifactRef, config: DeployStage, logger) -> dict:
    model_dir = run.open_store().get_dir(model)
    port = config.port or free_port(config.host)
    cmd = server_command(serve_python(config.python), model_dir, run.name, config.host, port, config)
    log_path = state_dir() / f"{run.name}-{model.short_digest}-{port}.log"
    logger.info("deploy: starting vLLM for %s on %s:%d (log: %s)", model.label, config.host, port, log_path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=server_env(run.cache_dir), start_new_session=True, cwd=str(state_dir()))
    endpoint = f"http://{config.host}:{port}/v1"
    started = time.monotonic()
    try:
        wait_healthy(proc, endpoint.removesuffix("/v1"), log_path, config.start_timeout)
    except BaseException:  # a timeout, a crash, Ctrl-C: never leave an unrecorded server behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    logger.info("deploy: vLLM healthy after %.0fs", time.monotonic() - started)
    return {"name": run.name, "endpoint": endpoint, "pid": proc.pid, "command": cmd, "log": str(log_path),
            "model": {"name": model.name, "version": model.version, "digest": model.digest},
            "started_at": time.time(), "host": socket.gethostname()}


@stage("deploy", config=DeployStage, key_metric="endpoint", cached=False)
def deploy(run: RunContext, model: ArtifactRef, config: DeployStage, probe: ArtifactRef | None) -> ArtifactRef:
    from prefect import get_run_logger

    logger, store = get_run_logger(), run.open_store()
    current = read_state(run.name)
    if current and serving_digest(current) == model.digest:
        return already_serving(run, model, config, current, logger)
    if current and config.port and current["endpoint"].endswith(f":{config.port}/v1"):
        stop_server(current)  # a fixed port cannot hold two servers: replace in place
        current = None
    question = first_question(store.get_dir(probe) / "data.jsonl") if probe else "Hello!"
    record = start_server(run, model, config, logger)
    try:
        record["smoke"] = smoke_test(record["endpoint"], run.name, question)
    except (OSError, ValueError, KeyError) as exc:
        stop_server(record)
        raise StageError(f"deploy: the server started but a chat request failed: {exc}") from exc
    logger.info("deploy: smoke request %r -> %r (%s)", question, record["smoke"]["answer"],
                record["smoke"]["finish_reason"])
    ref = record_deployment(run, model, config, record, "started")
    if current and current["pid"] != record["pid"]:
        logger.info("deploy: stopping the previous server (pid %d, %s)", current["pid"],
                    current["model"]["digest"][:19])
        stop_server(current)
    return ref


def already_serving(run: RunContext, model: ArtifactRef, config: DeployStage, state: dict, logger) -> ArtifactRef:
    """The pipeline's server already serves this digest. Its record may live in another store (the same
    pipeline run against a folder, then against S3): then it is recorded in this store too, never looked up
    across stores."""
    store = run.open_store()
    known = state.get("records", {}).get(store.uri)
    if known:
        try:
            ref = store.ref(known["name"], known["version"])
            logger.info("deploy: %s already serves %s at %s; nothing to do", run.name, model.label, state["endpoint"])
            return dataclasses.replace(ref, metrics={**ref.metrics, "action": "unchanged"})
        except StorageError:
            pass  # the record was deleted from this store: write it again
    logger.info("deploy: %s already serves %s at %s; recording it in %s", run.name, model.label,
                state["endpoint"], store.uri)
    record = {k: v for k, v in state.items() if k != "records"}
    record["model"] = {"name": model.name, "version": model.version, "digest": model.digest}
    return record_deployment(run, model, config, record, "unchanged")


def record_deployment(run: RunContext, model: ArtifactRef, config: DeployStage, record: dict,
                      action: str) -> ArtifactRef:
    """Publish the deployment record in the run's store and note, in the local serve state, which store
    holds which record of this server."""
    out = run.workdir() / "output"
    out.mkdir(exist_ok=True)
    (out / "deployment.json").write_text(json.dumps(record, indent=2))
    probe = record.get("smoke", {}).get("prompt", "Hello!")
    ref = publish(run, "deployment", "deployment", out, stage="deploy", config=config, inputs={"model": model},
                  metadata={"endpoint": record["endpoint"]},
                  metrics={"endpoint": record["endpoint"], "smoke_prompt": probe})
    previous = read_state(run.name)
    records = previous.get("records", {}) if previous and previous["pid"] == record["pid"] else {}
    state = dict(record, records={**records, run.open_store().uri: {"name": ref.name, "version": ref.version}})
    write_state(run.name, state)
    return dataclasses.replace(ref, metrics={**ref.metrics, "action": action})


def write_state(name: str, state: dict) -> None:
    """Atomically: `serve ls` and a concurrent deploy never read half a file."""
    path = state_dir() / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def describe(state: dict) -> dict:
    """One row of `alignflow serve ls`."""
    alive = pid_alive(state["pid"])
    return {"name": state["name"], "endpoint": state["endpoint"], "pid": state["pid"],
            "model": f"{state['model']['name']}@{state['model']['version']}",
            "digest": state["model"]["digest"][7:19], "status": "running" if alive else "dead"}

