"""`alignflow run SPEC`, `alignflow demo`, `alignflow plan SPEC` and `alignflow sweep SPEC`: a pipeline, run,
planned or run at every point of a grid of settings."""

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
    sweep = sub.add_parser("sweep", help="run a spec at every point of a grid of settings and ship only the best "
                                         "candidate (shared stages come from the cache)")
    sweep.add_argument("spec", help="pipeline spec (YAML), e.g. deployments/demo.yaml")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a setting and its values, e.g. --grid stages.dpo.beta=0.05,0.1,0.2 (repeatable; "
                            "with the spec's sweep.grid)")
    sweep.set_defaults(func=cmd_sweep)
    for parser in (run, demo, plan, sweep):
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


def cmd_sweep(args) -> int:
    """Exit 0 when the best candidate shipped, 3 when no point's candidate passed its gate, 4 when the
    winner lost the race for production to another run."""
    from flows.runner import EXIT_CODES
    from flows.sweep import child_specs, parse_grid, render, run_sweep, sweep_grid

    spec = checked_spec(args)
    grid = sweep_grid(spec, parse_grid(args.grid))
    child_specs(spec, grid)  # every point's spec checked before any work
    quiet_prefect()
    from alignflow.service.server import prefect_api

    with prefect_api():
        outcome = run_sweep(spec, grid)
    print("\n" + render(outcome))
    write_json(args.json_out, outcome)
    return EXIT_CODES.get(outcome["shipped"]["status"], 0) if outcome["shipped"] else 3
