"""Stage `compare`: an LLM judge compares the candidate's answers with the production model's.

The answers are the ones the evaluate stage generated for the eval split's questions (the qa set), with the
same settings for both models: the candidate's from this run's report, production's from an evaluation of
the production model on the same split (flows/post_train.py; cached while production stays). The judge is
any OpenAI-compatible server (`url`), or a model alignflow downloads and serves on vLLM for the stage.

EvalScope does the judging: its arena grader prompt and five-point verdict (A>>B ... B>>A), two requests
per prompt with the answers' positions swapped, concurrency, and a review file with every raw reply. The
benchmark is alignflow's own `alignflow_arena`, a GeneralArenaAdapter fed a pairs file, which leaves out
what the stock `general_arena` gets wrong for this use (docs/ARCHITECTURE.md). The statistics come from
tasks/pairwise.py over prompts, from both verdicts of each: a disagreement between the orders is a tie.
Output: `<pipeline>/compare-candidate` (kind `comparison_report`): judgements.jsonl (each question, both
answers, the verdict in each order with the judge's reasoning, the result), summary.json, EvalScope's log.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from pydantic import Field

from alignflow.errors import StageError
from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.stage import RunContext, publish, stage

LIBRARIES = ("evalscope",)
BENCHMARK = "alignflow_arena"
KEY_VARIABLE = "ALIGNFLOW_JUDGE_API_KEY"  # how the judge's key reaches EvalScope's process
JUDGED = "candidate"  # EvalScope's name for the model whose answers it judges; production is its baseline
VERDICTS = ["A>>B", "A>B", "A=B", "B>A", "B>>A"]


class CompareStage(StageConfig):
    """An LLM judge: the candidate against the production model, on the eval split's questions."""

    judge: str = Field(description="the judge model: with `url`, its name on that server; without, a model source "
                                   "(hub id, local folder, builtin://...) that alignflow serves on vLLM for the stage")
    url: Optional[str] = Field(None, pattern=r"^https?://", description="an OpenAI-compatible endpoint (http://"
                                                                         "host:port/v1) serving `judge`")
    api_key_env: str = Field(KEY_VARIABLE, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="the environment variable holding `url`'s api key (unset: no key)")
    prompts: Optional[int] = Field(None, ge=1, description="the first N questions the evaluate stage answered "
                                                           "(empty: all)")
    max_tokens: int = Field(1024, ge=16, le=65536, description="the judge's budget per reply (its own answer, its "
                                                               "reasoning and the verdict)")
    structured: bool = Field(True, description="hold the judge's reply to the verdict's JSON schema "
                                               "(response_format json_schema, which vLLM, SGLang and OpenAI "
                                               "support): no verdict is lost to a format slip")
    reasoning_chars: int = Field(4000, ge=0, le=100000, description="with structured: the longest reasoning the "
                                                                    "schema allows, so a reply ends in its verdict")
    batch_size: int = Field(8, ge=1, le=1024, description="judge requests in flight")
    timeout: int = Field(600, ge=1, le=86400, description="seconds per judge request")
    confidence: float = Field(0.95, gt=0, lt=1, description="of the win rate's bootstrap interval")


def questions_and_answers(report: Path) -> dict[int, tuple[str, str]]:
    """index -> (question, answer) of the qa set's predictions in an evaluate report's folder."""
    from tasks.degeneracy import answer_text, content_text

    found = {}
    for path in sorted((report / "qa").glob("predictions-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in filter(str.strip, f):
                row = json.loads(line)
                users = [m for m in row.get("messages") or [] if m.get("role") == "user"]
                found[int(row["index"])] = (content_text(users[-1]["content"]) if users else "", answer_text(row))
    return found


def pairs(candidate: Path, production: Path, limit: int | None) -> list[dict]:
    """{index, question, candidate, production} for each question both reports answered, in order."""
    ours, theirs = questions_and_answers(candidate), questions_and_answers(production)
    common = sorted(set(ours) & set(theirs))
    differ = [i for i in common if ours[i][0] != theirs[i][0]]
    if differ or not common:
        raise StageError(f"compare: the candidate's and production's evaluations did not answer the same "
                         f"questions ({len(common)} in common, {len(differ)} differing, e.g. index "
                         f"{(differ or [None])[0]}); both must come from one eval split with the same settings")
    return [{"index": i, "question": ours[i][0], "candidate": ours[i][1], "production": theirs[i][1]}
            for i in common[:limit]]


def verdicts(review: dict) -> tuple[dict, dict]:
    """The judge's two replies on one pair from EvalScope's review row: (the candidate shown as A, the
    candidate shown as B), each {verdict (None: no verdict could be read), reasoning, reply}."""
    def field(value, key):
        return value.get(key) if isinstance(value, dict) else None

    attempts = field(field(field(field(review, "sample_score"), "score"), "metadata"), "judge_attempts")
    found = {placement: {"verdict": None, "reasoning": "", "reply": "(not asked)"}
             for placement in ("original", "swapped")}
    for attempt in attempts if isinstance(attempts, list) else []:
        parsed = field(attempt, "parsed_value") if field(attempt, "status") == "success" else None
        verdict, placement = field(parsed, "verdict"), field(attempt, "placement")
        if isinstance(placement, str) and placement in found:
            readable = isinstance(verdict, str) and verdict in VERDICTS
            found[placement] = {"verdict": verdict if readable else None,
                                           "reasoning": str(field(parsed, "reasoning") or "") if readable else "",
                                           "reply": str(field(attempt, "raw_response") or "")}
    return found["original"], found["swapped"]


def judgements(rows: list[dict], reviews: list[dict]) -> list[dict]:
    """Each pair with the judge's two verdicts and the result for the candidate (pairwise.reduce_pair)."""
    from tasks.pairwise import reduce_pair

    by_index = {int(r["index"]): r for r in reviews}
    out = []
    for position, row in enumerate(rows):
        first, second = verdicts(by_index.get(position, {}))
        result = reduce_pair(first["verdict"], second["verdict"])
        out.append(dict(row, candidate_as_a=first, candidate_as_b=second, result=result))
    return out


def summary_of(judged: list[dict], confidence: float) -> dict:
    """pairwise.summarize over the judged pairs, the answer lengths in characters."""
    from tasks.pairwise import Outcome, summarize

    return summarize([Outcome(j["result"], len(j["candidate"]), len(j["production"])) for j in judged],
                     confidence)


@stage("compare", config=CompareStage, needs=("stages.evaluate",), key_metric="lc_win_rate", libraries=LIBRARIES,
       accelerator=True)
def compare(run: RunContext, candidate: ArtifactRef, production: ArtifactRef, judge_model: Optional[ArtifactRef],
            config: CompareStage, serving=None) -> ArtifactRef:
    """`candidate`, `production`: the two models' evaluate reports; `judge_model`: the judge to serve (None
    with `url`); `serving`: tasks.evaluate.Serving, the engine settings for that server."""
    from prefect import get_run_logger

    from tasks.pairwise import describe

    logger, store, workdir = get_run_logger(), run.open_store(), run.workdir()
    rows = pairs(store.get_dir(candidate), store.get_dir(production), config.prompts)
    work, out = workdir / "evalscope", workdir / "output"
    for stale in (work, out):
        shutil.rmtree(stale, ignore_errors=True)
    out.mkdir(parents=True)
    pairs_file = workdir / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    log_path = run.log_file("compare")
    with judge_access(run, judge_model, config, serving, logger) as (url, name, key):
        judge = config.judge if judge_model else f"{config.judge} at {url}"
        logger.info("compare: %s judges %d answers of %s against %s's, each in both orders (log: %s)", judge,
                    len(rows), candidate.label, production.label, log_path)
        run_arena({"pairs": str(pairs_file), "work": str(work), "url": url, "name": name,
                   "config": config.model_dump()}, log_path, key)
    judged = judgements(rows, read_reviews(work))
    summary = summary_of(judged, config.confidence)
    if summary["n"] == 0:
        raise StageError(f"compare: the judge {judge} ruled on none of the {len(rows)} pairs; its first reply: "
                         f"{judged[0]['candidate_as_a']['reply'][:500]!r}. Fix the judge's settings "
                         "(stages.compare), or choose a judge that can follow EvalScope's verdict format")
    write_outputs(out, judged, summary, log_path)
    (out / "comparison.md").write_text(comparison_markdown(judged, summary, candidate.label, production.label,
                                                           judge), encoding="utf-8")
    logger.info("compare: %s against %s: %s", candidate.label, production.label, describe(summary))
    metrics = {k: summary[k] for k in ("n", "unjudged", "wins", "ties", "losses", "win_rate", "win_rate_ci",
                                       "lc_win_rate", "length_bias")}
    return publish(run, "compare-candidate", "comparison_report", out, stage="compare", config=config,
                   inputs={"candidate": candidate, "production": production,
                           **({"judge": judge_model} if judge_model else {})},
                   libraries=LIBRARIES, metrics=dict(metrics, judge=judge))


def judge_access(run: RunContext, judge_model: ArtifactRef | None, config: CompareStage, serving, logger):
    """(url, model name, api key) of the judge: `url` as configured, or a scratch server for `judge_model`
    (deploy's engine and serve env; the judge's own context length, not the candidate's), stopped on the way
    out."""
    import contextlib

    @contextlib.contextmanager
    def access():
        if judge_model is None:
            yield config.url, config.judge, os.environ.get(config.api_key_env)
            return
        from serving import rollout
        from serving.lifecycle import stop_server
        from serving.settings import Settings

        deploy = serving.deploy if serving and serving.deploy else Settings()
        settings = Settings(engine=deploy.engine, python=deploy.python, start_timeout=deploy.start_timeout)
        record = rollout.start_server(run, judge_model, settings.scratch(), logger)  # the judge's own context
        try:
            yield record.endpoint, record.served_name, None
        finally:
            stop_server(record)

    return access()


def run_arena(job: dict, log_path: Path, key: str | None) -> None:
    """`python -m tasks.compare JOB`: EvalScope's judging in a child process, its output in `log_path`."""
    from alignflow.processes import run_logged, tail
    from alignflow.secrets import child_env

    log_path.parent.mkdir(parents=True, exist_ok=True)
    code = run_logged([sys.executable, "-m", "tasks.compare", json.dumps(job)], log_path,
                      child_env(**{KEY_VARIABLE: key}))
    if code != 0:
        raise StageError(f"compare: EvalScope's judging failed with exit code {code}. Last lines of {log_path}:\n"
                         f"{tail(log_path)}")


def read_reviews(work: Path) -> list[dict]:
    reviews = sorted(work.glob("reviews/*/*.jsonl"))
    if not reviews:
        raise StageError(f"compare: EvalScope wrote no review file under {work}/reviews; see its log")
    with open(reviews[0], encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_outputs(out: Path, judged: list[dict], summary: dict, log_path: Path) -> None:
    with open(out / "judgements.jsonl", "w", encoding="utf-8") as f:
        for row in judged:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    shutil.copyfile(log_path, out / "evalscope.log")


def comparison_markdown(judged: list[dict], summary: dict, candidate: str, production: str, judge: str,
                        rows: int = 50) -> str:
    """The dashboard's view: the summary, then each prompt with both answers, the verdict in each order
    (the candidate shown as A, then as B) and the result."""
    from tasks.pairwise import describe

    def cell(text: str | None, width: int = 80) -> str:
        text = " ".join((text or "").split()) or "(empty)"
        return (text[:width - 1] + "…" if len(text) > width else text).replace("|", "\\|")

    lines = [f"### {candidate} against production {production}", "",
             f"Judge: {judge}, each prompt asked twice with the answers' positions swapped; a disagreement is a "
             "tie.", "", f"**{describe(summary)}**; length bias {summary['length_bias'] or 0:+.2f}", "",
             "| # | question | candidate | production | candidate as A | candidate as B | result |",
             "|---|---|---|---|---|---|---|"]
    for row in judged[:rows]:
        orders = [row[order]["verdict"] or "no verdict" for order in ("candidate_as_a", "candidate_as_b")]
        lines.append(f"| {row['index']} | {cell(row['question'])} | {cell(row['candidate'])} | "
                     f"{cell(row['production'])} | {orders[0]} | {orders[1]} | {row['result'] or 'unjudged'} |")
    if len(judged) > rows:
        lines += ["", f"The first {rows} of {len(judged)} prompts; all are in the artifact's judgements.jsonl."]
    return "\n".join(lines) + "\n"


# ---- the child process ---------------------------------------------------------------------------

def verdict_schema(reasoning_chars: int) -> dict:
    """The JSON schema of EvalScope's battle verdict, the reasoning bounded so that the verdict comes."""
    return {"type": "object", "additionalProperties": False, "required": ["reasoning", "verdict"],
            "properties": {"reasoning": {"type": "string", "maxLength": reasoning_chars},
                           "verdict": {"type": "string", "enum": VERDICTS}}}


def judge_settings(job: dict) -> dict:
    """EvalScope's judge: the whole generation config (one given replaces EvalScope's defaults), greedy."""
    config = CompareStage.model_validate(job["config"])
    generation = {"temperature": 0.0, "max_tokens": config.max_tokens, "timeout": config.timeout}
    if config.structured:
        generation["extra_body"] = {"response_format": {"type": "json_schema", "json_schema": {
            "name": "verdict", "schema": verdict_schema(config.reasoning_chars)}}}
    return {"strategy": "llm", "position_swap": "on",
            "models": [{"model_id": job["name"], "api_url": job["url"],
                        "api_key": os.environ.get(KEY_VARIABLE) or "EMPTY", "generation_config": generation}]}


def register_arena() -> None:
    """Register `alignflow_arena`: EvalScope's arena judging over a pairs file (idempotent)."""
    from evalscope.api.benchmark import BenchmarkMeta, DefaultDataAdapter
    from evalscope.api.dataset import DatasetDict, build_dataset_from_records
    from evalscope.api.registry import BENCHMARK_REGISTRY, register_benchmark
    from evalscope.benchmarks.general_arena.general_arena_adapter import (GRADER_SYSTEM_PROMPT, GRADER_TEMPLATE,
                                                                            GeneralArenaAdapter)

    if BENCHMARK in BENCHMARK_REGISTRY:
        return

    @register_benchmark(BenchmarkMeta(
        name=BENCHMARK, pretty_name="alignflow arena", dataset_id=BENCHMARK, tags=["Custom", "Arena"],
        description="the candidate's answers against production's, by an LLM judge, in both orders",
        metric_list=["win_rate"], few_shot_num=0, train_split=None, eval_split="test", subset_list=["default"],
        system_prompt=GRADER_SYSTEM_PROMPT, prompt_template=GRADER_TEMPLATE,
        extra_params={"pairs_file": {"type": "str", "description": "jsonl: question, candidate, production",
                                     "value": ""}}))
    class PairsArena(GeneralArenaAdapter):
        def __init__(self, *args, **kwargs):
            DefaultDataAdapter.__init__(self, *args, **kwargs)  # not the arena's: its ELO fit needs scikit-learn
            self.models, self.baseline = [], "production"

        def load(self):
            with open(self.extra_params["pairs_file"], encoding="utf-8") as f:
                records = [{"question": r["question"], "answer_1": r["candidate"], "answer_2": r["production"],
                            "model_1": JUDGED, "model_2": "production"} for r in map(json.loads, f)]
            dataset = build_dataset_from_records(records=records, sample_fields=self.record_to_sample,
                                                 name="default", location=None, limit=self.limit, shuffle=False,
                                                 repeats=1, seed=None)
            return DatasetDict({"default": dataset}), None

        def process_sample_messages_input(self, sample, subset):
            return list(sample.input)  # the question alone: the stock one prefixes the grader's prompt again

        def aggregate_scores(self, sample_scores):
            return []  # the statistics are alignflow's (tasks/pairwise.py), from the review file

        def _on_generate_report_end(self, *args, **kwargs):
            pass  # the stock leaderboard looks up a metric name its own report does not use


def child(job: dict) -> int:
    from evalscope import TaskConfig, run_task

    register_arena()
    config = CompareStage.model_validate(job["config"])
    run_task(task_cfg=TaskConfig(
        model_id="arena", datasets=[BENCHMARK],
        dataset_args={BENCHMARK: {"extra_params": {"pairs_file": job["pairs"]}}},
        judge=judge_settings(job), eval_batch_size=config.batch_size, work_dir=job["work"], no_timestamp=True,
        seed=42))
    return 0


if __name__ == "__main__":  # the child process of run_arena
    sys.exit(child(json.loads(sys.argv[1])))
