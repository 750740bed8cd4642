"""The `alignflow` command line. Fast to start: torch, TRL and Prefect load only when a command needs them.

    alignflow run SPEC.yaml [--set stages.dpo.beta=0.2 ...] [--store PATH_OR_URI]
    alignflow demo [--set ...] [--store ...]
    alignflow plan SPEC.yaml [--set ...] [--skip ...] [--store ...]   every check, then cached / would run
    alignflow serve ls | url NAME | logs NAME | stop NAME | --all | rollback NAME | k8s NAME
    alignflow artifacts ls [NAME] | show NAME[@V] [--lineage] | get NAME[@V] DEST | promote NAME@V ALIAS
                        | rollback NAME ALIAS | verify            [--store PATH_OR_URI before the verb]
    alignflow storage up | down | status
    alignflow server up [--database URL] | down | status | logs [server|worker]
    alignflow deploy [SPEC] [--set ...]      apply prefect.yaml's deployments for a pipeline
    alignflow data add NAME SOURCE           register raw data as the next version of NAME
    alignflow data scan SPEC                 what the watch-data deployment does, once, here
    alignflow data inspect SOURCE [--kind K] [--model M]    formats, counts, lengths and problems
    alignflow data convert SOURCE... --kind K -o OUT.jsonl  the canonical rows the convert stage writes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

from alignflow.errors import AlignflowError
from alignflow.processes import stop_owned

DEMO_SPEC = Path(__file__).resolve().parent.parent / "deployments" / "demo.yaml"
EXIT_REJECTED = 3  # the gate rejected the candidate
EXIT_SUPERSEDED = 4  # another run promoted first: this candidate was judged against a stale production


def positive_int(text: str) -> int:
    """An argparse type: 1, 2, ... (argparse turns the ValueError into `error: argument ...` and exit 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def port_number(text: str) -> int:
    """An argparse type: 0 (any free port) to 65535."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0-65535; 0 picks a free one)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignflow", description="LLM post-training pipeline on Prefect.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline spec end to end")
    run.add_argument("spec", help="pipeline spec (YAML), e.g. deployments/demo.yaml")
    demo = sub.add_parser("demo", help="run the built-in demo pipeline (tiny model, synthetic task)")
    plan = sub.add_parser("plan", help="check a spec as `run` does and list the stages that would run and those "
                                       "that come from the cache (writes nothing)")
    plan.add_argument("spec", help="pipeline spec (YAML), e.g. deployments/demo.yaml")
    for p in (run, demo, plan):
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec field, e.g. --set stages.dpo.beta=0.2 (repeatable)")
        p.add_argument("--skip", action="append", default=[], metavar="STAGE",
                       help="leave a stage out of this run, e.g. --skip deploy (repeatable)")
        p.add_argument("--store", help="artifact store: a folder or s3://bucket/prefix (overrides the spec)")
        p.add_argument("--json", dest="json_out", metavar="FILE", help="also write the summary as JSON")

    add_artifacts_parser(sub)
    storage = sub.add_parser("storage", help="a local S3 server (SeaweedFS) for the store")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True)
    for name, text in (("up", "start it (loopback, free port) and print how to use it"), ("down", "stop it"),
                       ("status", "is it running?")):
        storage_sub.add_parser(name, help=text)

    add_service_parsers(sub)
    from flows.serve_commands import add_parsers

    add_parsers(sub.add_parser("serve", help="the model servers deploy started: list, resolve, logs, stop, "
                                             "roll back, export to Kubernetes"))
    return parser


def add_service_parsers(sub) -> None:
    server = sub.add_parser("server", help="a Prefect server and worker for the dashboard, schedules and triggers")
    verbs = server.add_subparsers(dest="server_command", required=True)
    up = verbs.add_parser("up", help="start them (loopback, detached); print the dashboard URL")
    up.add_argument("--database", metavar="URL", help="the server's database (default: SQLite in PREFECT_HOME)")
    up.add_argument("--slots", type=positive_int, default=1,
                    help="slots of the accelerator concurrency limit (default 1)")
    up.add_argument("--port", type=port_number, help="the server's port (default: the last one, else 4200 if free; "
                                                     "0: any free port)")
    verbs.add_parser("down", help="stop exactly what `up` started")
    verbs.add_parser("status", help="server, worker, pool and deployments")
    logs = verbs.add_parser("logs", help="the last lines of the server's or the worker's log")
    logs.add_argument("which", nargs="?", choices=["server", "worker"], default="worker")
    logs.add_argument("-n", "--lines", type=positive_int, default=40)

    deploy = sub.add_parser("deploy", help="apply prefect.yaml's deployments (manual, nightly, on-new-data, "
                                           "watch-data) for a pipeline spec")
    deploy.add_argument("spec", nargs="?", help="pipeline spec (default: deployments/demo.yaml)")
    deploy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    deploy.add_argument("--store", help="artifact store for the deployed runs (overrides the spec)")
    deploy.add_argument("--pool", default="alignflow", help="work pool of the post-train deployments (default: "
                                                            "the process pool alignflow)")
    deploy.add_argument("--project-dir", help="where workers find this project (default: this checkout)")

    data = sub.add_parser("data", help="inspect and convert datasets; register raw data versions; scan watched "
                                       "sources")
    data_verbs = data.add_subparsers(dest="data_command", required=True)
    add = data_verbs.add_parser("add", help="store a file, folder or s3:// prefix as the next version of NAME "
                                            "and announce it (alignflow.dataset.updated)")
    add.add_argument("name", metavar="NAME", help="dataset name, PIPELINE/NAME, e.g. demo/sft-extra")
    add.add_argument("source", metavar="SOURCE")
    add.add_argument("--store", help="folder or s3://bucket/prefix (default: $ALIGNFLOW_STORE or .alignflow/store)")
    scan = data_verbs.add_parser("scan", help="scan a spec's watched sources once, as watch-data does")
    scan.add_argument("spec")
    from flows.data_commands import add_parsers

    add_parsers(data_verbs)


def add_artifacts_parser(sub) -> None:
    artifacts = sub.add_parser("artifacts", help="list, inspect, fetch, promote and verify stored artifacts")
    artifacts.add_argument("--store", help="folder or s3://bucket/prefix (default: $ALIGNFLOW_STORE or "
                                           ".alignflow/store)")
    artifacts.add_argument("--storage", metavar="BLOCK", help="a saved prefect-aws AwsCredentials block for an "
                                                              "s3:// store (default: the AWS environment)")
    verbs = artifacts.add_subparsers(dest="artifacts_command", required=True)
    verbs.add_parser("ls", help="artifacts, or the versions of one").add_argument("name", nargs="?")
    show = verbs.add_parser("show", help="one version: files, metrics, metadata")
    show.add_argument("selector", metavar="NAME[@VERSION|@ALIAS]")
    show.add_argument("--lineage", action="store_true", help="the chain of inputs, configs and runs that made it")
    get = verbs.add_parser("get", help="copy an artifact's files into a folder")
    get.add_argument("selector", metavar="NAME[@VERSION|@ALIAS]")
    get.add_argument("dest")
    promote = verbs.add_parser("promote", help="point an alias at a version (compare-and-swap)")
    promote.add_argument("selector", metavar="NAME@VERSION")
    promote.add_argument("alias")
    rollback = verbs.add_parser("rollback", help="point an alias back at its previous version")
    rollback.add_argument("name")
    rollback.add_argument("alias")
    verbs.add_parser("verify", help="re-hash every blob that manifests reference; exit 1 on any problem")


def quiet_prefect() -> None:
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level itself


def checked_spec(args):
    """The spec `run`, `demo` and `plan` act on, after every check that needs no work: the spec's own and
    whether what it names is there (flows/preflight.py). One ConfigError lists every problem."""
    from flows.spec import load_spec

    path = args.spec if args.command in ("run", "plan") else DEMO_SPEC
    spec = load_spec(path, args.overrides, args.store, args.skip, before_work=True)
    if "://" not in spec.store:  # the flow may run elsewhere (a worker): pin the folder now
        spec.store = str(Path(spec.store).expanduser().resolve())
    return spec


def cmd_run(args) -> int:
    spec = checked_spec(args)
    quiet_prefect()
    from flows.post_train import run_pipeline
    from flows.server import prefect_api
    from flows.summary import render

    with prefect_api():
        summary = run_pipeline(spec)
    print("\n" + render(summary))
    write_json(args.json_out, summary)
    if summary["status"].startswith("rejected"):
        return EXIT_REJECTED
    return EXIT_SUPERSEDED if summary["status"] == "superseded" else 0


def cmd_plan(args) -> int:
    """Every check `run` makes, then the stages: which come from the cache (with their keys), which run."""
    spec = checked_spec(args)
    quiet_prefect()
    from flows.plan import memory_estimates, plan, render_plan, with_memory
    from flows.server import prefect_api

    with prefect_api() if spec.storage else contextlib.nullcontext():  # a credentials block is read via Prefect
        rows = plan(spec)
    memory = memory_estimates(spec)  # once: the table and --json show the same estimates and free memory
    rows = with_memory(rows, memory)
    print(render_plan(spec, rows, memory))
    write_json(args.json_out, {"name": spec.name, "store": spec.store, "stages": rows})
    return 0


def write_json(path: str | None, data: dict) -> None:
    if not path:
        return
    from alignflow.errors import UsageError

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
    except OSError as exc:
        raise UsageError(f"--json {path}: cannot write it ({exc.strerror or exc}); pass a path you can write") from exc


def main(argv: list[str] | None = None) -> int:
    # before anything imports Prefect: its usage analytics cost 0.3 s of every command's start
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from flows.server import FILE_LEASES, LEASES

    os.environ.setdefault(LEASES, FILE_LEASES)
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():  # `kill PID` stops a run as Ctrl-C does
        signal.signal(signal.SIGTERM, interrupted)
    try:
        return dispatch(args)
    except AlignflowError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RuntimeError as exc:  # Prefect's own "cannot reach the API" errors: one line, not a traceback
        if args.debug or not prefect_unreachable(exc):
            raise
        print(f"error: {prefect_unreachable(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stop_owned()  # a trainer still running in a stage's thread (it never saw the interrupt)


def interrupted(signum, frame):
    raise KeyboardInterrupt


def dispatch(args) -> int:
    if args.command in ("artifacts", "storage"):
        from flows import store_commands

        command = store_commands.run_artifacts if args.command == "artifacts" else store_commands.run_storage
        if not getattr(args, "storage", None):
            return command(args)
        quiet_prefect()  # the credentials block is read through Prefect's API
        from flows.server import prefect_api

        with prefect_api():
            return command(args)
    if args.command == "data" and args.data_command in ("inspect", "convert"):
        from flows import data_commands

        return data_commands.cmd(args)
    if args.command in ("server", "deploy", "data"):
        from flows import service_commands

        quiet_prefect()
        return getattr(service_commands, f"cmd_{args.command}")(args)
    if args.command == "serve":
        from flows import serve_commands

        return serve_commands.run(args)
    return cmd_plan(args) if args.command == "plan" else cmd_run(args)


def prefect_unreachable(exc: RuntimeError) -> str | None:
    """The fix for Prefect's start-up failures, or None for any other RuntimeError."""
    text = str(exc)
    if text.startswith("Failed to reach API"):
        return (f"Prefect: {text.split(' (')[0]}: the server stopped answering. Fix: `alignflow server status`, "
                "then `alignflow server up`, or unset PREFECT_API_URL")
    if text.startswith("Timed out while attempting to connect to ephemeral Prefect API"):
        return ("Prefect's temporary API did not start in time (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS). "
                "Fix: `alignflow server up` starts a lasting server that every run then uses at once, or raise "
                "that timeout")
    return None


if __name__ == "__main__":
    sys.exit(main())
