"""`alignflow run SPEC`, `alignflow demo` and `alignflow plan SPEC`: a pipeline, run or planned."""

from __future__ import annotations

import contextlib
from pathlib import Path

from alignflow.cli.common import quiet_prefect, write_json



def add_parsers(sub) -> None:
    run = sub.add_parser("run", help="run a pipeline spec end to end")
    run.add_argument("spec", help="pipeline spec (YAML), e.g. deployments/demo.yaml")
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="run the built-in demo pipeline (tiny model, synthetic task)")
    demo.set_defaults(func=cmd_run, spec=None)
    plan = sub.add_parser("plan", help="check a spec as `run` does and list the stages that would run and those "
                                       "that come from the cache (writes nothing)")
    plan.add_argument("spec", help="pipeline spec (YAML), e.g. deployments/demo.yaml")
    plan.set_defaults(func=cmd_plan)
    for parser in (run, demo, plan):
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a spec field, e.g. --set stages.dpo.beta=0.2 (repeatable)")
        parser.add_argument("--skip", action="append", default=[], metavar="STAGE",
                            help="leave a stage out of this run, e.g. --skip deploy (repeatable)")
        parser.add_argument("--store", help="artifact store: a folder or s3://bucket/prefix (overrides the spec)")
        parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write the summary as JSON")


def checked_spec(args):
    """The spec `run`, `demo` and `plan` act on, after every check that needs no work: the spec's own and
    whether what it names is there (flows/preflight.py). One ConfigError lists every problem."""
    from alignflow.home import DEMO_SPEC
    from flows.spec import load_spec

    spec = load_spec(args.spec or DEMO_SPEC, args.overrides, args.store, args.skip, before_work=True)
    if "://" not in spec.store:  # the flow may run elsewhere (a worker): pin the folder now
        spec.store = str(Path(spec.store).expanduser().resolve())
    return spec


def cmd_run(args) -> int:
    spec = checked_spec(args)
    quiet_prefect()
    from alignflow.service.server import prefect_api
    from flows.post_train import run_pipeline
    from flows.runner import EXIT_CODES, render

    with prefect_api():
        summary = run_pipeline(spec)
    print("\n" + render(summary))
    write_json(args.json_out, summary)
    return EXIT_CODES.get(summary["status"], 0)


def cmd_plan(args) -> int:
    """Every check `run` makes, then the stages: which come from the cache (with their keys), which run."""
    spec = checked_spec(args)
    quiet_prefect()
    from alignflow.service.server import prefect_api
    from flows.plan import memory_estimates, plan, render_plan, with_memory

    with prefect_api() if spec.storage else contextlib.nullcontext():  # a credentials block is read via Prefect
        rows = plan(spec)
    memory = memory_estimates(spec)  # once: the table and --json show the same estimates and free memory
    rows = with_memory(rows, memory)
    print(render_plan(spec, rows, memory))
    write_json(args.json_out, {"name": spec.name, "store": spec.store, "stages": rows})
    return 0
