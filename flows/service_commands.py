"""`alignflow server ...`, `alignflow deploy` and `alignflow data ...`: running alignflow as a service."""

from __future__ import annotations

from pathlib import Path

from flows import server
from flows.summary import format_table

DEMO_SPEC = Path(__file__).resolve().parent.parent / "deployments" / "demo.yaml"


def cmd_server(args) -> int:
    if args.server_command == "up":
        state = server.up(database=args.database, slots=args.slots, port=args.port)
        s, w = state["server"], state["worker"]
        where = "an existing server (PREFECT_API_URL)" if s.get("external") else f"pid {s['pid']}"
        print(f"Prefect server: {s['api_url']} ({where})")
        print(f"worker {w['name']} (pid {w['pid']}) on work pool {w['pool']}; logs: {Path(w['log']).parent}")
        print(f"dashboard: {s['ui_url']}")
        print("alignflow commands on this machine now report to it; for the prefect CLI:")
        print(f"  export PREFECT_API_URL={s['api_url']}")
        print("next: `alignflow deploy` applies the deployments (manual, nightly, on-new-data, watch-data)")
        return 0
    if args.server_command == "down":
        stopped = server.down()
        print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
        return 0
    if args.server_command == "logs":
        print(server.tail(server.home() / f"{args.which}.log", args.lines))
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
    print(format_table(rows, ["deployment", "schedule", "triggers", "pool", "paused"]) if rows
          else "deployments: none (`alignflow deploy` applies them)")
    return 0 if s["running"] and w and w["running"] else 1


def cmd_data(args) -> int:
    if args.data_command == "scan":
        from flows.spec import load_spec
        from flows.watch_data import scan

        spec = load_spec(args.spec)
        with server.prefect_api() as url:
            for line in scan(spec, announce=url is not None):
                print(line)
        return 0
    return data_add(args.name, args.source, args.store)


def data_add(name: str, source: str, store_location: str | None) -> int:
    from alignflow.errors import UsageError
    from alignflow.names import check
    from flows.data_versions import announce_once, register
    from flows.preflight import store_problems
    from flows.store_commands import default_store
    from storage import open_store

    check("dataset", name, "data add NAME")  # the on-new-data deployment reacts to names under its pipeline
    location = store_location or default_store()
    problems = store_problems(location, None)
    if problems:
        raise UsageError(f"data add: {problems[0]}")
    if "://" not in location:
        location = str(Path(location).expanduser().resolve())
    store = open_store(location)
    ref, new = register(store, name, source)
    print(f"registered {ref.label} ({ref.metrics['files']} files, {ref.short_digest}) in {store.uri}" if new else
          f"{ref.label} already holds this content ({ref.short_digest}); nothing registered")
    with server.prefect_api() as url:
        if url is None:
            print("no Prefect server is running, so no event was sent; `alignflow server up` starts one")
        elif announce_once(store, ref, source):
            print(f"sent alignflow.dataset.updated for {ref.label} to {url}")
    return 0


def cmd_deploy(args) -> int:
    from flows.deploy_service import apply_deployments
    from flows.spec import load_spec

    spec = load_spec(args.spec or DEMO_SPEC, args.overrides, args.store)
    if "://" not in spec.store:  # the worker runs elsewhere on disk: pin the folder
        spec.store = str(Path(spec.store).expanduser().resolve())
    with server.prefect_api(required=True) as api_url:
        for line in apply_deployments(spec, api_url, args.pool, args.project_dir):
            print(line)
    return 0
