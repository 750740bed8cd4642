"""A server's life, the same for every engine: launch it detached and wait until healthy, send a smoke
request, tell what it serves, drain its requests in flight, and stop it (or take one pipeline's adapter out
of a shared one). What differs between engines (flags, environment, adapter endpoints, metrics) is asked of
the record's engine (serving/engine.py).
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from pathlib import Path

from alignflow.errors import ConfigError, StageError, TransientError
from alignflow.processes import is_process, pid_alive, spawn_detached, stop_group, wait_ready
from serving.access import http_json, http_text
from serving.engine import Engine, engine_for
from serving.records import ServerRecord, remove_record, state_dir, users

logger = logging.getLogger("alignflow.serve")


def serve_python(configured: str | None = None, engine: str = "vllm") -> str:
    """The serve env's python: `configured` (stages.deploy.python), $ALIGNFLOW_SERVE_PYTHON, or .venv-serve."""
    from alignflow.home import PROJECT_ROOT

    python = configured or os.environ.get("ALIGNFLOW_SERVE_PYTHON") or str(PROJECT_ROOT / ".venv-serve/bin/python")
    if not Path(python).exists():
        label = engine_for(engine).label
        raise ConfigError(f"stages.deploy.python: the serve env's python {python} does not exist; run `make setup` "
                          f"(it creates .venv-serve with vLLM) or point stages.deploy.python / "
                          f"ALIGNFLOW_SERVE_PYTHON at a python that has {label}", "spec")
    return python


def engine_missing(python: str, engine_name: str) -> list[str]:
    """The serve env `python` cannot import the engine's package (found without importing it)."""
    import subprocess

    engine = engine_for(engine_name)
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({engine.package!r}) is None)"
    if subprocess.run([python, "-c", probe], capture_output=True, timeout=120).returncode == 0:
        return []
    return [f"stages.deploy.engine: {engine_name}: the serve env's python {python} has no {engine.package} package; "
            f"install it there ({engine.install}), or point stages.deploy.python / ALIGNFLOW_SERVE_PYTHON at a "
            f"python that has it"]


def has_gpu() -> bool:
    """An NVIDIA GPU is visible here (the driver's device list; no CUDA import)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def server_env(engine: Engine, cache_dir: str, key: str | None = None, adapters: bool = False) -> dict:
    """The server's environment: no store or hub credential (it reads a local folder), no project path, and
    what the engine needs, the api key included (by environment: never argv)."""
    from alignflow.secrets import child_env

    return child_env(PYTHONPATH=None, VIRTUAL_ENV=None, **engine.environment(cache_dir, key, adapters, has_gpu()))


def chat_template(model_dir: Path, into: Path) -> Path | None:
    """The chat template the model was trained with, as a file a server takes: the folder's
    chat_template.jinja, else the one inside tokenizer_config.json (written out beside the server's log)."""
    import json

    template = model_dir / "chat_template.jinja"
    if template.exists():
        return template
    config = model_dir / "tokenizer_config.json"
    text = json.loads(config.read_text()).get("chat_template") if config.exists() else None
    if not isinstance(text, str):
        return None
    into.write_text(text)
    return into


def launch(engine: Engine, cmd: list[str], env: dict, log_path: Path, root: str, timeout: float):
    """Start the server detached (its own process group, so it outlives the run) and wait until healthy; a
    failure to start kills it, so no unrecorded server is left behind. Returns the process."""
    proc = spawn_detached(cmd, env, log_path, state_dir())
    wait_ready(proc, lambda: healthy(root + engine.health_path), f"deploy: {engine.label}", log_path, timeout,
               exited=StageError, timed_out=TransientError, setting="stages.deploy.start_timeout")
    return proc


def healthy(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def smoke_test(endpoint: str, name: str, prompt: str, key: str | None = None) -> dict:
    """One chat request, as a user would send it."""
    reply = http_json(f"{endpoint}/chat/completions", {
        "model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64, "temperature": 0.0},
        timeout=120, key=key)
    choice = reply["choices"][0]
    return {"prompt": prompt, "answer": choice["message"]["content"], "finish_reason": choice["finish_reason"]}


def served_models(record: ServerRecord, key: str | None) -> list[dict] | None:
    """What the recorded server lists under /v1/models, or None if it is not answering."""
    if not pid_alive(record.pid):
        return None
    try:
        return http_json(f"{record.endpoint}/models", key=key)["data"]
    except (OSError, ValueError, KeyError):
        return None


def serves(record: ServerRecord, digest: str, key: str | None) -> bool:
    """Whether the recorded server is answering and serves the artifact `digest` under the record's name
    (the folder a server reads is named by digest, and /v1/models reports it as the model's root)."""
    cards = [m for m in served_models(record, key) or [] if m.get("id") == record.served_name]
    engine, hexdigest = engine_for(record.engine), digest.removeprefix("sha256:")
    return any(hexdigest in (engine.served_folder(record.root, key, card) or "") for card in cards)


def requests_in_flight(record: ServerRecord) -> int | None:
    """Requests the server is running or queueing (its Prometheus /metrics), or None if it does not answer."""
    text = http_text(f"{record.root}/metrics")
    return None if text is None else engine_for(record.engine).requests_in_flight(text)


def drain(record: ServerRecord, grace: float, timeout: float) -> None:
    """After traffic moved away: wait `grace` seconds for clients that resolved the old endpoint just before
    the switch, then until the server has no request running or waiting (at most `timeout` s)."""
    time.sleep(grace)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not requests_in_flight(record):
            return
        time.sleep(0.5)


def reused_pid(record: ServerRecord) -> bool:
    """The record's pid runs, but is not its server: the server exited and the system gave the number to a
    later process (told by its start time; in a record without one, by its command line)."""
    return pid_alive(record.pid) and not is_process(record.pid, record.pid_start, record.command)


def forget(record: ServerRecord) -> None:
    """Remove every record that names the server of `record`."""
    for name in users(record):
        remove_record(name, record)


def stop_server(record: ServerRecord, timeout: float = 30.0) -> bool:
    """Signal the server's process group to stop, then SIGKILL if it lingers; forget every record that
    names it. A pid that is now another process is never signalled: the record is stale, and is forgotten."""
    if reused_pid(record):
        logger.warning("%s", stale(record))
        forget(record)
        return False
    stopped = stop_group(record.pid, engine_for(record.engine).stop_signal, timeout, start=record.pid_start)
    forget(record)
    return stopped


def stale(record: ServerRecord) -> str:
    return f"pid {record.pid} is now another process; forgot the stale record"


def unload_adapter(record: ServerRecord, key: str | None) -> None:
    engine_for(record.engine).unload_adapter(record.root, record.served_name, key)


def release(record: ServerRecord, key: str | None, grace: float = 0.0, timeout: float = 60.0) -> str:
    """`record`'s pipeline no longer uses that server: unload its adapter if others still share the process,
    else drain and stop it. Says what happened."""
    if reused_pid(record):
        forget(record)
        return stale(record)
    others = [name for name in users(record) if name != record.name]
    if record.adapter and others:
        unload_adapter(record, key)
        return f"unloaded adapter {record.served_name} (the server stays for {', '.join(others)})"
    drain(record, grace, timeout)
    stop_server(record)
    return f"stopped pid {record.pid}"


def describe(record: ServerRecord) -> dict:
    """One row of `alignflow serve ls`."""
    served = f"adapter on {record.base.served_name}" if record.adapter and record.base else "model"
    return {"name": record.name, "engine": record.engine, "endpoint": record.endpoint, "pid": record.pid,
            "serves": served, "model": record.model.label, "digest": record.model.digest[7:19],
            "status": "running" if pid_alive(record.pid) else "dead"}
