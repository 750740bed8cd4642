"""The post-training flow: base model and raw data in, an evaluated, gated, served model out.

    download_model -> convert_dataset (sft, preference, eval) -> train_sft -> train_reward_model
      -> train_dpo -> merge -> quantize -> evaluate (candidate and base) -> gate -> deploy

Stages absent from the spec are skipped; each stage receives the newest model so far. Every stage is a
cached, retried task (tasks/stage.py); this file only orchestrates.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger

from flows.spec import PipelineSpec, parse_spec
from flows.summary import Steps
from storage.store import default_cache_dir
from tasks.convert import convert_dataset
from tasks.deploy import deploy
from tasks.download import download_model, source_fingerprint
from tasks.dpo import train_dpo
from tasks.evaluate import evaluate
from tasks.gate import PRODUCTION, gate
from tasks.merge import merge
from tasks.quantize import quantize
from tasks.reward import train_reward_model
from tasks.sft import train_sft
from tasks.stage import RunContext


@flow(name="post-train", persist_result=False)  # the summary is printed and kept as an artifact
def post_train(spec: dict) -> dict:
    """Run the pipeline described by `spec` (a PipelineSpec as a dict) and return its summary."""
    spec = parse_spec(spec)
    run = RunContext(spec.name, spec.store, str(default_cache_dir()), spec.storage)
    steps, stages = Steps(spec.retry), spec.stages
    summary = {"name": spec.name, "store": spec.store, "status": "completed", "steps": steps.rows}

    base = steps.run(download_model, run, spec.model, source_fingerprint(spec.model))
    data = {split: steps.run(convert_dataset, run, split, source, source_fingerprint(source),
                             label=f"convert_dataset[{split}]")
            for split, source in asdict(spec.data).items() if source}
    model = base
    if stages.sft:
        model = steps.run(train_sft, run, model, data["sft"], stages.sft)
    if stages.reward:
        steps.run(train_reward_model, run, model, data["preference"], stages.reward)
    if stages.dpo:
        model = steps.run(train_dpo, run, model, data["preference"], stages.dpo)
    if model.kind == "adapter":
        model = steps.run(merge, run, model, any_split(data), stages.merge)
    if stages.quantize and stages.quantize.method != "none":
        model = steps.run(quantize, run, model, data.get("sft") or any_split(data), stages.quantize)
    summary.update(model=model.label, digest=model.digest)

    if stages.evaluate:
        report = steps.run(evaluate, run, model, data["eval"], stages.evaluate, "candidate",
                           label="evaluate[candidate]")
        base_report = steps.run(evaluate, run, base, data["eval"], stages.evaluate, "base", label="evaluate[base]")
        summary["scores"] = {"metric": report.metrics["metric"], "candidate": report.metrics["score"],
                             "base": base_report.metrics["score"]}
        if stages.gate:
            decision = steps.run(gate, run, report, base_report, stages.gate)
            if not decision["passed"]:
                get_run_logger().warning("gate rejected %s: %s", model.label, "; ".join(decision["reasons"]))
                return publish_summary(dict(summary, status="rejected by gate", reasons=decision["reasons"]))
    if stages.deploy:
        deployment = steps.run(deploy, run, model, stages.deploy, any_split(data))
        summary.update(endpoint=deployment.metrics["endpoint"], deployment=deployment.label,
                       probe=deployment.metrics.get("smoke_prompt", "hello"))
        promote(run, model, report if stages.evaluate else None)
    return publish_summary(summary)


def publish_summary(summary: dict) -> dict:
    """The end-of-run table, also as a markdown artifact on the flow run in the Prefect dashboard."""
    from prefect.artifacts import create_markdown_artifact

    from flows.summary import render

    create_markdown_artifact(key=f"{summary['name']}-run-summary".replace("_", "-").replace(".", "-"),
                             markdown=f"```\n{render(summary)}\n```", description="alignflow run summary")
    return summary


def any_split(data: dict):
    """A dataset to draw probe prompts from, eval first (what users will ask), or None."""
    return data.get("eval") or data.get("sft") or data.get("preference")


def promote(run: RunContext, model, report) -> None:
    """Mark what is now served as production: the model and the report it was judged by."""
    store = run.open_store()
    store.promote(model, PRODUCTION)
    if report is not None:
        store.promote(report, PRODUCTION)


def run_pipeline(spec: PipelineSpec) -> dict:
    """Run the flow in this process, keeping Prefect's results and cache records in the artifact store."""
    from prefect.settings import temporary_settings

    from storage.results import result_settings

    with temporary_settings(result_settings(spec.store, spec.storage)):
        return post_train(spec.to_dict())
