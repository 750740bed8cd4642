"""Quality over time: the versions of a pipeline's evaluation report that were in production, oldest first,
each with the model it judged, the data versions that made that model and its score on every evaluation
set. Shown in the dashboard after each promotion and by `alignflow artifacts history PIPELINE`.

The `production` alias of `<pipeline>/eval-candidate` keeps its previous targets (storage/store.py; the
last 21, and a rollback drops the version it leaves), so the history is those targets and the current one.
"""

from __future__ import annotations

import time

from storage import ArtifactRef, ArtifactStore

REPORT = "eval-candidate"  # the report the gate judges and the flow promotes: <pipeline>/eval-candidate
DATA_STAGE = "convert_dataset"  # the stage that makes the data versions, <pipeline>/data-<split>


def production_history(store: ArtifactStore, pipeline: str) -> list[dict]:
    """One row per production version, oldest first (empty: nothing was ever promoted): the report's
    version, the model it judged, the data versions ("sft@3 eval@1"), when it was promoted (known for the
    current one only), the primary score and the score per set."""
    from tasks.gate import PRODUCTION

    name = f"{pipeline}/{REPORT}"
    record, _ = store.read_alias(name, PRODUCTION)
    if record is None:
        return []
    rows = [history_row(store, store.ref(name, v)) for v in record.get("history", []) + [record["version"]]]
    rows[-1]["promoted"] = record.get("updated_at")
    return rows


def history_row(store: ArtifactStore, report: ArtifactRef) -> dict:
    """One report's row; `promoted` is filled in by the caller, where it is known."""
    lineage = store.manifest(report.digest).get("lineage", {})
    model = lineage.get("inputs", {}).get("model")
    return {"report": report.label, "version": report.version,
            "model": f"{model['name']}@{model['version']}" if model else "",
            "data": " ".join(data_versions(store, lineage)), "promoted": None,
            "metric": report.metrics.get("metric"), "primary": report.metrics.get("primary"),
            "score": report.metrics.get("score"), "sets": report.metrics.get("sets", {})}


def data_versions(store: ArtifactStore, lineage: dict) -> list[str]:
    """The data versions an artifact was made from, as `split@N`: its lineage walked back to the convert
    stage's outputs (as `artifacts show --lineage` walks it); in the spec's order of splits, as runs are named."""
    from flows.spec import SPLITS

    found, seen, pending = set(), set(), list(lineage.get("inputs", {}).values())
    while pending:
        parent = pending.pop()
        if (parent["name"], parent["version"]) in seen:
            continue
        seen.add((parent["name"], parent["version"]))
        info = store.manifest(parent["digest"]).get("lineage", {})
        if info.get("stage") == DATA_STAGE:
            found.add((parent["name"].rpartition("/data-")[2], parent["version"]))
        else:
            pending += info.get("inputs", {}).values()
    rank = lambda item: (SPLITS.index(item[0]) if item[0] in SPLITS else len(SPLITS), *item)  # noqa: E731
    return [f"{split}@{version}" for split, version in sorted(found, key=rank)]


def set_names(rows: list[dict]) -> list[str]:
    """Every evaluation set in the history: the one the gate judges now first, then the others by name."""
    names = sorted({name for row in rows for name in row["sets"]})
    return sorted(names, key=lambda name: name != rows[-1]["primary"])


def cells(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """The columns and each row's text in them (a set a version was not scored on is blank)."""
    sets = set_names(rows)
    score = lambda value: "" if value is None else f"{value:.3f}"  # noqa: E731
    when = lambda at: time.strftime("%Y-%m-%d %H:%M", time.localtime(at)) if at else ""  # noqa: E731
    return ["version", "model", "data", "promoted", *sets], [
        {"version": row["version"], "model": row["model"], "data": row["data"], "promoted": when(row["promoted"]),
         **{name: score(row["sets"].get(name)) for name in sets}} for row in rows]


def trend_table(rows: list[dict]) -> str:
    """The history as an aligned text table, one line per production version."""
    from alignflow.tables import format_table

    columns, table = cells(rows)
    return format_table(table, columns)


def trend_markdown(rows: list[dict]) -> str:
    """The history as a markdown table and a line chart: one line per set, one point per version."""
    from tasks.report import svg_markdown

    columns, table = cells(rows)
    lines = [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
    lines += [f"| {' | '.join(str(row[c]) for c in columns)} |" for row in table]
    chart = trend_svg(rows)
    return "\n".join([f"### Quality over time: {len(rows)} production versions, oldest first", "",
                      f"Scores: {rows[-1]['metric']}; the gate judges {rows[-1]['primary']}.", "", *lines]
                     + (["", svg_markdown(chart, "score per set in production")] if chart else []))


def trend_svg(rows: list[dict]) -> str:
    """One line per set over the production versions; under each version, its data versions."""
    from tasks.report import line_chart_svg

    series = {name: [(i, row["sets"][name]) for i, row in enumerate(rows) if name in row["sets"]]
              for name in set_names(rows)}
    labels = {i: "\n".join([f"v{row['version']}", *row["data"].split()]) for i, row in enumerate(rows)}
    depth = max(label.count("\n") + 1 for label in labels.values())
    return line_chart_svg(series, f"{rows[-1]['report'].rpartition('@')[0]}: score per set in production",
                          width=max(640, 72 + 110 * len(rows)), height=240 + 14 * depth,
                          x_title="production version (data versions)", x_labels=labels, dots=True,
                          y_range=(0.0, 1.0))  # scores: a flat line at 0.9 is not a cliff


def show_trend(pipeline: str, store: ArtifactStore) -> None:
    """The history as a markdown artifact in the dashboard (nothing before the first promotion)."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.report import artifact_key

    rows = production_history(store, pipeline)
    if rows:
        create_markdown_artifact(key=artifact_key(pipeline, "quality-trend"), markdown=trend_markdown(rows),
                                 description=f"{pipeline}: each production version's score per evaluation set")
