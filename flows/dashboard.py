"""What a run shows in the Prefect dashboard: one markdown artifact per stage, the evaluation table, the
endpoint link, and on failure what failed and the command that reproduces it.

Artifact keys are stable per pipeline (`demo-train-dpo`), so the dashboard's Artifacts page keeps each
one's history across runs; every version also sits on the flow run that made it.
"""

from __future__ import annotations

import json
import shlex

from storage import ArtifactRef
from tasks.config import StageConfig


def stage_markdown(row: dict, inputs: list[ArtifactRef], config, result, log_file: str | None = None) -> str:
    """The stage's card: what it made from what, with which settings, how long it took, ran or cached."""
    lines = [f"### {row['stage']}: {row['status']} in {row['seconds']} s", ""]
    lines += [f"> **Warning:** {text}" for text in row.get("warnings", [])] + ([""] if row.get("warnings") else [])
    lines += ["| | |", "|---|---|"]
    if isinstance(result, ArtifactRef):
        lines.append(f"| output | `{result.label}` (`{result.short_digest}`) |")
    for ref in inputs:
        lines.append(f"| input | `{ref.label}` (`{ref.short_digest}`) |")
    metrics = result.metrics if isinstance(result, ArtifactRef) else (result if isinstance(result, dict) else {})
    for name, value in metrics.items():
        if name != "action" and isinstance(value, (int, float, str)):
            lines.append(f"| {name} | {value} |")
    if log_file:
        lines.append(f"| log | `{log_file}` |")
    if config is not None:
        lines += ["", "config:", "```json", json.dumps(_plain(config), indent=2, sort_keys=True), "```"]
    if row["status"] == "cached":
        lines += ["", "_Came from the cache: same code, config, input digests and library versions as an "
                      "earlier run._"]
    return "\n".join(lines)


def _plain(value):
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def failure_markdown(stage: str, error: BaseException, spec_yaml: str, store: str,
                     pinned: dict[str, str | list]) -> str:
    """What failed, why, and the exact command that reruns it here: every stage before it is cached.
    `pinned`: the dataset versions this run's store:// sources resolved to (a later run may see newer)."""
    sets = "".join(" --set " + shlex.quote(f"data.{split}={value if isinstance(value, str) else json.dumps(value)}")
                   for split, value in sorted(pinned.items()))
    return "\n".join([
        f"### {stage} failed", "", f"**{type(error).__name__}**", "", "```", str(error)[-4000:], "```", "",
        "Reproduce it locally: save the spec below as `spec.yaml`, then run", "",
        "```bash", f"alignflow run spec.yaml --store {store}{sets}", "```", "",
        f"Every stage before `{stage}` comes from the cache, so this reruns `{stage}` first.", "",
        "```yaml", spec_yaml.rstrip(), "```"])


def label_run(name: str, stages: list[str], data_versions: dict[str, str] | None = None) -> None:
    """Name the running flow run after the pipeline and its data versions, and tag it with the pipeline
    and its stages, so the dashboard's run list answers "which data made this?" at a glance."""
    from prefect import get_client
    from prefect.runtime import flow_run

    from alignflow.names import pipeline_tag

    if not flow_run.id:
        return
    tags = sorted({*flow_run.tags, pipeline_tag(name), *(f"stage:{s}" for s in stages)})
    title = run_title(name, data_versions) if data_versions else None
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, tags=tags, **({"name": title} if title else {}))


def run_title(name: str, data_versions: dict[str, str]) -> str:
    """>>> run_title("demo", {"sft": "demo/data-sft@3", "eval": "demo/data-eval@1"})
    'demo · data sft@3 eval@1'"""
    return f"{name} · data " + " ".join(f"{split}@{label.rsplit('@', 1)[-1]}" for split, label in data_versions.items())


def flow_run_name() -> str:
    """The name a run starts with, before its data versions are known: the pipeline, and the dataset
    version that triggered it, if one did."""
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    spec = params.get("spec") or {}
    name = spec.get("name", "pipeline") if isinstance(spec, dict) else getattr(spec, "name", "pipeline")
    return f"{name} · new data {params['dataset']}" if params.get("dataset") else f"{name} · starting"


def stage_inputs(args: tuple) -> tuple[list[ArtifactRef], StageConfig | None]:
    """The artifacts a stage was given and its config, read off its arguments for its dashboard card."""
    refs = [a for a in args if isinstance(a, ArtifactRef)]
    config = next((a for a in args if isinstance(a, StageConfig)), None)
    return refs, config


def show_stage(spec, row: dict, args: tuple, result) -> None:
    """The stage's markdown card on the flow run (key `<pipeline>-<stage>`, so each keeps a history)."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.report import artifact_key
    from tasks.stage import RunContext

    refs, config = stage_inputs(args)
    run = next((a for a in args if isinstance(a, RunContext)), None)
    log = run.log_file(row["stage"]) if run else None
    create_markdown_artifact(
        key=artifact_key(spec.name, row["stage"]), description=f"{row['stage']}: {row['status']}",
        markdown=stage_markdown(row, refs, config, result, str(log) if log and log.exists() else None))


def show_failure(spec, stage: str, error: BaseException, pinned: dict[str, str | list]) -> None:
    """On failure: what failed, why, and the command that reproduces it, on the flow run."""
    import yaml
    from prefect.artifacts import create_markdown_artifact

    from tasks.report import artifact_key

    spec_yaml = yaml.safe_dump(spec.to_dict(), sort_keys=False)
    create_markdown_artifact(key=artifact_key(spec.name, "failure"), description=f"{stage} failed",
                             markdown=failure_markdown(stage, error, spec_yaml, spec.store, pinned))


def show_evaluation(name: str, metric: str, candidate: ArtifactRef, base: ArtifactRef,
                    production: ArtifactRef | None) -> None:
    from prefect.artifacts import create_table_artifact

    from tasks.report import artifact_key

    rows = [("candidate", candidate), ("production", production), ("base", base)]
    table = [{"model": role, "report": ref.label, metric: ref.metrics.get("score"),
              "samples": ref.metrics.get("samples")}
             for role, ref in rows if ref is not None]
    create_table_artifact(key=artifact_key(name, "evaluation"), table=table,
                          description=f"EvalScope {metric}: candidate vs production vs base")


def show_comparison(name: str, report: ArtifactRef, store) -> None:
    """The LLM judge's comparison with production, prompt by prompt with both verdicts (tasks/compare.py)."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.report import artifact_key

    markdown = (store.get_dir(report) / "comparison.md").read_text(encoding="utf-8")
    create_markdown_artifact(key=artifact_key(name, "vs-production"), markdown=markdown,
                             description=f"{report.label}: the candidate against production, by an LLM judge")


def show_endpoint(name: str, endpoint: str, model: ArtifactRef, load_test: list[dict] | None = None) -> None:
    """The live endpoint as a link, and the load test measured against it as a table."""
    from prefect.artifacts import create_link_artifact, create_table_artifact

    from tasks.report import artifact_key

    create_link_artifact(key=artifact_key(name, "endpoint"), link=f"{endpoint}/models",
                         link_text=f"{name}: {model.label} at {endpoint}",
                         description="the live OpenAI-compatible endpoint")
    if load_test and "error" not in load_test[0]:
        create_table_artifact(key=artifact_key(name, "load-test"), table=load_test,
                              description=f"evalscope perf against {endpoint} ({model.label}): output tokens/s, "
                                          "requests/s, time to first token and latency by concurrency")


NOT_SHIPPED_EVENT = "alignflow.candidate.not-shipped"


def announce_not_shipped(name: str, status: str, reasons: list[str]) -> None:
    """An event for notifications: the gate rejected the candidate, or another run promoted first. Emitted
    inside the flow run, so the event names the run (and its dashboard page) as a related resource."""
    from prefect.events import emit_event

    emit_event(event=NOT_SHIPPED_EVENT, resource={"prefect.resource.id": f"alignflow.pipeline.{name}",
                                                  "prefect.resource.name": name},
               payload={"status": status, "reasons": reasons})
