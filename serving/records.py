"""The local records `alignflow serve` reads: one per pipeline (`$ALIGNFLOW_HOME/serve/<name>.json`) names
its live server: endpoint, pid, engine, what it serves (a model, or an adapter on a base), how it was
launched, the log, and where the api key comes from (never the key itself).

A server that serves adapters may be shared: every pipeline whose adapter sits on the same base is one
model name on one process, and the process stops when the last record that uses it goes. A record is found
by the pipeline's name only (`NAME.json`, `NAME~green.json` for a green server), never by a path; its log
lies in the same folder; and its pid is signalled only while it is still the server that started (the
record keeps the process's start time: a pid reused by another process is left alone).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from alignflow.errors import UsageError
from alignflow.home import home_dir
from alignflow.names import check, is_valid
from serving.engine import Launch

GREEN = "~green"  # the record of a pipeline's server that is up and evaluated but not yet live


@dataclass
class Served:
    """An artifact a server serves, by name, version and digest; a base model also by its served name."""

    name: str
    version: int
    digest: str
    served_name: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def of(cls, ref, served_name: str | None = None) -> Served:
        """From a store's ArtifactRef."""
        return cls(ref.name, ref.version, ref.digest, served_name)


@dataclass
class ServerRecord:
    """One pipeline's server, as deploy started (or shared) it."""

    name: str  # the pipeline's, or NAME~green
    served_name: str  # the model name clients ask for
    endpoint: str  # the OpenAI base URL: http://host:port/v1
    root: str  # http://host:port
    pid: int
    command: list[str]
    log: str
    model: Served  # the artifact served under `served_name` (the adapter, in adapter mode)
    folder: str  # its folder, named by digest
    engine: str = "vllm"
    pid_start: int | None = None  # with the pid, names the process: a stop checks both
    launch: Launch | None = None
    api_key: str | None = None  # where the key comes from: env:VARIABLE or secret:BLOCK
    bind: str = "127.0.0.1"
    adapter: bool = False
    base: Served | None = None  # adapter mode: the full-weights model the server runs
    shared: bool = False  # adapter mode: loaded into a server another pipeline started
    green: bool = False
    started_at: float = 0.0
    loaded_at: float | None = None
    host: str = ""  # the machine
    storage: str | None = None  # the store's credentials block
    smoke: dict | None = None  # the chat request that passed: prompt, answer, finish_reason
    load_test: list[dict] | None = None
    records: dict = field(default_factory=dict)  # store URI -> the deployment artifact's name and version

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ServerRecord:
        """From a file; keys it does not know (written by another version) are left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["model"] = Served(**data["model"])
        values["base"] = Served(**data["base"]) if data.get("base") else None
        values["launch"] = Launch.from_json(data["launch"]) if data.get("launch") else None
        return cls(**values)

    def same_server(self, other: ServerRecord) -> bool:
        return self.pid == other.pid and self.pid_start == other.pid_start


def state_dir() -> Path:
    return home_dir("serve")


def record_path(name: str) -> Path:
    """Where the record of `name` (a pipeline's name, or `NAME~green`) lives. Anything else (a path, `..`)
    is a UsageError, so no record is read, written or removed outside the serve folder."""
    if not is_valid("pipeline", name.removesuffix(GREEN) if isinstance(name, str) else name):
        check("pipeline", name, "serve record")  # raises, naming what was given
    return state_dir() / f"{name}.json"


def read_record(name: str) -> ServerRecord | None:
    path = record_path(name)
    return load(path) if path.exists() else None


def load(path: Path) -> ServerRecord:
    """The record in `path`; a file that is not one (hand-edited, cut short) is a UsageError saying which."""
    try:
        return ServerRecord.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"serve: {path} is not a server record alignflow can read ({type(exc).__name__}: "
                         f"{exc}); stop that server by its pid if it still runs, then remove the file") from None


def all_records() -> list[ServerRecord]:
    """Every record; a file not named by the pipeline-name rule was not written by alignflow: not one."""
    paths = sorted(state_dir().glob("*.json"))
    return [load(p) for p in paths if is_valid("pipeline", p.stem.removesuffix(GREEN))]


def write_record(record: ServerRecord, name: str | None = None) -> None:
    """Atomically, under `name` (default: the record's): `serve url` and a concurrent deploy never read half
    a file. This is the switch of a blue/green deploy: clients that resolve the endpoint from here move at
    once."""
    path = record_path(name or record.name)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=2))
    os.replace(tmp, path)


def remove_record(name: str, server: ServerRecord) -> None:
    """Forget `name`'s record if it still names `server`'s process (a newer deploy may have replaced it)."""
    current = read_record(name)
    if current and current.pid == server.pid and server.pid_start in (None, current.pid_start):
        record_path(name).unlink(missing_ok=True)


def users(record: ServerRecord) -> list[str]:
    """The pipelines whose records name the server of `record` (its pid, and the process that started then)."""
    return [r.name for r in all_records() if r.same_server(record)]


def server_log(record: ServerRecord) -> Path:
    """The record's log, which alignflow writes in the serve folder; a record naming a file elsewhere was
    not written by alignflow, and is refused rather than read."""
    log, folder = Path(record.log).resolve(), state_dir().resolve()
    if not log.is_relative_to(folder):
        raise UsageError(f"serve logs: {record.name!r}'s record names the log {record.log}, outside "
                         f"{folder} where alignflow writes server logs; that record was not written by "
                         f"alignflow: remove it, or redeploy")
    return log
