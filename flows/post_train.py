"""The post-training flow: base model and raw data in, an evaluated, gated, served model out.

    convert_dataset (sft, preference, eval) -> download_model -> tokenize -> train_sft -> train_reward_model
      -> preference methods (train_dpo | train_kto | train_orpo | train_cpo; on-policy pairs: sample -> score)
      -> train_grpo -> merge -> quantize -> evaluate (candidate on its green vLLM server, and base)
      -> evaluate the unquantized model, quantize_quality (the primary score's loss, max_quality_drop)
      -> judge (the reward model: candidate vs the SFT policy)
      -> compare (an LLM judge: candidate vs production, on answers from evaluate[production])
      -> gate -> deploy (traffic to the green server)

Stages absent from the spec are skipped; each stage receives the newest model so far, so the spec picks
the shape: SFT alone, SFT then DPO, SFT then GRPO, KTO instead of DPO, ORPO on the base model. Every stage is a
cached, retried task (tasks/stage.py); this file only orchestrates. Its parameters are typed, so the
Prefect dashboard renders the spec as a run form; what the form sends is validated like a YAML file.
"""

from __future__ import annotations

import contextlib
from typing import Optional

from prefect import flow, get_run_logger

from flows.dashboard import flow_run_name, show_comparison
from flows.spec import ALWAYS_SET, PipelineSpec, parse_spec
from flows.runner import RunStatus, RunSummary, Steps
from serving.rollout import discard_green
from storage import ArtifactRef
from storage.results import result_storage
from storage.store import default_cache_dir
from tasks.contamination import EvalSets
from tasks.compare import compare
from tasks.cpo import train_cpo
from tasks.deploy import deploy
from tasks.download import download_model, source_fingerprint
from tasks.dpo import train_dpo
from tasks.evaluate import Serving, evaluate
from tasks.gate import PRODUCTION, Decision, gate, production_report
from tasks.grpo import train_grpo
from tasks.judge import judge
from tasks.kto import train_kto
from tasks.merge import merge
from tasks.orpo import train_orpo
from tasks.quantize import quantize, quantize_quality
from tasks.reward import train_reward_model
from tasks.sample import sample
from tasks.score import score
from tasks.sft import train_sft
from tasks.stage import RunContext
from tasks.tokens import tokenize, tokenizer_ref


@flow(name="post-train", flow_run_name=flow_run_name, persist_result=False, validate_parameters=False)
def post_train(spec: PipelineSpec, dataset: Optional[str] = None, promote: bool = True) -> RunSummary:
    """Post-train and ship one pipeline. `dataset` (NAME@VERSION): the dataset version whose arrival
    started this run; data sources that name that dataset use exactly that version. `promote=False` (a
    sweep's child): a candidate that passes is held back, neither promoted nor deployed."""
    from alignflow.errors import hide_tracebacks_of_input_errors

    hide_tracebacks_of_input_errors()  # a bad row or spec is reported by its message alone
    spec = parse_spec(spec, before_work=True)  # the dashboard's form gets the checks a YAML file gets
    run = RunContext(spec.name, spec.store, str(default_cache_dir()), spec.storage, spec.service.accelerator_limit,
                     spec.service.accelerator_slots)
    with Steps(spec, result_storage(spec.store, spec.storage), run) as steps:
        return publish_summary(pipeline(steps, run, spec, dataset, promote))


def pipeline(steps: Steps, run: RunContext, spec: PipelineSpec, dataset: str | None,
             promote: bool = True) -> RunSummary:
    """The stages in order; returns the run's summary."""
    stages = spec.stages
    summary = RunSummary(name=spec.name, store=spec.store, status=RunStatus.COMPLETED, steps=steps.rows)
    data = convert_all(steps, run, spec, dataset)  # first: bad rows stop the run before a model download
    base = steps.run(download_model, run, spec.model, source_fingerprint(spec.model), spec.model_dtype)
    sft = model = base
    if stages.sft:
        tokens = steps.run(tokenize, run, tokenizer_ref(run.open_store(), model), data["sft"],
                           stages.sft.tokenize_config(spec.data.on_bad_rows))
        sft = model = steps.run(train_sft, run, model, tokens, stages.sft)
    reward = steps.run(train_reward_model, run, model, data["preference"], stages.reward) if stages.reward else None
    model = align(steps, run, train_dpo, stages.dpo, model, data, reward)
    model = align(steps, run, train_kto, stages.kto, model, data, reward)
    model = align(steps, run, train_orpo, stages.orpo, model, data, reward)
    model = align(steps, run, train_cpo, stages.cpo, model, data, reward)
    if stages.grpo:  # reinforcement: the reward model (and rules) score the policy's own answers
        model = steps.run(train_grpo, run, model, data[stages.grpo.prompts], reward, stages.grpo)
    adapter = model if model.kind == "adapter" and stages.deploy and stages.deploy.mode == "adapter" else None
    if model.kind == "adapter" and (adapter is None or stages.evaluate):  # what is evaluated: full weights
        model = steps.run(merge, run, model, any_split(data), stages.merge)
    unquantized = None
    if stages.quantize and stages.quantize.method != "none":
        unquantized = model
        model = steps.run(quantize, run, model, data.get("sft") or any_split(data), stages.quantize)
    summary.update(model=model.label, digest=model.digest)

    report, decision = None, None
    if stages.evaluate:
        report, base_report = evaluate_both(steps, run, stages, model, base, data)
        if unquantized is not None:
            summary["quantization"] = check_quantization(steps, run, stages, unquantized, model, report, data)
        summary["scores"] = {"metric": report.metrics["metric"], "candidate": report.metrics["score"],
                             "base": base_report.metrics["score"], "primary": report.metrics["primary"],
                             "sets": {name: {"candidate": score, "base": base_report.metrics["sets"].get(name)}
                                      for name, score in report.metrics["sets"].items()}}
        judged = None
        if reward and stages.judge and model.digest != sft.digest:  # the reward model: candidate vs SFT policy
            judged = steps.run(judge, run, model, sft, reward, data["eval"], stages.judge)
            summary["scores"]["win_rate"] = judged.metrics["win_rate"]
        compared = compare_with_production(steps, run, spec, model, report, data) if stages.compare else None
        if compared:
            steps.later(show_comparison, spec.name, compared, run.open_store())
            summary["scores"]["vs_production"] = {k: compared.metrics[k] for k in (
                "wins", "ties", "losses", "unjudged", "win_rate", "win_rate_ci", "lc_win_rate")}
        if stages.gate:
            decision = steps.run(gate, run, report, base_report, stages.gate, judged, compared)
            steps.later(show_scores, run, report, base_report, decision)
            if not decision.passed:
                discard_green(run.name)  # the candidate's server never takes traffic
                return not_shipped(spec, summary, RunStatus.REJECTED, decision.reasons)
    if not promote:  # a sweep ships only its best child (flows/sweep.py)
        discard_green(run.name)
        return dict(summary, status=RunStatus.HELD)
    if stages.deploy or decision:  # a passed gate makes the candidate production, served here or not
        return ship(steps, run, spec, summary, adapter or model, report, decision, any_split(data))
    return summary


def evaluate_both(steps: Steps, run: RunContext, stages, model: ArtifactRef, base: ArtifactRef,
                  data: dict) -> tuple[ArtifactRef, ArtifactRef]:
    """The candidate and the base model, on the same sets with the same settings. With engine vllm, a
    candidate that deploy will serve as full weights is evaluated on its green server (deploy switches to
    that very server); the base, and any other candidate, on a scratch server."""
    config, deploy = stages.evaluate, stages.deploy
    green = bool(deploy and deploy.mode == "model" and not deploy.port and model.kind == "model")
    fingerprints = config.fingerprints()
    report = steps.run(evaluate, run, model, data["eval"], config, "candidate", fingerprints,
                       Serving(deploy, green, any_split(data)), label="evaluate[candidate]")
    base_report = steps.run(evaluate, run, base, data["eval"], config, "base", fingerprints,
                            Serving(deploy, False), label="evaluate[base]")
    return report, base_report


def compare_with_production(steps: Steps, run: RunContext, spec: PipelineSpec, model: ArtifactRef,
                            report: ArtifactRef, data: dict) -> ArtifactRef | None:
    """The LLM judge's comparison of the candidate's answers with the production model's, both from the
    evaluate stage's settings on this eval split (production's evaluation is cached while it stays). None
    when nothing is in production or the candidate is production's own model."""
    production, store, stages = production_report(run), run.open_store(), spec.stages
    if production is None:
        return None
    evaluated = store.manifest(production.digest).get("lineage", {}).get("inputs", {}).get("model")
    if evaluated is None or evaluated["digest"] == model.digest:
        return None
    qa, scratch = stages.evaluate.model_copy(update={"sets": [], "primary": "qa"}), Serving(stages.deploy, False)
    answers = steps.run(evaluate, run, store.ref(evaluated["name"], evaluated["version"]), data["eval"], qa,
                        "production", {}, scratch, label="evaluate[production]")
    judge_model = None if stages.compare.url else steps.run(
        download_model, run, stages.compare.judge, source_fingerprint(stages.compare.judge), spec.model_dtype,
        "judge-model", label="download_model[judge]")
    return steps.run(compare, run, report, answers, judge_model, stages.compare, scratch)


def check_quantization(steps: Steps, run: RunContext, stages, unquantized: ArtifactRef, quantized: ArtifactRef,
                       report: ArtifactRef, data: dict) -> dict:
    """The primary score before quantization (on a scratch server) against the candidate's; a loss above
    `max_quality_drop` fails the run, and the candidate's green server stops: it never took traffic."""
    primary = stages.evaluate.model_copy(update={"sets": [s for s in stages.evaluate.sets
                                                          if s.name == stages.evaluate.primary]})
    before = steps.run(evaluate, run, unquantized, data["eval"], primary, "unquantized", primary.fingerprints(),
                       Serving(stages.deploy, False), label="evaluate[unquantized]")
    try:
        return steps.run(quantize_quality, run, quantized, before, report, stages.quantize)
    except BaseException:
        discard_green(run.name)
        raise


def align(steps: Steps, run: RunContext, method, config, model: ArtifactRef, data: dict,
          reward: ArtifactRef | None) -> ArtifactRef:
    """A preference method on the model so far, when the spec sets it; the model it returns is the new
    policy (an adapter on `model`, or full weights). With `pairs: on_policy|mixed`, its pairs are the
    policy's own answers, sampled and rated by the reward model first."""
    if config is None:
        return model
    pairs = data["preference"]
    if getattr(config, "pairs", "offline") != "offline":
        samples = steps.run(sample, run, model, data["preference"], config.sampling)
        pairs = steps.run(score, run, samples, reward, model, data["preference"] if config.pairs == "mixed" else None,
                          config.scoring)
    return steps.run(method, run, model, pairs, config)


def ship(steps: Steps, run: RunContext, spec: PipelineSpec, summary: dict, model: ArtifactRef,
         report: ArtifactRef | None, decision: Decision | None, probe: ArtifactRef | None) -> RunSummary:
    """Claim production for the report the gate judged (compare-and-swap against the production the gate
    saw: a run that lost the race reports it and deploys nothing), serve the model if the spec deploys,
    then point the model's `production` alias at it. A failed deploy gives the claim back."""
    from alignflow.errors import ConflictError
    from flows.dashboard import show_endpoint
    from flows.trend import show_trend

    store, claimed = run.open_store(), False
    if report is not None:
        try:
            claimed = store.promote(report, PRODUCTION, decision.production_version if decision else ...)
        except ConflictError as exc:
            return not_shipped(spec, summary, RunStatus.SUPERSEDED,
                               [f"production moved while this run was judged: {exc}"])
    if spec.stages.deploy:
        try:
            deployment = steps.run(deploy, run, model, spec.stages.deploy, probe)
        except BaseException:
            if claimed:  # give production back to what it was, unless someone moved it since
                with contextlib.suppress(ConflictError):
                    store.rollback(report.name, PRODUCTION, expected=report.version)
            raise
        steps.later(show_endpoint, spec.name, deployment.metrics["endpoint"], model,
                    deployment.metrics.get("load_test"))
        summary.update(endpoint=deployment.metrics["endpoint"], deployment=deployment.label,
                       probe=deployment.metrics.get("smoke_prompt", "hello"),
                       load_test=deployment.metrics.get("load_test"))
    store.promote(model, PRODUCTION)
    steps.later(show_trend, spec.name, store)
    summary["production"] = model.label
    return summary


def convert_all(steps: Steps, run: RunContext, spec: PipelineSpec, dataset: str | None) -> dict[str, ArtifactRef]:
    """Convert each split; `store://` sources are pinned to one registered version first. The run is then
    renamed after the data versions it trains on."""
    from flows.dashboard import label_run
    from flows.data_versions import resolve_sources
    from tasks.convert import convert_dataset
    from tasks.sources import content_fingerprint

    splits = spec.data.splits()
    resolved = resolve_sources(run.open_store(), {split: items for split, (items, _) in splits.items()}, dataset)
    steps.pinned.update({split: pinned_value(items) for split, items in resolved.items()
                         if any(raw is not None for _, raw in items)})
    data = {}
    for split in sorted(resolved, key=lambda s: s != "eval"):  # eval first: the others are checked against it
        sources, raws = [item for item, _ in resolved[split]], [raw for _, raw in resolved[split]]
        against = None if split == "eval" else eval_sets(spec, data.get("eval"))
        data[split] = steps.run(convert_dataset, run, split, sources,
                                [content_fingerprint(s.source) for s in sources], raws, splits[split][1], against,
                                label=f"convert_dataset[{split}]")
    data = {split: data[split] for split in resolved}
    steps.later(label_run, spec.name, stage_names(spec), {split: ref.label for split, ref in data.items()})
    return data


def eval_sets(spec: PipelineSpec, split: ArtifactRef | None) -> EvalSets | None:
    """What a training split's rows are checked against: the eval split and the local mcq sets (EvalScope's
    built-in benchmarks are not read)."""
    config = spec.stages.evaluate
    folders = {s.name: s.path for s in config.sets if s.kind == "mcq"} if config else {}
    if split is None and not folders:
        return None
    return EvalSets(split, folders, config.fingerprints() if config else {})


def pinned_value(items: list) -> str | list:
    """A split's sources as `--set data.SPLIT=...` takes them, with store:// versions pinned."""
    dumped = [item.model_dump(exclude_defaults=True) for item, _ in items]
    plain = [d["source"] if list(d) == ["source"] else d for d in dumped]
    return plain[0] if len(plain) == 1 and isinstance(plain[0], str) else plain


def stage_names(spec: PipelineSpec) -> list[str]:
    return [name for name, config in spec.stages if config is not None and name not in ALWAYS_SET]


def show_scores(run: RunContext, report: ArtifactRef, base: ArtifactRef, decision: Decision) -> None:
    from flows.dashboard import show_evaluation

    version = decision.production_version
    production = run.open_store().ref(report.name, version) if version else None
    show_evaluation(run.name, report.metrics["metric"], report, base, production)


def not_shipped(spec: PipelineSpec, summary: RunSummary, status: RunStatus, reasons: list[str]) -> RunSummary:
    """The candidate stays unserved: say why in the summary, the log and an event (notifications)."""
    from flows.dashboard import announce_not_shipped

    get_run_logger().warning("%s: %s", status, "; ".join(reasons))
    announce_not_shipped(spec.name, status, reasons)
    return dict(summary, status=status, reasons=reasons)


def publish_summary(summary: RunSummary) -> RunSummary:
    """The end-of-run table, also as a markdown artifact on the flow run in the Prefect dashboard."""
    from prefect.artifacts import create_markdown_artifact

    from flows.runner import render
    from tasks.report import artifact_key

    create_markdown_artifact(key=artifact_key(summary["name"], "run-summary"),
                             markdown=f"```\n{render(summary)}\n```", description="alignflow run summary")
    return summary


def any_split(data: dict):
    """A dataset to draw probe prompts from, eval first (what users will ask), or None."""
    return data.get("eval") or data.get("sft") or data.get("preference")


def run_pipeline(spec: PipelineSpec) -> RunSummary:
    """Run the flow in this process (the CLI's `alignflow run`), tagged with its pipeline from its first
    state on, as a deployment's runs are: the pipeline's failure notification matches that tag."""
    from prefect import tags

    from alignflow.names import pipeline_tag

    with tags("alignflow", pipeline_tag(spec.name)):
        return post_train(spec)
