"""The `alignflow` command line. Fast to start: torch, TRL and Prefect load only when a command needs them.

    alignflow run SPEC.yaml [--set stages.dpo.beta=0.2 ...] [--store PATH_OR_URI]
    alignflow demo [--set ...] [--store ...]
    alignflow plan SPEC.yaml [--set ...] [--skip ...] [--store ...]   every check, then cached / would run
    alignflow serve ls | url NAME | logs NAME | stop NAME | --all | rollback NAME | k8s NAME
    alignflow artifacts ls [NAME] | show NAME[@V] [--lineage] | get NAME[@V] DEST | promote NAME@V ALIAS
                        | rollback NAME ALIAS | verify | history PIPELINE   [--store PATH_OR_URI before the verb]
    alignflow storage up | down | status
    alignflow server up [--database URL] | down | status | logs [server|worker]
    alignflow ray up [--nodes N] | down | status   a local Ray cluster for resources.engine: ray
    alignflow deploy [SPEC] [--set ...]      apply prefect.yaml's deployments for a pipeline (one server, many)
    alignflow undeploy PIPELINE              remove a pipeline's deployments, schedules, trigger and notifications
    alignflow data add NAME SOURCE           register raw data as the next version of NAME
    alignflow data scan SPEC                 what the watch-data deployment does, once, here
    alignflow data inspect SOURCE [--kind K] [--model M]    formats, counts, lengths and problems
    alignflow data convert SOURCE... --kind K -o OUT.jsonl  the canonical rows the convert stage writes
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from alignflow.errors import AlignflowError
from alignflow.processes import stop_owned

# one module per command, each adding its parser with `set_defaults(func=...)`: the handler `main` calls
COMMANDS = ("pipeline", "artifacts", "storage", "server", "deploy", "data", "serve", "ray")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="alignflow", description="LLM post-training pipeline on Prefect.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"alignflow.cli.{name}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # before anything imports Prefect: its usage analytics cost 0.3 s of every command's start
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from alignflow.service.server import FILE_LEASES, LEASES

    os.environ.setdefault(LEASES, FILE_LEASES)
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():  # `kill PID` stops a run as Ctrl-C does
        signal.signal(signal.SIGTERM, interrupted)
    try:
        return args.func(args)
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
