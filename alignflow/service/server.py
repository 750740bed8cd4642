"""`alignflow server up|down|status|logs`: a Prefect server and a process worker, on loopback, detached.

    up      start the server (SQLite in PREFECT_HOME, the database `alignflow run` writes to without a
            server, so earlier runs and saved blocks stay visible; or --database URL) and a worker on the
            work pool `alignflow`; idempotent; prints the dashboard URL
    status  server, worker, pool and deployments
    down    stop exactly what `up` started, by pid, and every process the worker started
    logs    the last lines of the server's or the worker's log

When PREFECT_API_URL already points at a server, `up` uses that one, starts no server, and starts the
worker against it. Other commands (`alignflow run`, `data add`) find a running alignflow server by its
state file and report to it, so its dashboard shows their runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from alignflow.errors import AlignflowError
from alignflow.home import PROJECT_ROOT, home_dir
from alignflow.processes import (
    free_port,
    is_process,
    pid_alive,
    process_start,
    spawn_detached,
    stop_group,
    wait_ready,
)

POOL = "alignflow"
DEFAULT_PORT = 4200  # Prefect's own default; a free port is taken when it is busy, and kept after
START_TIMEOUT = 600.0  # the first start creates and migrates the database: 30 s idle, minutes when busy
HEARTBEAT_SECONDS = 30  # flow runs started by the worker report they are alive this often
WORKER_QUERY_SECONDS = 2  # how often the worker asks the server for runs that are due
# Concurrency slots are leased. A lease kept in server memory dies with a killed run's temporary server while
# its slot stays taken, and every later run waits on it forever; kept in files under PREFECT_HOME, an expired
# lease is revoked by the next server that starts.
LEASES = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"
FILE_LEASES = "prefect.server.concurrency.lease_storage.filesystem"


class ServerError(AlignflowError):
    """The Prefect server or worker could not be started, reached or stopped."""


def home() -> Path:
    return home_dir("server")


def read_state() -> dict:
    path = home() / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_state(state: dict) -> None:
    tmp = home() / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, home() / "state.json")


def api_healthy(api_url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def running_server() -> dict | None:
    """alignflow's own server, if `server up` started one and it is alive."""
    server = read_state().get("server")
    if server and pid_alive(server["pid"]):
        return server
    return None


# ---- which API this process talks to -------------------------------------------------------------

@contextlib.contextmanager
def prefect_api(required: bool = False):
    """Point this process at a Prefect API for the `with` block, and yield its URL (None: Prefect's
    temporary local API). In order: the user's PREFECT_API_URL (checked, with one clear error when it does
    not answer), else the server `alignflow server up` started, else the temporary API with a start-up
    timeout that fits a busy machine (the user's own value wins). `required`: a server must exist."""
    from prefect.settings import get_current_settings, temporary_settings

    defaults = {"server.ephemeral.startup_timeout_seconds": 300,  # Prefect's 20 s is too short on 2 busy cores
                "flows.heartbeat_frequency": HEARTBEAT_SECONDS}  # a silent run is marked Crashed
    url, updates = get_current_settings().api.url, {}
    if url:
        require_api(url, "from PREFECT_API_URL")
    elif server := running_server():
        require_api(server["api_url"], f"the server `alignflow server up` started (pid {server['pid']}; "
                                       "`alignflow server logs server` shows its log)")
        url = updates["api.url"] = server["api_url"]
    if required and not url:
        raise ServerError("no Prefect server to talk to. Fix: `alignflow server up`, or set PREFECT_API_URL to "
                          "your server")
    with temporary_settings(updates=updates, set_defaults=defaults):
        yield url


def require_api(api_url: str, origin: str) -> None:
    for attempt in range(3):  # a busy server may miss one health check
        if api_healthy(api_url, timeout=10):
            return
        time.sleep(2 * attempt)
    raise ServerError(f"the Prefect API at {api_url} ({origin}) does not answer. Fix: start it "
                      "(`alignflow server up` starts one on this machine), or stop it and unset "
                      "PREFECT_API_URL to run with a temporary local API")


# ---- up ------------------------------------------------------------------------------------------

def up(database: str | None = None, slots: int = 1, limit_name: str = "alignflow-accelerator",
       port: int | None = None) -> dict:
    """Start what is not running yet; return the state (server and worker pids, URLs, logs)."""
    state = read_state()
    from prefect.settings import get_current_settings

    external = get_current_settings().api.url
    if external and external.rstrip("/") != own_api_url():
        require_api(external, "from PREFECT_API_URL")
        state["server"] = {"api_url": external, "ui_url": external.removesuffix("/api"), "pid": None,
                           "external": True}
    elif not running_server():
        state["server"] = start_server(database, port)
    api_url = state["server"]["api_url"]
    from prefect.settings import temporary_settings

    from tasks.stage import ensure_concurrency_limit

    with temporary_settings(updates={"api.url": api_url}):
        ensure_concurrency_limit(limit_name, slots, update=True)
        if not pid_alive(state.get("worker", {}).get("pid")):
            state["worker"] = start_worker(api_url)
    write_state(state)
    return state


def own_api_url() -> str | None:
    """The API URL `server up` serves (or served) on this machine: a PREFECT_API_URL equal to it is ours."""
    saved = home() / "port"
    return f"http://127.0.0.1:{saved.read_text().strip()}/api" if saved.exists() else None


def pick_port(asked: int | None = None) -> int:
    """`asked` (0: any free port) wins; else the port used last time; else 4200, or a free one if taken."""
    saved = home() / "port"
    if asked is None and saved.exists():
        return int(saved.read_text())
    port = asked or (DEFAULT_PORT if asked is None and port_free(DEFAULT_PORT) else free_port())
    saved.write_text(str(port))  # kept, so bookmarks and PREFECT_API_URL stay valid across restarts
    return port


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_server(database: str | None, port: int | None = None) -> dict:
    port = pick_port(port)
    if not port_free(port):
        raise ServerError(f"port {port} (kept in {home() / 'port'}) is taken by another program; stop it, or "
                          f"delete that file to let `alignflow server up` pick another port")
    api_url, ui_url = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
    env = prefect_env(api_url=None)
    env.update(PREFECT_UI_API_URL=api_url,  # else the UI calls port 4200 whatever the server's port
               PREFECT_UI_URL=ui_url,  # links in notifications
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port))
    if database:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database
    log = home() / "server.log"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn_detached(cmd, env, log, PROJECT_ROOT)
    wait_until(lambda: api_healthy(api_url, timeout=5), proc, "the Prefect server", log, START_TIMEOUT)
    return {"pid": proc.pid, "pid_start": process_start(proc.pid), "api_url": api_url, "ui_url": ui_url,
            "log": str(log), "database": "custom" if database else "PREFECT_HOME", "started_at": time.time()}


def start_worker(api_url: str) -> dict:
    env = prefect_env(api_url)
    # Prefect's worker asks for due runs every 10 s; a run a new file triggers waits for that twice (the scan,
    # then the run). A query every 2 s on loopback costs nothing worth keeping that delay for.
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", str(WORKER_QUERY_SECONDS))
    log = home() / "worker.log"
    name = f"alignflow-{socket.gethostname()}"
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process", "--name", name]
    proc = spawn_detached(cmd, env, log, PROJECT_ROOT)
    wait_until(lambda: worker_online(api_url, name), proc, "the Prefect worker", log, START_TIMEOUT)
    return {"pid": proc.pid, "pid_start": process_start(proc.pid), "name": name, "pool": POOL, "log": str(log),
            "started_at": time.time()}


def prefect_env(api_url: str | None) -> dict:
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **{LEASES: FILE_LEASES},
               PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS))  # a silent run is a crashed run
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    # the worker's flow runs find `alignflow`, `python` and the project's packages
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def wait_until(ready, proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    def waiting(seconds: float) -> None:
        print(f"  waiting for {what} ({seconds:.0f}s; the first start creates its database)", flush=True)

    wait_ready(proc, ready, what, log, timeout, exited=ServerError, timed_out=ServerError, progress=waiting)


def worker_online(api_url: str, name: str) -> bool:
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            return any(w.name == name for w in client.read_workers_for_work_pool(POOL))
    except Exception:  # noqa: BLE001 (the pool does not exist yet: the worker creates it when it starts)
        return False


# ---- down ----------------------------------------------------------------------------------------

def down() -> list[str]:
    """Stop the worker (and the flow runs it started), then the server; return what was stopped. A recorded
    pid that is another process by now is left alone (said on stderr); the record goes all the same."""
    state, stopped = read_state(), []
    worker = state.get("worker")
    if worker and stop_recorded("worker", worker, signal.SIGINT):  # a Prefect worker ignores SIGTERM
        stopped.append(f"worker (pid {worker['pid']})")
    server = state.get("server")
    if server and not server.get("external") and stop_recorded("server", server, signal.SIGTERM):
        stopped.append(f"server (pid {server['pid']}, {server['ui_url']})")
    (home() / "state.json").unlink(missing_ok=True)
    return stopped


def stop_recorded(what: str, record: dict, sig: int) -> bool:
    """Stop the process `record` names if it is still the one `up` started; returns whether it was running."""
    if pid_alive(record["pid"]) and not started_by_up(record):
        print(f"{what}: pid {record['pid']} is now another process; forgot the stale record", file=sys.stderr)
        return False
    return stop_tree(record["pid"], sig, record.get("pid_start"))


def started_by_up(record: dict) -> bool:
    """Whether the record's pid is still the process `up` started: the one that started at the recorded
    time or, in a record without it (older alignflow), one that runs Prefect."""
    import psutil

    if record.get("pid_start") is not None:
        return is_process(record["pid"], record["pid_start"])
    try:
        return "prefect" in " ".join(psutil.Process(record["pid"]).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop_tree(pid: int, sig: int, start: int | None = None, timeout: float = 30.0) -> bool:
    """Signal a process group, wait, then SIGKILL it and every descendant that is left (flow runs the worker
    started live in their own process groups). With `start` (`process_start`), a pid that is another
    process by then is not signalled. Returns whether it was running."""
    import psutil

    if not is_process(pid, start):
        return False
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    running = stop_group(pid, sig, timeout, start=start)
    for proc in descendants:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(descendants, timeout=10)
    return running


@contextlib.contextmanager
def throwaway_home(prefix: str):
    """A temporary ALIGNFLOW_HOME, PREFECT_HOME and ALIGNFLOW_CACHE for scripts that run the whole service
    (benchmarks, screenshots). Model servers and the Prefect server started there are stopped at the end."""
    import tempfile

    from serving.lifecycle import stop_server
    from serving.records import all_records

    names = ("ALIGNFLOW_HOME", "PREFECT_HOME", "ALIGNFLOW_CACHE", "PREFECT_API_URL")
    saved = {name: os.environ.get(name) for name in names}
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        home = Path(tmp)
        os.environ.update(ALIGNFLOW_HOME=str(home / "state"), PREFECT_HOME=str(home / "prefect"),
                          ALIGNFLOW_CACHE=str(home / "cache"))
        os.environ.pop("PREFECT_API_URL", None)
        try:
            yield home
        finally:
            for record in all_records():
                stop_server(record)
            down()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


# ---- status and logs -----------------------------------------------------------------------------

def status() -> dict:
    """What is running, what the server knows: pool, workers, deployments with schedules and triggers."""
    state = read_state()
    server, worker = state.get("server"), state.get("worker")
    out = {"server": None, "worker": None, "pool": None, "deployments": []}
    if server:
        alive = server.get("external") or pid_alive(server["pid"])
        out["server"] = dict(server, running=bool(alive) and api_healthy(server["api_url"]))
    if worker:
        out["worker"] = dict(worker, running=pid_alive(worker["pid"]))
    if out["server"] and out["server"]["running"]:
        from prefect.settings import temporary_settings

        with temporary_settings(updates={"api.url": server["api_url"]}):
            out["deployments"], out["pool"] = deployment_rows(), pool_row()
    return out


def pool_row() -> dict | None:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(POOL)
        except ObjectNotFound:
            return None
        workers = client.read_workers_for_work_pool(POOL)
    return {"name": pool.name, "type": pool.type, "status": str(pool.status.value if pool.status else "-").lower(),
            "workers": [f"{w.name} ({str(w.status.value).lower()})" for w in workers]}


def deployment_rows() -> list[dict]:
    """Every deployment on the server, by pipeline (its `pipeline:` tag; '-' for others), then name."""
    from prefect import get_client

    from alignflow.names import tagged_pipeline

    rows = []
    with get_client(sync_client=True) as client:
        automations = client.read_automations()
        for name, d in named_deployments(client):
            schedules = ", ".join(describe_schedule(s.schedule) for s in d.schedules) or "-"
            rows.append({"pipeline": tagged_pipeline(d.tags) or "-", "deployment": name, "schedule": schedules,
                         "triggers": trigger_text(automations, d.id), "pool": d.work_pool_name or "-",
                         "paused": "yes" if d.paused else "no"})
    return sorted(rows, key=lambda r: (r["pipeline"] == "-", r["pipeline"], r["deployment"]))


def named_deployments(client, deployment_filter=None) -> list[tuple[str, object]]:
    """(FLOW/NAME, deployment) for each deployment on the server, or each that `deployment_filter` selects."""
    flows = {f.id: f.name for f in client.read_flows()}
    return [(f"{flows.get(d.flow_id, '?')}/{d.name}", d)
            for d in client.read_deployments(deployment_filter=deployment_filter)]


def describe_schedule(schedule) -> str:
    if getattr(schedule, "cron", None):
        return f"cron {schedule.cron} ({schedule.timezone or 'UTC'})"
    if getattr(schedule, "interval", None):
        return f"every {schedule.interval.total_seconds():.0f}s"
    return str(schedule)


def trigger_text(automations: list, deployment_id) -> str:
    """The events that start a deployment (its automations' triggers)."""
    texts = []
    for automation in automations:
        related = str(deployment_id) in automation.model_dump_json()
        expect = getattr(automation.trigger, "expect", None)
        if related and expect:
            texts.append("on " + ", ".join(sorted(expect)))
    return "; ".join(texts) or "-"
