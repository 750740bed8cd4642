"""vLLM server processes: start, health, a smoke request, runtime adapters, drain and stop; and the local
records `alignflow serve` reads.

One record per pipeline (`$ALIGNFLOW_HOME/serve/<name>.json`) names its live server: endpoint, pid, what it
serves (a model, or an adapter on a base), the command, the log, and where the api key comes from (never the
key itself). A server that serves adapters may be shared: every pipeline whose adapter sits on the same base
is one model name on one process, and the process stops when the last record that uses it goes.

A record is found by the pipeline's name only (`NAME.json`, `NAME~green.json` for a green server), never by
a path; its log lies in the same folder; and its pid is signalled only while it is still the server that
started (the record keeps the process's start time: a pid reused by another process is left alone).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from alignflow.errors import ConfigError, StageError, TransientError, UsageError
from alignflow.home import home_dir
from alignflow.names import check, is_valid
from alignflow.processes import is_process, pid_alive, stop_group

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GREEN = "~green"  # the record of a pipeline's server that is up and evaluated but not yet live
logger = logging.getLogger("alignflow.serve")


# ---- records -------------------------------------------------------------------------------------

def state_dir() -> Path:
    return home_dir("serve")


def record_path(name: str) -> Path:
    """Where the record of `name` (a pipeline's name, or `NAME~green`) lives. Anything else (a path, `..`)
    is a UsageError, so no record is read, written or removed outside the serve folder."""
    if not is_valid("pipeline", name.removesuffix(GREEN) if isinstance(name, str) else name):
        check("pipeline", name, "serve record")  # raises, naming what was given
    return state_dir() / f"{name}.json"


def read_state(name: str) -> dict | None:
    path = record_path(name)
    return json.loads(path.read_text()) if path.exists() else None


def all_states() -> list[dict]:
    """Every record; a file not named by the pipeline-name rule was not written by alignflow: not one."""
    paths = sorted(state_dir().glob("*.json"))
    return [json.loads(p.read_text()) for p in paths if is_valid("pipeline", p.stem.removesuffix(GREEN))]


def write_state(name: str, state: dict) -> None:
    """Atomically: `serve url` and a concurrent deploy never read half a file. This is the switch of a
    blue/green deploy: clients that resolve the endpoint from here move at once."""
    path = record_path(name)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def remove_state(name: str, pid: int, pid_start: int | None = None) -> None:
    """Forget `name`'s record if it still names the server `pid` (a newer deploy may have replaced it);
    with `pid_start`, only if it names the process that started then."""
    current = read_state(name)
    if current and current["pid"] == pid and pid_start in (None, current.get("pid_start")):
        record_path(name).unlink(missing_ok=True)


def users(state: dict) -> list[str]:
    """The pipelines whose records name the server of `state` (its pid, and the process that started then)."""
    return [s["name"] for s in all_states()
            if s["pid"] == state["pid"] and s.get("pid_start") == state.get("pid_start")]


def server_log(state: dict) -> Path:
    """The record's log, which alignflow writes in the serve folder; a record naming a file elsewhere was
    not written by alignflow, and is refused rather than read."""
    log, folder = Path(state["log"]).resolve(), state_dir().resolve()
    if not log.is_relative_to(folder):
        raise UsageError(f"serve logs: {state.get('name')!r}'s record names the log {state['log']}, outside "
                         f"{folder} where alignflow writes server logs; that record was not written by "
                         f"alignflow: remove it, or redeploy")
    return log


# ---- who can reach a server: its bind address and api key ----------------------------------------

def bind_addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """The addresses a server bound to `host` listens on, as this machine resolves them; None when the name
    does not resolve. '[::1]' -> [::1]; 'localhost' -> [127.0.0.1, ::1]; '' -> [0.0.0.0] (every interface)."""
    try:
        literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        return [ipaddress.ip_address(literal or "0.0.0.0")]
    except ValueError:
        pass  # a name
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):  # no such name; a label too long; a NUL byte
        return None
    return [ipaddress.ip_address(info[4][0]) for info in found]


def is_loopback(host: str) -> bool:
    """Only this machine can reach a server bound to `host`: every address it resolves to is loopback.
    '127.0.0.1', '::1', 'localhost': yes; '0.0.0.0', '::', '' (every interface), 'localhost.example': no."""
    addresses = bind_addresses(host)
    return bool(addresses) and all(address.is_loopback for address in addresses)


def resolve_key(source: str | None) -> str | None:
    """The api key named by `env:VARIABLE` or `secret:BLOCK` (a Prefect Secret block); None for none."""
    if not source:
        return None
    kind, _, name = source.partition(":")
    if kind == "env":
        key = os.environ.get(name)
        if not key:
            raise ConfigError(f"stages.deploy.api_key: the environment variable {name} is not set or empty; "
                              f"export {name}=... where the run and `alignflow serve` run", "spec")
        return key
    from prefect.blocks.system import Secret

    try:
        return Secret.load(name).get()
    except ValueError as exc:
        raise ConfigError(f"stages.deploy.api_key: no Prefect Secret block named {name!r} ({exc}); create it "
                          f"with `prefect block create secret` or in the dashboard (Blocks)", "spec") from None


def http_json(url: str, payload: dict | None = None, timeout: float = 5.0, key: str | None = None) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return {"text": body.decode(errors="replace")}


# ---- starting ------------------------------------------------------------------------------------

def serve_python(configured: str | None = None) -> str:
    """The serve env's python: `configured` (stages.deploy.python), $ALIGNFLOW_SERVE_PYTHON, or .venv-serve."""
    python = configured or os.environ.get("ALIGNFLOW_SERVE_PYTHON") or str(PROJECT_ROOT / ".venv-serve/bin/python")
    if not Path(python).exists():
        raise ConfigError(f"stages.deploy.python: the serve env's python {python} does not exist; run `make setup` "
                          "(it creates .venv-serve with vLLM) or point stages.deploy.python / "
                          "ALIGNFLOW_SERVE_PYTHON at a python that has vLLM", "spec")
    return python


def chat_template(model_dir: Path, into: Path) -> Path | None:
    """The chat template the model was trained with, as a file vLLM's `--chat-template` takes: the folder's
    chat_template.jinja, else the one inside tokenizer_config.json (written out beside the server's log)."""
    template = model_dir / "chat_template.jinja"
    if template.exists():
        return template
    config = model_dir / "tokenizer_config.json"
    text = json.loads(config.read_text()).get("chat_template") if config.exists() else None
    if not isinstance(text, str):
        return None
    into.write_text(text)
    return into


def has_gpu() -> bool:
    """An NVIDIA GPU is visible here (the driver's device list; no CUDA import)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def server_env(cache_dir: str, key: str | None = None, adapters: bool = False) -> dict:
    """vLLM's environment: no store or hub credential (it reads a local folder), the api key by environment
    (a --api-key argument would show in `ps` and in the record), and the CPU settings below."""
    from alignflow.secrets import child_env

    env = child_env(HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
                    VLLM_CACHE_ROOT=str(Path(cache_dir) / "vllm"), PYTHONPATH=None, VIRTUAL_ENV=None,
                    VLLM_API_KEY=key or None,
                    VLLM_ALLOW_RUNTIME_LORA_UPDATING="True" if adapters else None)  # adapters load at run time
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU hosts; vLLM's default takes 4
    # CPU hosts: vLLM pins its threads to fixed cores by default, so during a blue/green deploy the new server
    # lands on the very core the busy old one spins on and starts 10x slower; unpinned, the OS shares them
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    if not has_gpu():  # vLLM 0.32 on CPU cannot load its own AOT-compiled artifacts and compiles on every start
        env.setdefault("VLLM_USE_AOT_COMPILE", "0")  # the older compile cache loads: 3.6 s vs 11 s, measured
        # one model worker runs inside the engine process (--distributed-executor-backend uni, which vLLM on CPU
        # honours only with this set), as on a single GPU: no third process that imports torch and vLLM again
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # healthy in 48 s instead of 69 s, measured
    return env


def wait_healthy(proc: subprocess.Popen, root: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StageError(f"deploy: vLLM exited with code {proc.returncode} while starting. "
                             f"Last lines of {log_path}:\n{tail(log_path)}")
        try:
            urllib.request.urlopen(f"{root}/health", timeout=2).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(1.0)
    raise TransientError(f"deploy: vLLM did not answer /health within {timeout:.0f}s (stages.deploy.start_timeout). "
                         f"Last lines of {log_path}:\n{tail(log_path)}")


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def launch(cmd: list[str], env: dict, log_path: Path, root: str, timeout: float) -> subprocess.Popen:
    """Start the server detached (its own process group, so it outlives the run), wait for /health; a
    failure to start kills it, so no unrecorded server is left behind."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=str(state_dir()))
    try:
        wait_healthy(proc, root, log_path, timeout)
    except BaseException:  # a timeout, a crash, Ctrl-C
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    return proc


def smoke_test(endpoint: str, name: str, prompt: str, key: str | None = None) -> dict:
    """One chat request, as a user would send it."""
    reply = http_json(f"{endpoint}/chat/completions", {
        "model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64, "temperature": 0.0},
        timeout=120, key=key)
    choice = reply["choices"][0]
    return {"prompt": prompt, "answer": choice["message"]["content"], "finish_reason": choice["finish_reason"]}


# ---- serving state -------------------------------------------------------------------------------

def served_models(state: dict, key: str | None) -> list[dict] | None:
    """What the recorded server lists under /v1/models, or None if it is not answering."""
    if not pid_alive(state["pid"]):
        return None
    try:
        return http_json(f"{state['endpoint']}/models", key=key)["data"]
    except (OSError, ValueError, KeyError):
        return None


def serves(state: dict, digest: str, key: str | None) -> bool:
    """Whether the recorded server is answering and serves the artifact `digest` under the record's name
    (the folder vLLM reads is named by digest)."""
    models = served_models(state, key) or []
    hexdigest = digest.removeprefix("sha256:")
    return any(m.get("id") == state["served_name"] and hexdigest in (m.get("root") or "") for m in models)


def load_adapter(state: dict, name: str, folder: Path, key: str | None, replace: bool) -> None:
    """vLLM's runtime LoRA loading: `name` now answers with the adapter in `folder`, no restart. `replace`
    swaps an adapter already loaded under that name in place (requests in flight finish on the old one)."""
    payload = {"lora_name": name, "lora_path": str(folder), "load_inplace": replace}
    try:
        http_json(f"{state['root']}/v1/load_lora_adapter", payload, timeout=120, key=key)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:2000]
        raise StageError(f"deploy: the server at {state['endpoint']} (pid {state['pid']}) refused adapter {name} "
                         f"from {folder}: HTTP {exc.code}: {detail}") from None


def unload_adapter(state: dict, key: str | None) -> None:
    payload = {"lora_name": state["served_name"]}
    try:
        http_json(f"{state['root']}/v1/unload_lora_adapter", payload, timeout=60, key=key)
    except (OSError, ValueError):
        pass  # gone already, or the server is going: nothing to unload


# ---- stopping ------------------------------------------------------------------------------------

REQUESTS_METRIC = re.compile(r"^vllm:num_requests_(running|waiting)\{[^}]*\}\s+([0-9.e+]+)", re.M)


def requests_in_flight(root: str) -> int | None:
    """Requests the server is running or queueing (its Prometheus /metrics), or None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{root}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    return int(sum(float(value) for _, value in REQUESTS_METRIC.findall(text)))


def drain(state: dict, grace: float, timeout: float) -> None:
    """After traffic moved away: wait `grace` seconds for clients that resolved the old endpoint just before
    the switch, then until the server has no request running or waiting (at most `timeout` s)."""
    time.sleep(grace)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = requests_in_flight(state["root"])
        if not busy:
            return
        time.sleep(0.5)


def reused_pid(state: dict) -> bool:
    """The record's pid runs, but is not its server: the server exited and the system gave the number to a
    later process (told by its start time; in a record without one, by its command line)."""
    return pid_alive(state["pid"]) and not is_process(state["pid"], state.get("pid_start"), state.get("command"))


def forget(state: dict) -> None:
    """Remove every record that names the server of `state`."""
    for name in users(state):
        remove_state(name, state["pid"], state.get("pid_start"))


def stop_server(state: dict, timeout: float = 30.0) -> bool:
    """SIGINT the server's process group, then SIGKILL if it lingers; forget every record that names it.
    A pid that is now another process is never signalled: the record is stale, and is forgotten."""
    if reused_pid(state):
        logger.warning("%s", stale(state))
        forget(state)
        return False
    stopped = stop_group(state["pid"], signal.SIGINT, timeout,  # vLLM stops on SIGINT in under a second
                         start=state.get("pid_start"))
    forget(state)
    return stopped


def stale(state: dict) -> str:
    return f"pid {state['pid']} is now another process; forgot the stale record"


def release(state: dict, key: str | None, grace: float = 0.0, timeout: float = 60.0) -> str:
    """`state`'s pipeline no longer uses that server: unload its adapter if others still share the process,
    else drain and stop it. Says what happened."""
    if reused_pid(state):
        forget(state)
        return stale(state)
    others = [name for name in users(state) if name != state["name"]]
    if state.get("adapter") and others:
        unload_adapter(state, key)
        return f"unloaded adapter {state['served_name']} (the server stays for {', '.join(others)})"
    drain(state, grace, timeout)
    stop_server(state)
    return f"stopped pid {state['pid']}"
