"""`alignflow server up|down|status|logs`: a Prefect server and worker for the dashboard, schedules and
triggers (alignflow/service/server.py)."""

from __future__ import annotations

from pathlib import Path

from alignflow.cli.common import port_number, positive_int, quiet_prefect
from alignflow.processes import tail
from alignflow.service import server
from alignflow.tables import format_table


def add_parsers(sub) -> None:
    parser = sub.add_parser("server", help="a Prefect server and worker for the dashboard, schedules and triggers")
    parser.set_defaults(func=cmd_server)
    verbs = parser.add_subparsers(dest="server_command", required=True)
    up = verbs.add_parser("up", help="start them (loopback, detached); print the dashboard URL")
    up.add_argument("--database", metavar="URL", help="the server's database (default: SQLite in PREFECT_HOME)")
    up.add_argument("--slots", type=positive_int, default=1,
                    help="slots of the accelerator concurrency limit (default 1)")
    up.add_argument("--port", type=port_number, help="the server's port (default: the last one, else 4200 if free; "
                                                     "0: any free port)")
    verbs.add_parser("down", help="stop exactly what `up` started")
    verbs.add_parser("status", help="server, worker, pool and each pipeline's deployments")
    logs = verbs.add_parser("logs", help="the last lines of the server's or the worker's log")
    logs.add_argument("which", nargs="?", choices=["server", "worker"], default="worker")
    logs.add_argument("-n", "--lines", type=positive_int, default=40)


def cmd_server(args) -> int:
    quiet_prefect()
    if args.server_command == "up":
        state = server.up(database=args.database, slots=args.slots, port=args.port)
        s, w = state["server"], state["worker"]
        where = "an existing server (PREFECT_API_URL)" if s.get("external") else f"pid {s['pid']}"
        print(f"Prefect server: {s['api_url']} ({where})")
        print(f"worker {w['name']} (pid {w['pid']}) on work pool {w['pool']}; logs: {Path(w['log']).parent}")
        print(f"dashboard: {s['ui_url']}")
        print("alignflow commands on this machine now report to it; for the prefect CLI:")
        print(f"  export PREFECT_API_URL={s['api_url']}")
        print("next: `alignflow deploy SPEC` applies a pipeline's deployments (by hand, nightly, on new data, "
              "the data watcher); deploy several specs to serve several pipelines")
        return 0
    if args.server_command == "down":
        stopped = server.down()
        print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
        return 0
    if args.server_command == "logs":
        print(tail(server.home() / f"{args.which}.log", args.lines))
        return 0
    return print_status(server.status())


def print_status(info: dict) -> int:
    s, w = info["server"], info["worker"]
    if not s:
        print("server: not running (`alignflow server up` starts one)")
        return 0
    print(f"server: {'running' if s['running'] else 'NOT ANSWERING'}  {s['ui_url']}  "
          f"(pid {s.get('pid') or 'external'}, log {s.get('log', '-')})")
    if w:
        print(f"worker: {'running' if w['running'] else 'STOPPED'}  {w['name']} on pool {w['pool']} (pid {w['pid']})")
    else:
        print("worker: none")
    pool = info["pool"]
    if pool:
        workers = ", ".join(pool["workers"]) or "none"
        print(f"pool:   {pool['name']} ({pool['type']}, {pool['status']}); workers: {workers}")
    rows = info["deployments"]
    print(format_table(rows, ["pipeline", "deployment", "schedule", "triggers", "pool", "paused"]) if rows
          else "deployments: none (`alignflow deploy` applies them)")
    return 0 if s["running"] and w and w["running"] else 1
