"""`alignflow serve ls | url NAME | logs NAME | stop NAME | rollback NAME | k8s NAME`: the model servers deploy
started on this machine, from their local records (serving/records.py).

`url` is what a client resolves before it connects: it reads one small file and prints the live endpoint,
so a blue/green deploy moves the clients that ask it at the moment its record switches.
"""

from __future__ import annotations

import logging
import sys

from alignflow.errors import AlignflowError, UsageError


def add_parsers(sub) -> None:
    from alignflow.cli.common import positive_int

    serve = sub.add_parser("serve", help="the model servers deploy started: list, resolve, logs, stop, roll back, "
                                         "export to Kubernetes")
    verbs = serve.add_subparsers(dest="serve_command", required=True)
    verbs.add_parser("ls", help="servers, what each serves, and whether it runs").set_defaults(func=cmd_ls)
    for verb, func, text in (
            ("url", cmd_url, "print the pipeline's live endpoint (OpenAI base URL)"),
            ("logs", cmd_logs, "the last lines of the pipeline's server log"),
            ("rollback", cmd_rollback, "point production back at the previously served version and deploy it "
                                       "(blue/green)"),
            ("k8s", cmd_k8s, "a Kubernetes Deployment and Service that serve the same digest with the same "
                             "engine and flags")):
        verb_parser = verbs.add_parser(verb, help=text)
        verb_parser.set_defaults(func=func)
        verb_parser.add_argument("name", help="the pipeline's name (see `alignflow serve ls`)")
        if verb == "logs":
            verb_parser.add_argument("-n", "--lines", type=positive_int, default=40)
        if verb == "k8s":
            verb_parser.add_argument("--image", help="the server's image (default: the engine's own, e.g. "
                                                     "vllm/vllm-openai:latest)")
            verb_parser.add_argument("--fetch-image", default="alignflow:latest",
                                     help="an image with alignflow, for the init container that fetches the model")
    stop = verbs.add_parser("stop", help="stop a pipeline's server (or take its adapter out of a shared one)")
    stop.add_argument("name", nargs="?", help="pipeline name of the server to stop")
    stop.add_argument("--all", action="store_true", help="stop every server")
    stop.set_defaults(func=cmd_stop)


def record(name: str, verb: str):
    """The record (serving.records.ServerRecord) of the pipeline `name`; a name that is no pipeline's (a path)
    or names no server is a UsageError."""
    from alignflow.names import check
    from serving.records import read_record

    state = read_record(check("pipeline", name, f"serve {verb}"))
    if state is None:
        raise UsageError(f"serve {verb}: no server named {name!r}; `alignflow serve ls` lists them")
    return state


def cmd_ls(args) -> int:
    from alignflow.tables import format_table
    from serving.lifecycle import describe
    from serving.records import all_records

    rows = [describe(s) for s in all_records()]
    print(format_table(rows, ["name", "status", "engine", "endpoint", "pid", "serves", "model", "digest"]) if rows
          else "no servers")
    return 0


def cmd_url(args) -> int:
    from alignflow.processes import pid_alive

    state = record(args.name, "url")
    if not pid_alive(state.pid):
        raise AlignflowError(f"serve url: {args.name}'s server (pid {state.pid}) is not running; redeploy "
                             f"(`alignflow run SPEC`) or `alignflow serve rollback {args.name}`")
    print(state.endpoint)
    return 0


def cmd_logs(args) -> int:
    from alignflow.processes import tail
    from serving.records import server_log

    print(tail(server_log(record(args.name, "logs")), args.lines))
    return 0


def cmd_stop(args) -> int:
    from serving.lifecycle import release
    from serving.records import all_records, remove_record

    if not args.all and not args.name:
        raise UsageError("serve stop: name a server (see `alignflow serve ls`) or pass --all")
    states = all_records() if args.all else [record(args.name, "stop")]
    if not states:
        print("no servers")
    for state in states:
        what = release(state, key_for(state, required=False))
        remove_record(state.name, state)
        print(f"{state.name} ({state.endpoint}): {what}")
    return 0


def key_for(state, required: bool = True) -> str | None:
    """The server's api key, read where its record says it comes from (a Prefect Secret through the API).
    Stopping needs it only to take an adapter out of a shared server: then a missing key is no error."""
    from serving.access import resolve_key

    try:
        with key_api(state):
            return resolve_key(state.api_key)
    except AlignflowError:
        if required:
            raise
        return None


def key_api(state):
    """Where the record's key can be read: a Prefect Secret needs the Prefect API, an environment variable
    nothing."""
    import contextlib

    if (state.api_key or "").startswith("secret:"):
        from alignflow.service.server import prefect_api

        return prefect_api()
    return contextlib.nullcontext()


def cmd_rollback(args) -> int:
    """Move `production` of the served artifact (and of its evaluation report) back one step, then serve
    that version with the deployment's own settings, blue/green."""
    from alignflow.errors import ConflictError
    from storage.store import default_cache_dir
    from tasks.deploy import DeployStage, serve
    from tasks.gate import PRODUCTION
    from tasks.stage import RunContext

    state = record(args.name, "rollback")
    uri, deployment = served_from(state)
    run = RunContext(args.name, uri, str(default_cache_dir()), state.storage)
    store = run.open_store()
    manifest = store.manifest(store.ref(deployment["name"], deployment["version"]).digest)
    config = DeployStage.model_validate(manifest["lineage"]["config"]["DeployStage"])
    served = state.model
    try:
        version = store.rollback(served.name, PRODUCTION, expected=served.version)
    except ConflictError as exc:
        raise AlignflowError(f"serve rollback: {exc}; `alignflow artifacts ls {served.name}` shows where "
                             "production points") from None
    try:
        store.rollback(f"{args.name}/eval-candidate", PRODUCTION)
    except (AlignflowError, KeyError):
        pass  # a pipeline without an evaluation has no report to move
    target = store.ref(served.name, version)
    print(f"production of {served.name}: {served.version} -> {version}; deploying {target.label}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    prompt = (state.smoke or {}).get("prompt", "Hello!")
    with key_api(state):  # the rollout reads the key where the deployment's settings say
        ref = serve(run, target, config, [prompt], logging.getLogger("alignflow.serve"))
    print(f"{args.name} serves {target.label} at {ref.metrics['endpoint']}")
    return 0


def served_from(state) -> tuple[str, dict]:
    """The store that holds the live deployment's record, and that record's name and version."""
    records = state.records
    if not records:
        raise AlignflowError(f"serve: {state.name}'s record names no store; redeploy it with `alignflow run`")
    uri = next(iter(records))
    return uri, records[uri]


def cmd_k8s(args) -> int:
    from serving.k8s import manifest

    state = record(args.name, "k8s")
    uri, _ = served_from(state)
    print(manifest(state, uri, image=args.image, fetch_image=args.fetch_image), end="")
    return 0
