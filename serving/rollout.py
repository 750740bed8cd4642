"""Making a model what a pipeline's name serves, without dropping traffic, on any engine.

If the pipeline's recorded server answers with the same digest, nothing happens. Otherwise:
  - mode `model` (full weights: merged or quantized) goes blue/green: a new server starts on its own port,
    passes its health check and a chat request, the pipeline's record switches to it (`alignflow serve url
    NAME` answers the new endpoint from then on), the old server drains its requests in flight, then stops.
    If the new server fails, the old one keeps serving and the error carries the new server's log tail;
  - mode `adapter` serves the pipeline's LoRA adapter on its base. A server already serving that base (for
    this pipeline or another) loads the adapter at run time under the pipeline's name, no restart; else a
    new server starts with the base and the adapter, blue/green as above.
A green server is one evaluation runs on before the gate decides: `green_server` starts it taking no
traffic, and `roll_out` switches to it when it serves the same digest.

`run` is the pipeline run: its `name`, `cache_dir`, `credentials_block` and `open_store()`.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from pathlib import Path

from alignflow.errors import ConfigError, StageError
from alignflow.processes import free_port, pid_alive, process_start, tail
from serving.access import endpoint_root, resolve_key
from serving.engine import AdapterLaunch, Launch, engine_for
from serving.lifecycle import (
    chat_template,
    has_gpu,
    launch,
    release,
    serve_python,
    served_models,
    server_env,
    serves,
    smoke_test,
    stop_server,
    unload_adapter,
)
from serving.records import (
    GREEN,
    Served,
    ServerRecord,
    all_records,
    read_record,
    remove_record,
    state_dir,
    write_record,
)
from serving.settings import Settings
from storage import ArtifactRef, ArtifactStore


def roll_out(run, model: ArtifactRef, settings: Settings, prompt: str, key: str | None,
             logger) -> tuple[ServerRecord, bool]:
    """Make `model` what the pipeline's name serves (see the module's docstring); `prompt` is the smoke
    request, `key` the api key settings.api_key names. Returns the live record, and whether it changed
    (False: it served `model` already)."""
    current = read_record(run.name)
    if current and serves(current, model.digest, key):
        return current, False
    if current and settings.port and current.endpoint.endswith(f":{settings.port}/v1"):
        logger.warning("deploy: port %d is fixed: stopping the previous server first (requests fail until the "
                       "new one is up; port 0 avoids that)", settings.port)
        stop_server(current)
        current = None
    green = read_record(run.name + GREEN)
    if green and settings.mode == "model" and serves(green, model.digest, key):
        logger.info("deploy: switching to the green server evaluation ran on (pid %d)", green.pid)
        record = dataclasses.replace(green, name=run.name, green=False)
    else:
        discard_green(run.name)
        record = (add_adapter(run, model, settings, key, logger) if settings.mode == "adapter"
                  else start_server(run, model, settings, logger, key))
    try:
        record.smoke = smoke_test(record.endpoint, run.name, prompt, key)
    except (OSError, ValueError, KeyError) as exc:
        undo(record, current, key)
        raise StageError(f"deploy: the server started but a chat request failed: {exc}; the previous deployment "
                         f"keeps serving. Last lines of {record.log}:\n{tail(Path(record.log))}") from exc
    logger.info("deploy: smoke request %r -> %r (%s)", prompt, record.smoke["answer"], record.smoke["finish_reason"])
    switch(run.name, record)
    remove_record(run.name + GREEN, record)  # the green server is the live one now
    if current and current.pid != record.pid:
        logger.info("deploy: %s now answers at %s; draining the previous server (pid %d)", run.name,
                    record.endpoint, current.pid)
        logger.info("deploy: previous server: %s", release(current, key, settings.drain_seconds,
                                                           settings.drain_timeout))
    return record, True


def switch(name: str, record: ServerRecord) -> None:
    """Point the pipeline's record at `record`'s server: from here on `serve url` answers its endpoint."""
    write_record(dataclasses.replace(record, records=kept_records(name, record)), name)


def kept_records(name: str, record: ServerRecord) -> dict:
    """Which store holds which deployment record, as the pipeline's local record says: kept only while it
    names the same server serving the same digest."""
    previous = read_record(name)
    same = previous and previous.pid == record.pid and previous.model.digest == record.model.digest
    return previous.records if same else {}


def green_server(run, model: ArtifactRef, settings: Settings, prompt: str, logger) -> tuple[ServerRecord, str | None]:
    """The candidate's new server, up (health and a chat request passed) but taking no traffic: evaluation
    runs against it, then deploy switches traffic to it, or `discard_green` stops it when the gate rejects
    the candidate. Returns its record and api key. A server that already serves the digest is used as is:
    the live one (nothing changes), or a green one left by an earlier run."""
    key = resolve_key(settings.api_key)
    for name in (run.name, run.name + GREEN):
        record = read_record(name)
        if record and serves(record, model.digest, key):
            return record, key
    discard_green(run.name)
    record = start_server(run, model, settings, logger, key)
    try:
        record.smoke = smoke_test(record.endpoint, run.name, prompt, key)
    except (OSError, ValueError, KeyError) as exc:
        stop_server(record)
        raise StageError(f"evaluate: the candidate's new server started but a chat request failed: {exc}. "
                         f"Last lines of {record.log}:\n{tail(Path(record.log))}") from exc
    record.name, record.green = run.name + GREEN, True
    write_record(record)
    logger.info("evaluate: the candidate's green server is up at %s (pid %d); deploy switches to it if the gate "
                "passes", record.endpoint, record.pid)
    return record, key


def discard_green(name: str) -> None:
    """Stop the pipeline's green server, if one is up (the gate rejected its model, or a newer one came)."""
    green = read_record(name + GREEN)
    if green:
        stop_server(green)


def undo(record: ServerRecord, current: ServerRecord | None, key: str | None) -> None:
    """A new deployment failed its smoke request: stop its server, or take its adapter back out of a shared
    one (reloading the adapter the name served before, if it was replaced in place)."""
    if not record.shared:
        stop_server(record)
    elif current and current.pid == record.pid and current.folder:
        engine_for(record.engine).load_adapter(record.root, record.served_name, current.folder, key, replace=True)
    else:
        unload_adapter(record, key)


def start_server(run, model: ArtifactRef, settings: Settings, logger, key: str | None = None,
                 adapter: ArtifactRef | None = None) -> ServerRecord:
    """A new server for `model` (full weights) under the pipeline's name; with `adapter` (a LoRA adapter on
    `model`), the base is served as `base-<digest>` and the adapter under the pipeline's name."""
    if problems := settings.problems():  # settings that skipped the spec's checks (an older deployment's)
        raise ConfigError(problems, "stages.deploy")
    engine, store = engine_for(settings.engine), run.open_store()
    model_dir = store.get_dir(model)
    port = settings.port or free_port(settings.host)
    log_path = state_dir() / f"{run.name}-{(adapter or model).short_digest}-{port}.log"
    template = chat_template(model_dir, log_path.with_suffix(".jinja"))
    folder = store.get_dir(adapter) if adapter else model_dir
    lora = AdapterLaunch(run.name, str(folder), settings.max_lora_rank, settings.max_loras) if adapter else None
    spec = Launch(model=str(model_dir), served_name=f"base-{model.short_digest}" if adapter else run.name,
                  host=settings.host, port=port, chat_template=str(template) if template else None,
                  max_model_len=settings.max_model_len, adapter=lora, extra_args=tuple(settings.extra_args),
                  gpu=has_gpu())
    cmd = engine.entrypoint(serve_python(settings.python, settings.engine)) + engine.arguments(spec)
    root = endpoint_root(settings.host, port)
    logger.info("deploy: starting %s for %s on %s:%d (log: %s)", engine.label, (adapter or model).label,
                settings.host, port, log_path)
    started = time.monotonic()
    proc = launch(engine, cmd, server_env(engine, run.cache_dir, key, adapters=adapter is not None), log_path, root,
                  settings.start_timeout)
    logger.info("deploy: %s healthy after %.0fs", engine.label, time.monotonic() - started)
    return ServerRecord(
        name=run.name, served_name=run.name, endpoint=f"{root}/v1", root=root, pid=proc.pid, command=cmd,
        log=str(log_path), model=Served.of(adapter or model), folder=str(folder), engine=engine.name,
        pid_start=process_start(proc.pid), launch=spec, api_key=settings.api_key, bind=settings.host,
        adapter=adapter is not None, base=Served.of(model, spec.served_name) if adapter else None,
        started_at=time.time(), host=socket.gethostname(), storage=run.credentials_block)


# ---- adapters ------------------------------------------------------------------------------------

def adapter_base(store: ArtifactStore, adapter: ArtifactRef) -> ArtifactRef:
    """The full-weights model an adapter was trained on (a server applies one adapter per request)."""
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


def shared_server(base: ArtifactRef, settings: Settings) -> ServerRecord | None:
    """A running server that serves `base` for adapters, on the same engine, bound and keyed as asked."""
    for record in all_records():
        if (record.adapter and record.base and record.base.digest == base.digest and record.engine == settings.engine
                and record.bind == settings.host and record.api_key == settings.api_key and pid_alive(record.pid)):
            return record
    return None


def add_adapter(run, adapter: ArtifactRef, settings: Settings, key: str | None, logger) -> ServerRecord:
    """Load the adapter into the server that already serves its base (no restart), or start one."""
    store = run.open_store()
    base, folder = adapter_base(store, adapter), store.get_dir(adapter)
    rank = adapter_rank(folder)
    if rank > settings.max_lora_rank:
        raise ConfigError(f"stages.deploy.max_lora_rank: {adapter.label} has rank {rank}, above the server's "
                          f"{settings.max_lora_rank}; raise max_lora_rank (a new server starts)", "spec")
    server = shared_server(base, settings)
    if server is None:
        return start_server(run, base, settings, logger, key, adapter=adapter)
    replace = any(m.get("id") == run.name for m in served_models(server, key) or [])
    logger.info("deploy: loading %s into the running server pid %d as %r (%s)", adapter.label, server.pid,
                run.name, "replacing the loaded one" if replace else "new name")
    engine_for(server.engine).load_adapter(server.root, run.name, str(folder), key, replace)
    return dataclasses.replace(server, name=run.name, served_name=run.name, adapter=True, shared=True,
                               model=Served.of(adapter), folder=str(folder), loaded_at=time.time(), smoke=None,
                               load_test=None, records={}, green=False)
