"""The `sweep` flow: one pipeline spec run at every point of a grid of settings; only the best candidate ships.

    alignflow sweep SPEC --grid stages.dpo.beta=0.05,0.1,0.2 --grid stages.sft.learning_rate=1e-4,3e-4

or `sweep: {grid: {stages.dpo.beta: [0.05, 0.1, 0.2]}}` in the spec (a `--grid` key replaces the spec's). Each
point is a child run of post-train under the pipeline's own name, one after another (they would queue for
the accelerator slot anyway), so what a point does not change comes from the cache: a beta sweep trains
SFT once. Every child is a normal run, with its cards and lineage, except that a candidate its gate passes
is held back instead of promoted. The best held candidate by the gate's metric (the primary score; a tie
goes to the child whose stages ran for fewer seconds) then runs once more: every stage a cache hit, the
gate judged again against production as it is now, and this run alone promotes and deploys, through the
same compare-and-swap as any run. The comparison is a table and a chart on the sweep's flow run.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional

from prefect import flow, get_run_logger

from alignflow.errors import ConfigError
from flows.runner import RunStatus
from flows.spec import PipelineSpec, parse_spec

HELD = RunStatus.HELD


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest:
    >>> grid_points({"a": [1, 2], "b": ["x"]})
    [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]"""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def parse_grid(items: list[str]) -> dict[str, list]:
    """`--grid KEY=V1,V2,...` (each value read as YAML) -> {KEY: [V1, V2, ...]}."""
    from flows.spec_yaml import override_value

    grid, problems = {}, []
    for item in items:
        key, sep, values = item.partition("=")
        parts = [v.strip() for v in values.split(",")]
        if not sep or not all(key.split(".")) or not all(parts):
            problems.append(f"--grid {item!r}: expected KEY=V1,V2,... e.g. --grid stages.dpo.beta=0.05,0.1,0.2")
            continue
        try:
            grid[key] = [override_value(key, v, "--grid") for v in parts]
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems, "command line")
    return grid


def sweep_grid(spec: PipelineSpec, grid: dict[str, list] | None) -> dict[str, list]:
    """The spec's sweep.grid with `grid` (the command line's, or the form's) over it, key by key."""
    return {**(spec.sweep.grid if spec.sweep else {}), **(grid or {})}


def child_specs(spec: PipelineSpec, grid: dict[str, list]) -> list[tuple[dict, PipelineSpec]]:
    """(point, the spec with the point's settings) for each point; one ConfigError naming every point whose
    spec is not valid, and why."""
    from flows.spec_yaml import set_field

    if not grid:
        raise ConfigError("nothing to sweep: give --grid KEY=V1,V2,... or sweep.grid in the spec", "sweep")
    if spec.stages.evaluate is None:
        raise ConfigError("a sweep picks its best candidate by the evaluation's primary score; set "
                          "stages.evaluate", "sweep")
    children, problems = [], []
    for point in grid_points(grid):
        raw = dict(spec.to_dict(), sweep=None)
        try:
            for key, value in point.items():
                set_field(raw, key, value, "sweep.grid")
            children.append((point, parse_spec(raw, source=label(point))))
        except ConfigError as exc:
            problems += [f"{label(point)}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError(problems, "sweep.grid")
    return children


def label(point: dict) -> str:
    return " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in point.items())


def cost(summary: dict) -> float:
    """Seconds the child's stages ran (cache hits cost nothing)."""
    return round(sum(row.get("seconds") or 0 for row in summary.get("steps", []) if row.get("status") == "ran"), 1)


def best(results: list[dict]) -> Optional[dict]:
    """The held child with the highest primary score; a tie goes to the one whose stages ran for less, then to
    the earlier point."""
    held = [r for r in results if r["status"] == HELD]
    return max(held, key=lambda r: (r["score"], -r["seconds"]), default=None)


def result_row(point: dict, summary: dict | None, error: str | None = None) -> dict:
    """What the comparison shows of one child: its summary's status, scores and cost, or how it failed."""
    summary = summary or {}
    scores = summary.get("scores") or {}
    return {"point": point, "label": label(point), "status": "failed" if error else summary["status"],
            "model": summary.get("model"), "score": scores.get("candidate"),
            "sets": {name: pair["candidate"] for name, pair in scores.get("sets", {}).items()},
            "seconds": cost(summary), "reasons": [error] if error else summary.get("reasons", []),
            "steps": [{"stage": row["stage"], "status": row["status"]} for row in summary.get("steps", [])]}


def sweep_run_name() -> str:
    from prefect.runtime import flow_run

    spec = (flow_run.parameters or {}).get("spec") or {}
    return f"{spec.get('name', 'pipeline') if isinstance(spec, dict) else spec.name} · sweep"


@flow(name="sweep", flow_run_name=sweep_run_name, persist_result=False, validate_parameters=False)
def sweep(spec: PipelineSpec, grid: Optional[dict[str, list]] = None) -> dict:
    """Run `spec` at every point of `grid` (with the spec's own sweep.grid); ship the best candidate."""
    from flows.post_train import post_train

    spec = parse_spec(spec, before_work=True)
    grid = sweep_grid(spec, grid)
    children, logger, results = child_specs(spec, grid), get_run_logger(), []
    logger.info("sweep %s: %d points of %s", spec.name, len(children), ", ".join(grid))
    for point, child in children:
        state = post_train.with_options(flow_run_name=f"{spec.name} · sweep {label(point)}")(
            child, promote=False, return_state=True)
        if state.is_completed():
            results.append(result_row(point, state.result()))
        else:
            results.append(result_row(point, None, f"{state.name}: {state.message}"))
        logger.info("sweep %s: %s -> %s (score %s)", spec.name, label(point), results[-1]["status"],
                    results[-1]["score"])
    winner = best(results)
    shipped = None
    if winner is not None:
        shipped = post_train.with_options(flow_run_name=f"{spec.name} · sweep winner {winner['label']}")(
            children[results.index(winner)][1].to_dict())
        winner["shipped"] = shipped["status"]
    outcome = {"name": spec.name, "grid": grid, "results": results, "winner": winner and winner["label"],
               "shipped": shipped}
    show_sweep(spec.name, outcome)
    return outcome


def sweep_markdown(outcome: dict) -> str:
    """The comparison: a row per point (status, primary score, each set's, seconds run) and a chart with a
    line per set over the points."""
    from tasks.report import line_chart_svg, svg_markdown

    results = outcome["results"]
    sets = sorted({name for r in results for name in r["sets"]})
    lines = [f"### Sweep of {outcome['name']}: {len(results)} points", "",
             f"Shipped: {outcome['winner']} ({outcome['shipped']['status']})" if outcome["winner"] else
             "Nothing shipped: no point's candidate passed its gate.", "",
             "| point | status | score | " + " | ".join(sets) + " | seconds run |",
             "|---" * (len(sets) + 4) + "|"]
    for r in results:
        status = r["status"] + (" (winner)" if r["label"] == outcome["winner"] else "")
        lines.append(f"| {r['label']} | {status} | {fmt(r['score'])} | " +
                     " | ".join(fmt(r["sets"].get(name)) for name in sets) + f" | {r['seconds']:.0f} |")
    reasons = [f"- {r['label']}: {reason}" for r in results for reason in r["reasons"]]
    lines += ["", *reasons] if reasons else []
    series = {name: [(i, r["sets"][name]) for i, r in enumerate(results) if r["sets"].get(name) is not None]
              for name in sets}
    svg = line_chart_svg(series, f"{outcome['name']}: score per point", x_title="point", dots=True,
                         x_labels={i: r["label"].replace(" ", "\n") for i, r in enumerate(results)},
                         y_range=(0.0, 1.0))
    return "\n".join(lines) + ("\n\n" + svg_markdown(svg, "score per point") if svg else "") + "\n"


def fmt(score) -> str:
    return "-" if score is None else f"{score:.3f}"


def show_sweep(name: str, outcome: dict) -> None:
    from prefect.artifacts import create_markdown_artifact

    from tasks.report import artifact_key

    create_markdown_artifact(key=artifact_key(name, "sweep"), markdown=sweep_markdown(outcome),
                             description=f"sweep of {name}: the points compared")


def render(outcome: dict) -> str:
    """The comparison for a terminal."""
    from alignflow.tables import format_table

    rows = [{"point": r["label"], "status": r["status"] + (" (winner)" if r["label"] == outcome["winner"] else ""),
             "score": fmt(r["score"]), "seconds run": f"{r['seconds']:.0f}"} for r in outcome["results"]]
    shipped = (f"shipped {outcome['winner']}: {outcome['shipped']['status']}" if outcome["winner"]
               else "nothing shipped: no point's candidate passed its gate")
    return f"sweep of {outcome['name']}\n\n" + format_table(rows, ["point", "status", "score", "seconds run"]) + \
        f"\n\n{shipped}"


def run_sweep(spec: PipelineSpec, grid: dict[str, list]) -> dict:
    """The CLI's `alignflow sweep`: the flow in this process, tagged with its pipeline."""
    from prefect import tags

    from alignflow.names import pipeline_tag

    with tags("alignflow", pipeline_tag(spec.name)):
        return sweep(spec, grid)
