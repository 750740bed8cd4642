"""`alignflow deploy [SPEC]` and `alignflow undeploy PIPELINE`: apply or remove prefect.yaml's deployments for a
pipeline; one server holds several (alignflow/service/deployments.py)."""

from __future__ import annotations

from pathlib import Path

from alignflow.cli.common import quiet_prefect


def add_parsers(sub) -> None:
    deploy = sub.add_parser("deploy", help="apply prefect.yaml's deployments (manual, nightly, on-new-data, "
                                           "watch-data) for a pipeline spec")
    deploy.add_argument("spec", nargs="?", help="pipeline spec (default: deployments/demo.yaml)")
    deploy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    deploy.add_argument("--store", help="artifact store for the deployed runs (overrides the spec)")
    deploy.add_argument("--pool", default="alignflow", help="work pool of the post-train deployments (default: "
                                                            "the process pool alignflow)")
    deploy.add_argument("--project-dir", help="where workers find this project (default: this checkout)")
    deploy.set_defaults(func=cmd_deploy)
    undeploy = sub.add_parser("undeploy", help="remove a pipeline's deployments (its schedule, new-data trigger and "
                                               "watcher) and notifications; other pipelines, runs and the store stay")
    undeploy.add_argument("pipeline", metavar="PIPELINE", help="the pipeline's name (the spec's `name:`)")
    undeploy.set_defaults(func=cmd_undeploy)


def cmd_deploy(args) -> int:
    from alignflow.home import DEMO_SPEC
    from alignflow.service import server
    from alignflow.service.deployments import apply_deployments
    from flows.spec import load_spec

    quiet_prefect()
    spec = load_spec(args.spec or DEMO_SPEC, args.overrides, args.store)
    if "://" not in spec.store:  # the worker runs elsewhere on disk: pin the folder
        spec.store = str(Path(spec.store).expanduser().resolve())
    with server.prefect_api(required=True) as api_url:
        for line in apply_deployments(spec, api_url, args.pool, args.project_dir):
            print(line)
    return 0


def cmd_undeploy(args) -> int:
    from alignflow.errors import UsageError
    from alignflow.names import check
    from alignflow.service import server
    from alignflow.service.deployments import undeploy

    quiet_prefect()
    pipeline = check("pipeline", args.pipeline, "undeploy")
    with server.prefect_api(required=True) as api_url:
        removed = undeploy(pipeline)
        if not removed:
            deployed = sorted({row["pipeline"] for row in server.deployment_rows()} - {"-"})
            raise UsageError(f"undeploy: pipeline {pipeline!r} has no deployments on {api_url} (deployed there: "
                             f"{', '.join(deployed) or 'none'}); `alignflow server status` lists them")
    print(f"undeployed pipeline {pipeline!r} from {api_url}: removed " + ", ".join(removed))
    print("its runs, artifacts and served models are untouched (`alignflow serve stop` stops a server)")
    return 0
