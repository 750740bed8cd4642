"""Stage `deploy`: serve a model artifact behind vLLM's OpenAI-compatible server, without dropping traffic.

Idempotent rather than cached. If the pipeline's recorded server answers with the same digest, nothing
happens. Otherwise:
  - mode `model` (full weights: merged or quantized) goes blue/green: a new server starts on its own port,
    passes /health and a chat request, the pipeline's record switches to it (`alignflow serve url NAME`
    answers the new endpoint from then on), the old server drains its requests in flight, then stops. If
    the new server fails, the old one keeps serving and the stage fails with the new server's log tail;
  - mode `adapter` serves the pipeline's LoRA adapter on its base. A server already serving that base (for
    this pipeline or another) loads the adapter at run time under the pipeline's name, no restart; else a
    new server starts with the base and the adapter, blue/green as above.
The record (endpoint, pid, model digest, command, where the api key comes from) goes to the store as a
`deployment` artifact and to the local record `alignflow serve` reads (tasks/servers.py).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from alignflow.errors import ConfigError, StageError, StorageError
from alignflow.processes import free_port, pid_alive, process_start
from storage import ArtifactRef, ArtifactStore
from tasks.config import StageConfig
from tasks.load_test import LoadTest, measure_live
from tasks.models import first_question, questions
from tasks.servers import (
    GREEN,
    all_states,
    bind_addresses,
    chat_template,
    launch,
    load_adapter,
    read_state,
    release,
    remove_state,
    resolve_key,
    serve_python,
    served_models,
    server_env,
    serves,
    smoke_test,
    state_dir,
    stop_server,
    tail,
    unload_adapter,
    write_state,
)
from tasks.stage import RunContext, publish, stage
from tasks.vllm_args import extra_args_problems

KEY_SOURCE = r"^(env|secret):[A-Za-z0-9_.-]+$"


class DeployStage(StageConfig):
    """vLLM's OpenAI-compatible server, started from the serve env; new versions go live without a gap."""

    backend: Literal["vllm"] = Field("vllm", description="the serving engine")
    mode: Literal["model", "adapter"] = Field(
        "model", description="model: full weights (merged, or quantized); adapter: the base model plus the "
                             "pipeline's LoRA adapter, on a server shared by every pipeline with that base")
    host: str = Field("127.0.0.1", description="bind address; anything but loopback needs api_key")
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port per server (blue/green); a fixed port "
                                                     "replaces the previous server in place, with a gap")
    api_key: Optional[str] = Field(None, pattern=KEY_SOURCE, description="where the server's api key comes from: "
                                                                        "env:VARIABLE or secret:BLOCK (a Prefect "
                                                                        "Secret block); the key never reaches a log "
                                                                        "or an artifact")
    max_model_len: Optional[int] = Field(None, ge=16, description="context length (empty: the model's)")
    max_lora_rank: int = Field(64, ge=1, le=1024, description="mode adapter: the largest adapter rank the server "
                                                              "accepts at run time")
    max_loras: int = Field(8, ge=1, le=1024, description="mode adapter: adapters a batch may mix")
    start_timeout: float = Field(600.0, gt=0, le=86400, description="seconds to wait for /health")
    drain_seconds: float = Field(5.0, ge=0, le=3600, description="after traffic moves, the old server still "
                                                                 "takes requests this long, then finishes what "
                                                                 "it has before it stops")
    drain_timeout: float = Field(120.0, ge=0, le=86400, description="the longest wait for those requests")
    load_test: Optional[LoadTest] = Field(default_factory=LoadTest, description="evalscope perf against the live "
                                                                                "endpoint after each new deploy "
                                                                                "(empty: none)")
    python: Optional[str] = Field(None, description="the serve env's python (empty: $ALIGNFLOW_SERVE_PYTHON, "
                                                    "else .venv-serve beside the project)")
    extra_args: list[str] = Field(default_factory=list, description="appended to the vLLM command line, e.g. "
                                                                    "['--tensor-parallel-size', '2']")

    def problems(self) -> list[str]:
        return extra_args_problems(self.extra_args) + self.exposure_problems()

    def exposure_problems(self) -> list[str]:
        """A server without a key must be bound where only this machine reaches it: every address `host`
        resolves to is loopback (`localhost.example.com` is a name like any other)."""
        if self.api_key:
            return []
        addresses, host = bind_addresses(self.host), self.host or "'' (every interface)"
        fix = "set stages.deploy.api_key (env:VARIABLE or secret:BLOCK), or bind 127.0.0.1"
        if addresses is None:
            return [f"stages.deploy.host: {host} could not be resolved here, so it cannot be shown to be "
                    f"loopback; {fix}"]
        if not all(address.is_loopback for address in addresses):
            return [f"stages.deploy.host: {host} exposes the server beyond this machine without an api key; {fix}"]
        return []


@stage("deploy", config=DeployStage, key_metric="endpoint", cached=False)
def deploy(run: RunContext, model: ArtifactRef, config: DeployStage, probe: ArtifactRef | None) -> ArtifactRef:
    from prefect import get_run_logger

    prompts = questions(run.open_store().get_dir(probe) / "data.jsonl", 64) if probe else ["Hello!"]
    return roll_out(run, model, config, prompts, get_run_logger())


def roll_out(run: RunContext, model: ArtifactRef, config: DeployStage, prompts: list[str], logger) -> ArtifactRef:
    """Make `model` what the pipeline's name serves (see the module's docstring); returns the record.
    `prompts`: the smoke request (the first) and the load test's."""
    prompt = prompts[0]
    key = resolve_key(config.api_key)
    current = read_state(run.name)
    if current and serves(current, model.digest, key):
        return already_serving(run, model, config, current, logger)
    if current and config.port and current["endpoint"].endswith(f":{config.port}/v1"):
        logger.warning("deploy: port %d is fixed: stopping the previous server first (requests fail until the "
                       "new one is up; port 0 avoids that)", config.port)
        stop_server(current)
        current = None
    green = read_state(run.name + GREEN)
    if green and config.mode == "model" and serves(green, model.digest, key):
        logger.info("deploy: switching to the green server evaluation ran on (pid %d)", green["pid"])
        record = {k: v for k, v in green.items() if k != "green"} | {"name": run.name}
    else:
        discard_green(run.name)
        record = (add_adapter(run, model, config, key, logger) if config.mode == "adapter"
                  else start_server(run, model, config, logger, key))
    try:
        record["smoke"] = smoke_test(record["endpoint"], run.name, prompt, key)
    except (OSError, ValueError, KeyError) as exc:
        undo(record, current, key)
        raise StageError(f"deploy: the server started but a chat request failed: {exc}; the previous deployment "
                         f"keeps serving. Last lines of {record['log']}:\n{tail(Path(record['log']))}") from exc
    logger.info("deploy: smoke request %r -> %r (%s)", prompt, record["smoke"]["answer"],
                record["smoke"]["finish_reason"])
    switch(run.name, record)
    remove_state(run.name + GREEN, record["pid"])  # the green server is the live one now
    if current and current["pid"] != record["pid"]:
        logger.info("deploy: %s now answers at %s; draining the previous server (pid %d)", run.name,
                    record["endpoint"], current["pid"])
        logger.info("deploy: previous server: %s", release(current, key, config.drain_seconds, config.drain_timeout))
    if config.load_test:
        record["load_test"] = measure_live(record, config.load_test, prompts, key, run, logger)
    return record_deployment(run, model, config, record, "started")


def switch(name: str, record: dict) -> None:
    """Point the pipeline's record at `record`'s server: from here on `serve url` answers its endpoint."""
    write_state(name, dict(record, records=kept_records(name, record)))


def kept_records(name: str, record: dict) -> dict:
    """Which store holds which deployment record, as the pipeline's local record says: kept only while it
    names the same server serving the same digest."""
    previous = read_state(name)
    same = previous and previous["pid"] == record["pid"] and previous["model"]["digest"] == record["model"]["digest"]
    return previous.get("records", {}) if same else {}


def green_server(run: RunContext, model: ArtifactRef, config: DeployStage, probe: ArtifactRef | None,
                 logger) -> tuple[dict, str | None]:
    """The candidate's new server, up (health and a chat request passed) but taking no traffic: evaluation
    runs against it, then deploy switches traffic to it, or `discard_green` stops it when the gate rejects
    the candidate. Returns its record and api key. A server that already serves the digest is used as is:
    the live one (nothing changes), or a green one left by an earlier run."""
    key = resolve_key(config.api_key)
    for name in (run.name, run.name + GREEN):
        state = read_state(name)
        if state and serves(state, model.digest, key):
            return state, key
    discard_green(run.name)
    record = start_server(run, model, config, logger, key)
    prompt = first_question(run.open_store().get_dir(probe) / "data.jsonl") if probe else "Hello!"
    try:
        record["smoke"] = smoke_test(record["endpoint"], run.name, prompt, key)
    except (OSError, ValueError, KeyError) as exc:
        stop_server(record)
        raise StageError(f"evaluate: the candidate's new server started but a chat request failed: {exc}. "
                         f"Last lines of {record['log']}:\n{tail(Path(record['log']))}") from exc
    record.update(name=run.name + GREEN, green=True)
    write_state(record["name"], record)
    logger.info("evaluate: the candidate's green server is up at %s (pid %d); deploy switches to it if the gate "
                "passes", record["endpoint"], record["pid"])
    return record, key


def discard_green(name: str) -> None:
    """Stop the pipeline's green server, if one is up (the gate rejected its model, or a newer one came)."""
    green = read_state(name + GREEN)
    if green:
        stop_server(green)


def scratch_settings(config: DeployStage) -> DeployStage:
    """deploy's engine settings for a server that only evaluation uses: loopback, any port, no key."""
    return config.model_copy(update={"host": "127.0.0.1", "port": 0, "api_key": None, "mode": "model"})


def undo(record: dict, current: dict | None, key: str | None) -> None:
    """A new deployment failed its smoke request: stop its server, or take its adapter back out of a shared
    one (reloading the adapter the name served before, if it was replaced in place)."""
    if not record.get("shared"):
        stop_server(record)
    elif current and current["pid"] == record["pid"] and current.get("folder"):
        load_adapter(record, record["served_name"], Path(current["folder"]), key, replace=True)
    else:
        unload_adapter(record, key)


def endpoint_root(host: str, port: int) -> str:
    """Where clients on this machine reach a server bound to `host`."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def start_server(run: RunContext, model: ArtifactRef, config: DeployStage, logger, key: str | None = None,
                 adapter: ArtifactRef | None = None) -> dict:
    """A new server for `model` (full weights) under the pipeline's name; with `adapter` (a LoRA adapter on
    `model`), the base is served as `base-<digest>` and the adapter under the pipeline's name."""
    if problems := config.problems():  # settings that skipped the spec's checks (an older deployment's)
        raise ConfigError(problems, "stages.deploy")
    store = run.open_store()
    model_dir = store.get_dir(model)
    port = config.port or free_port(config.host)
    log_path = state_dir() / f"{run.name}-{(adapter or model).short_digest}-{port}.log"
    template = chat_template(model_dir, log_path.with_suffix(".jinja"))
    served = f"base-{model.short_digest}" if adapter else run.name
    folder = store.get_dir(adapter) if adapter else model_dir
    cmd = [serve_python(config.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", served, "--host", config.host, "--port", str(port), "--generation-config", "auto"]
    if template:  # the template used in training, never a guess of the server's
        cmd += ["--chat-template", str(template)]
    if config.max_model_len:
        cmd += ["--max-model-len", str(config.max_model_len)]
    if adapter:
        cmd += ["--enable-lora", "--max-lora-rank", str(config.max_lora_rank), "--max-loras", str(config.max_loras),
                "--lora-modules", f"{run.name}={folder}"]
    cmd += list(config.extra_args)
    root = endpoint_root(config.host, port)
    logger.info("deploy: starting vLLM for %s on %s:%d (log: %s)", (adapter or model).label, config.host, port,
                log_path)
    started = time.monotonic()
    proc = launch(cmd, server_env(run.cache_dir, key, adapters=adapter is not None), log_path, root,
                  config.start_timeout)
    logger.info("deploy: vLLM healthy after %.0fs", time.monotonic() - started)
    record = {"name": run.name, "served_name": run.name, "endpoint": f"{root}/v1", "root": root, "pid": proc.pid,
              "pid_start": process_start(proc.pid),  # with the pid, names this process: a stop checks both
              "command": cmd, "log": str(log_path), "api_key": config.api_key, "bind": config.host,
              "model": artifact_record(adapter or model), "folder": str(folder), "adapter": adapter is not None,
              "started_at": time.time(), "host": socket.gethostname(),
              "storage": run.credentials_block}
    if adapter:
        record["base"] = dict(artifact_record(model), served_name=served)
    return record


def artifact_record(ref: ArtifactRef) -> dict:
    return {"name": ref.name, "version": ref.version, "digest": ref.digest}


# ---- adapters ------------------------------------------------------------------------------------

def adapter_base(store: ArtifactStore, adapter: ArtifactRef) -> ArtifactRef:
    """The full-weights model an adapter was trained on (vLLM applies one adapter per request)."""
    if adapter.kind != "adapter":
        raise ConfigError(f"stages.deploy.mode: adapter serves a LoRA adapter, but the model to deploy, "
                          f"{adapter.label}, is full weights (no stage trained an adapter last); use mode: model",
                          "spec")
    base = store.manifest(adapter.digest)["metadata"]["base"]
    ref = store.ref(base["name"], base["version"])
    if ref.kind == "adapter":
        raise ConfigError(f"stages.deploy.mode: adapter: {adapter.label} sits on another adapter ({ref.label}); "
                          "a server applies one adapter to full weights. Train the earlier stage with tuner: full, "
                          "or deploy with mode: model (merged)", "spec")
    return ref


def adapter_rank(folder: Path) -> int:
    config = json.loads((folder / "adapter_config.json").read_text())
    return max([int(config.get("r", 8))] + [int(r) for r in (config.get("rank_pattern") or {}).values()])


def shared_server(base: ArtifactRef, config: DeployStage) -> dict | None:
    """A running server that serves `base` for adapters, bound and keyed as `config` asks."""
    for state in all_states():
        if (state.get("adapter") and state["base"]["digest"] == base.digest and state.get("bind") == config.host
                and state.get("api_key") == config.api_key and pid_alive(state["pid"])):
            return state
    return None


def add_adapter(run: RunContext, adapter: ArtifactRef, config: DeployStage, key: str | None, logger) -> dict:
    """Load the adapter into the server that already serves its base (no restart), or start one."""
    store = run.open_store()
    base, folder = adapter_base(store, adapter), store.get_dir(adapter)
    rank = adapter_rank(folder)
    if rank > config.max_lora_rank:
        raise ConfigError(f"stages.deploy.max_lora_rank: {adapter.label} has rank {rank}, above the server's "
                          f"{config.max_lora_rank}; raise max_lora_rank (a new server starts)", "spec")
    server = shared_server(base, config)
    if server is None:
        return start_server(run, base, config, logger, key, adapter=adapter)
    replace = any(m.get("id") == run.name for m in served_models(server, key) or [])
    logger.info("deploy: loading %s into the running server pid %d as %r (%s)", adapter.label, server["pid"],
                run.name, "replacing the loaded one" if replace else "new name")
    load_adapter(server, run.name, folder, key, replace)
    keep = ("endpoint", "root", "pid", "command", "log", "api_key", "bind", "base", "started_at", "host", "storage")
    return {**{k: server[k] for k in keep}, "pid_start": server.get("pid_start"),  # older records lack it
            "name": run.name, "served_name": run.name, "adapter": True,
            "shared": True, "model": artifact_record(adapter), "folder": str(folder), "loaded_at": time.time()}


# ---- records -------------------------------------------------------------------------------------

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
    record["model"] = artifact_record(model)
    return record_deployment(run, model, config, record, "unchanged")


def record_deployment(run: RunContext, model: ArtifactRef, config: DeployStage, record: dict,
                      action: str) -> ArtifactRef:
    """Publish the deployment record in the run's store, then switch the local record to it (clients that
    resolve the endpoint follow), noting which store holds which record of this server and model."""
    import tempfile

    probe = record.get("smoke", {}).get("prompt", "Hello!")
    load = {"load_test": record["load_test"]} if record.get("load_test") else {}
    Path(run.cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=run.cache_dir, prefix=".deployment-") as out:
        (Path(out) / "deployment.json").write_text(json.dumps(record, indent=2))
        ref = publish(run, "deployment", "deployment", Path(out), stage="deploy", config=config,
                      inputs={"model": model}, metadata={"endpoint": record["endpoint"]},
                      metrics={"endpoint": record["endpoint"], "smoke_prompt": probe, **load})
    records = kept_records(run.name, record)
    write_state(run.name, dict(record, records={**records, run.open_store().uri: {"name": ref.name,
                                                                                  "version": ref.version}}))
    return dataclasses.replace(ref, metrics={**ref.metrics, "action": action})


def describe(state: dict) -> dict:
    """One row of `alignflow serve ls`."""
    alive = pid_alive(state["pid"])
    served = f"adapter on {state['base']['served_name']}" if state.get("adapter") else "model"
    return {"name": state["name"], "endpoint": state["endpoint"], "pid": state["pid"], "serves": served,
            "model": f"{state['model']['name']}@{state['model']['version']}",
            "digest": state["model"]["digest"][7:19], "status": "running" if alive else "dead"}
