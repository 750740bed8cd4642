"""A Ray cluster on this machine for development and the tests: `alignflow ray up|down|status`.

A head and `nodes` worker nodes, each a separate `ray start --block` process (with its raylet, object
store and agents in its own process group), on loopback and free ports, each with its own temp folder
(so no node reads another's logs). `down` stops exactly those groups by pid and start time; Ray's own
`ray stop` would stop every Ray process of the machine, a user's other clusters too.

    $ALIGNFLOW_HOME/ray/cluster.json    the address and each node's pid, start time, log and temp folder
    $ALIGNFLOW_HOME/ray/<node>.log      what each `ray start` printed

The nodes inherit the environment of the shell that ran `up`: that is where their workers find the store's
credentials (AWS_*), as a KubeRay pod finds them in its secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from alignflow.errors import AlignflowError, UsageError
from alignflow.home import home_dir
from alignflow.processes import free_port, is_process, process_start, spawn_detached, stop_group, tail, wait_ready

HOST = "127.0.0.1"
OBJECT_STORE_BYTES = 100 * 1024 ** 2  # per node: Ray's minimum is 75 MiB; the store carries the weights here
START_TIMEOUT = 300.0  # seconds for a node to come up and register; Ray takes 10-30 s on two busy cores


class ClusterError(AlignflowError):
    """The local cluster did not start or cannot be reached."""


def home() -> Path:
    return home_dir("ray")


def read_record() -> dict | None:
    path = home() / "cluster.json"
    return json.loads(path.read_text()) if path.exists() else None


def running() -> dict | None:
    """The record of the cluster `up` started, while its head runs."""
    record = read_record()
    if record and is_process(record["head"]["pid"], record["head"]["start"]):
        return record
    return None


def up(nodes: int = 1, cpus: int = 1, gpus: int = 0) -> dict:
    """Start a head and `nodes` worker nodes with `cpus` (and `gpus`) each; wait until all have joined."""
    if record := running():
        raise UsageError(f"a local Ray cluster is already running at {record['address']} "
                         f"({len(record['nodes'])} worker nodes); `alignflow ray down` stops it")
    down()  # a record whose head died: clear what is left of it
    port = free_port(HOST)
    record = {"address": f"{HOST}:{port}", "dashboard": f"http://{HOST}:{free_port(HOST)}" if has_dashboard() else None,
              "nodes": [], "head": None, "cpus": cpus, "gpus": gpus}
    dashboard = ["--dashboard-host", HOST, "--dashboard-port", record["dashboard"].rsplit(":", 1)[1]] \
        if record["dashboard"] else ["--include-dashboard", "false"]
    try:
        record["head"] = start_node("head", record, ["--head", "--port", str(port), *dashboard])
        write_record(record)
        for i in range(nodes):
            record["nodes"].append(start_node(f"node-{i + 1}", record, ["--address", record["address"]]))
            write_record(record)
        wait_for_nodes(record["address"], nodes + 1)
    except BaseException:
        down()
        raise
    return record


def has_dashboard() -> bool:
    """Whether Ray's dashboard (and with it the State API: `ray list actors`) can run here: it needs the
    packages of `ray[default]`, which `ray[train]` does not bring."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError:
        return False
    return True


def start_node(name: str, record: dict, flags: list[str]) -> dict:
    """One `ray start --block` in its own process group; returns its record once it says it started."""
    temp = tempfile.mkdtemp(prefix=f"alignflow-ray-{name}-", dir="/tmp")  # short: Ray's sockets live in it
    log = home() / f"{name}.log"
    log.write_text("")
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *flags, "--node-ip-address", HOST,
           "--num-cpus", str(record["cpus"]), "--num-gpus", str(record["gpus"]), "--temp-dir", temp,
           "--dashboard-agent-listen-port", str(free_port(HOST)), "--object-store-memory",
           str(OBJECT_STORE_BYTES), "--disable-usage-stats"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = spawn_detached(cmd, env, log, Path.cwd())
    node = {"name": name, "pid": proc.pid, "start": process_start(proc.pid), "log": str(log), "temp": temp}
    try:
        wait_ready(proc, lambda: "Ray runtime started" in log.read_text(errors="replace"), f"Ray {name}", log,
                   START_TIMEOUT, ClusterError, ClusterError)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return node


def wait_for_nodes(address: str, count: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while (alive := len(alive_nodes(address))) < count:
        if time.monotonic() > deadline:
            raise ClusterError(f"only {alive} of {count} Ray nodes joined {address} within {timeout:.0f}s; their "
                               f"logs are in {home()}")
        time.sleep(1)


def alive_nodes(address: str) -> list[dict]:
    """The cluster's live nodes as Ray's GCS lists them (node id, address, resources)."""
    with gcs_state(address) as state:
        return [n for n in state.node_table() if n["Alive"]]


def live_actors(address: str) -> list[dict]:
    """The cluster's actors that are not dead (class name, job id, node, pid), as Ray's GCS lists them."""
    with gcs_state(address) as state:
        return [a for a in state.actor_table(None).values() if a["State"] != "DEAD"]


@contextlib.contextmanager
def gcs_state(address: str):
    """Ray's view of the cluster at `address`, read without joining it as a driver (no job is started)."""
    from ray._private.state import GlobalState
    from ray._raylet import GcsClientOptions

    state = GlobalState()
    state._initialize_global_state(GcsClientOptions.create(address, None, allow_cluster_id_nil=True,
                                                           fetch_cluster_id_if_nil=False))
    try:
        yield state
    finally:
        state.disconnect()


def down() -> list[str]:
    """Stop the nodes `up` started (workers first, then the head); the names of those that were running."""
    record = read_record()
    if not record:
        return []
    stopped = []
    for node in [*record["nodes"], *([record["head"]] if record["head"] else [])]:
        if stop_node_processes(node, signal.SIGTERM):
            stopped.append(node["name"])
        shutil.rmtree(node["temp"], ignore_errors=True)
    (home() / "cluster.json").unlink(missing_ok=True)
    return stopped


def stop_node(name: str) -> None:
    """Kill one node at once, as a lost machine would go (the tests' node failure)."""
    record = read_record() or {}
    node = next((n for n in record.get("nodes", []) if n["name"] == name), None)
    if node is None:
        raise UsageError(f"no node {name!r} in the local Ray cluster; `alignflow ray status` lists them")
    stop_node_processes(node, signal.SIGKILL)


def stop_node_processes(node: dict, sig: int) -> bool:
    """Stop a node's process group, then whatever it started outside it (Ray's worker processes start
    sessions of their own, and a busy one may not notice its raylet is gone); whether it was running."""
    import psutil

    if not is_process(node["pid"], node["start"]):
        return False
    try:
        started = psutil.Process(node["pid"]).children(recursive=True)
    except psutil.Error:
        started = []
    stop_group(node["pid"], sig, timeout=10, start=node["start"])
    for proc in started:
        try:
            proc.kill()
        except psutil.Error:
            pass  # gone already
    return True


def status() -> dict:
    """The record, and the nodes the cluster's GCS lists as alive (empty when the head is down)."""
    record = running()
    if not record:
        return {"running": False}
    try:
        nodes = alive_nodes(record["address"])
    except Exception as exc:  # noqa: BLE001 (a head that does not answer is a status, not a crash)
        problem = f"{exc}. {tail(Path(record['head']['log']))}"
        return {"running": True, "record": record, "nodes": [], "problem": problem}
    return {"running": True, "record": record, "nodes": nodes}


def write_record(record: dict) -> None:
    tmp = home() / "cluster.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, home() / "cluster.json")


def cluster_address(address: str | None, setting: str) -> str:
    """`address` (the spec's `setting`), else `default_address()`; none at all is a ConfigError."""
    from alignflow.errors import ConfigError

    found = address or default_address()
    if not found:
        raise ConfigError(f"engine ray but no Ray cluster is named: set {setting} or RAY_ADDRESS, or start one "
                          "here with `alignflow ray up`", "stage config")
    return found


def default_address() -> str | None:
    """Where `engine: ray` connects without an `address`: $RAY_ADDRESS, else the local cluster's."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    record = running()
    return record["address"] if record else None
