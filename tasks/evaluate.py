"""Stage `evaluate`: EvalScope scores a model on several sets, offline, through the server users will get.

Sets: the pipeline's QA split (always, named `qa`: `metric: exact_match` registers the benchmark
`alignflow_qa`, EvalScope's exact_match over question/answer rows; `metric: rouge` uses general_qa's
Rouge-L), multiple-choice sets in the CEval/CMMLU file layout (`kind: mcq`, a local folder, accuracy; or scored by
the likelihood of each option's text, `answer_by: likelihood`, tasks/likelihood.py), and
EvalScope's built-in benchmarks by name (`kind: builtin`: gsm8k, ceval, cmmlu, ...) from the local
ModelScope cache. A built-in set whose data is not cached fails at once naming what to pre-fetch, or is
skipped with `on_unavailable: skip`. `primary` names the set whose score the gate judges.

`engine: vllm` (default): the model is served by the engine stages.deploy names (vLLM unless it says
sglang) from the serve env, and EvalScope asks it over the OpenAI API, so the number judged is the number
users get. The candidate of a pipeline that deploys full
weights is evaluated on its green server: the very server deploy then switches traffic to (or stops, when
the gate rejects it). Any other model gets a scratch server, stopped afterwards. `engine: llm_ckpt` loads
the model with transformers in EvalScope's process instead.
Output: an `eval_report` artifact (per-set scores, predictions, EvalScope's reports and log). EvalScope runs
in a child process: importing it reconfigures the root logger, and its memory and any crash stay out of
the Prefect worker. The api key, when there is one, reaches it by environment and never a file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from alignflow.errors import StageError
from alignflow.secrets import child_env
from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.stage import RunContext, publish, stage

LIBRARIES = ("torch", "transformers", "evalscope", "compressed-tensors")
BENCHMARK = "alignflow_qa"
SUBSET = "default"
QA = "qa"
KEY_VARIABLE = "ALIGNFLOW_EVAL_API_KEY"
BUILTIN_MCQ = "builtin://reverse/mcq"
UNAVAILABLE = 3  # the child's exit code when a built-in set's data is not in the local cache


class EvalSet(StageConfig):
    """An evaluation set besides the pipeline's QA split."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="its label in reports (and for "
                                                                           "`primary`)")
    kind: Literal["mcq", "builtin"] = Field(description="mcq: a local folder in the CEval/CMMLU layout; builtin: "
                                                        "an EvalScope benchmark by name")
    path: Optional[str] = Field(None, description="mcq: the folder: <subject>_val.csv or .jsonl with columns "
                                                  "id,question,A,B,C,D,answer (a letter); <subject>_dev.* for "
                                                  "few-shot examples. builtin://reverse/mcq: the demo task's")
    benchmark: Optional[str] = Field(None, description="builtin: the benchmark's name (gsm8k, ceval, cmmlu, ...)")
    subsets: list[str] = Field(default_factory=list, description="mcq: subjects; builtin: subsets (empty: all)")
    language: Literal["en", "zh"] = Field("en", description="mcq: the language of EvalScope's prompt")
    prompt_template: Optional[str] = Field(None, description="mcq: the prompt instead of EvalScope's, with "
                                                             "{question}, {choices} and {letters}")
    few_shot: int = Field(0, ge=0, le=32, description="examples shown before each question (mcq: from _dev)")
    answer_by: Literal["generation", "likelihood"] = Field(
        "generation", description="mcq: generation: the model writes its answer and EvalScope reads the letter "
                                  "(accuracy); likelihood: no letters, the option whose text the model finds most "
                                  "likely as its answer (likelihood_accuracy; what a small model knows even when "
                                  "it cannot keep an answer format)")
    limit: Optional[int] = Field(None, ge=1, description="the first N questions per subset (empty: all)")
    on_unavailable: Literal["fail", "skip"] = Field("fail", description="builtin: when its data is not in the "
                                                                        "local cache, fail, or skip the set")

    def problems(self) -> list[str]:
        where = f"stages.evaluate.sets[{self.name}]"
        if self.kind == "mcq" and not self.path:
            return [f"{where}.path: an mcq set needs the folder of its files"]
        if self.kind == "mcq" and self.path != BUILTIN_MCQ and not Path(self.path).is_dir():
            return [f"{where}.path: {self.path} is not a folder"]
        if self.kind == "builtin" and self.answer_by == "likelihood":
            return [f"{where}.answer_by: likelihood scores mcq folders; EvalScope's built-in benchmarks answer by "
                    "generation"]
        if self.kind == "builtin" and not self.benchmark:
            return [f"{where}.benchmark: a builtin set needs the benchmark's name, e.g. gsm8k"]
        return []


class EvaluateStage(StageConfig):
    """EvalScope, offline: the candidate and the base model get the same sets and settings."""

    engine: Literal["vllm", "llm_ckpt"] = Field(
        "vllm", description="vllm: EvalScope asks the model served by vLLM over the OpenAI API (the candidate on "
                            "the server deploy will switch to); llm_ckpt: transformers in EvalScope's process")
    metric: Literal["exact_match", "rouge"] = Field(
        "exact_match", description="the QA split's metric: exact_match (the whole answer right or wrong, trimmed, "
                                   "case-insensitive) or rouge (Rouge-L recall, EvalScope general_qa)")
    sets: list[EvalSet] = Field(default_factory=list, description="more sets: multiple-choice folders, built-in "
                                                                  "benchmarks")
    primary: str = Field(QA, description="the set whose score the gate judges: qa (the eval split) or a set's name")
    max_tokens: int = Field(64, ge=1, le=65536, description="generation budget per answer (greedy)")
    batch_size: int = Field(16, ge=1, le=4096, description="answers generated at once (requests in flight)")
    limit: Optional[int] = Field(None, ge=1, description="evaluate only the first N rows of the QA split "
                                                         "(empty: all)")

    def problems(self) -> list[str]:
        names = [QA] + [s.name for s in self.sets]
        problems = [p for s in self.sets for p in s.problems()]
        if len(set(names)) < len(names):
            problems.append(f"stages.evaluate.sets: names must differ from each other and from 'qa': {names}")
        if self.primary not in names:
            problems.append(f"stages.evaluate.primary: {self.primary!r} is not a set; choose one of {names}")
        return problems

    def fingerprints(self) -> dict[str, str]:
        """What keys the cache besides the settings: the files of each local set."""
        from tasks.hub import local_fingerprint

        return {s.name: local_fingerprint(s.path) for s in self.sets if s.kind == "mcq" and s.path != BUILTIN_MCQ}


@dataclass
class Serving:
    """How `engine: vllm` gets its server: the pipeline's green server (the candidate that deploy may switch
    to), or a scratch one. Not part of the cache key: either serves the same digest the same way."""

    deploy: object  # a DeployStage (serving.settings.Settings): the server's settings and api key deploy uses
    green: bool
    probe: Optional[ArtifactRef] = None  # rows whose first question is the green server's smoke request

    def cache_identity(self) -> None:
        return None


def dataset_jobs(data_dir: Path, config: EvaluateStage) -> list[dict]:
    """One EvalScope run per set: {name, dataset, args, limit, builtin, on_unavailable}."""
    if config.metric == "exact_match":
        qa = {"dataset": BENCHMARK, "args": {"local_path": str(data_dir), "subset_list": [SUBSET]}}
    else:
        qa = {"dataset": "general_qa", "args": {"local_path": str(data_dir), "subset_list": [SUBSET],
                                                "prompt_template": "{question}", "metric_list": ["Rouge"]}}
    jobs = [dict(qa, name=QA, limit=config.limit, builtin=None)]
    for item in config.sets:
        args = {"subset_list": item.subsets} if item.subsets else {}
        if item.few_shot:
            args["few_shot_num"] = item.few_shot
        if item.kind == "mcq":
            folder = mcq_folder(item.path, data_dir / f"mcq-{item.name}")
            args = dict(args, local_path=str(folder), subset_list=item.subsets or subjects(folder))
            jobs.append({"name": item.name, "dataset": "general_mcq", "args": args, "limit": item.limit,
                         "builtin": None, "language": item.language, "template": item.prompt_template,
                         "answer_by": item.answer_by, "few_shot": item.few_shot})
        else:
            jobs.append({"name": item.name, "dataset": item.benchmark, "args": args, "limit": item.limit,
                         "builtin": item.benchmark, "on_unavailable": item.on_unavailable})
    return jobs


def mcq_folder(path: str, scratch: Path) -> Path:
    """A local folder as it is; `builtin://reverse/mcq`: the demo task's questions in English and Chinese
    (subjects reverse_en and reverse_zh) and as the task's own prompt (reverse_task), written into `scratch`."""
    if path != BUILTIN_MCQ:
        return Path(path).resolve()
    import csv

    from tasks.builtin import reverse_task

    scratch.mkdir(parents=True, exist_ok=True)
    for language in ("en", "zh", "task"):
        rows = reverse_task.mcq(language)
        with open(scratch / f"reverse_{language}_val.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return scratch


def subjects(folder: Path) -> list[str]:
    """Subjects of a CEval/CMMLU-layout folder: every `<subject>_val.csv|jsonl`."""
    found = sorted({p.name.rsplit("_val.", 1)[0] for p in Path(folder).glob("*_val.*")
                    if p.suffix in (".csv", ".jsonl")})
    if not found:
        raise StageError(f"evaluate: {folder} has no <subject>_val.csv or <subject>_val.jsonl file (the CEval/CMMLU "
                         "layout: one file per subject, columns id,question,A,B,C,D,answer)")
    return found


def register_benchmark() -> None:
    """Register `alignflow_qa`: general_qa's loader with EvalScope's exact_match metric (idempotent)."""
    from evalscope.api.benchmark import BenchmarkMeta, DefaultDataAdapter
    from evalscope.api.metric.semantics import MetricSelector
    from evalscope.api.registry import BENCHMARK_REGISTRY, register_benchmark
    from evalscope.benchmarks.general_qa.general_qa_adapter import GeneralQAAdapter

    if BENCHMARK in BENCHMARK_REGISTRY:
        return

    @register_benchmark(BenchmarkMeta(
        name=BENCHMARK, pretty_name="alignflow QA (exact match)", dataset_id=BENCHMARK,
        description="question/answer rows scored by exact match after trimming and lower-casing",
        tags=["QA", "Custom"], metric_list=["exact_match"], primary_metric=MetricSelector(name="exact_match"),
        few_shot_num=0, train_split=None, eval_split="test", prompt_template="{question}",
        subset_list=[SUBSET]))
    class ExactMatchQA(GeneralQAAdapter):
        match_score = DefaultDataAdapter.match_score  # metric_list scoring, not general_qa's Rouge/BLEU


def read_score(work_dir: Path) -> dict:
    """The primary metric from EvalScope's report: {'metric': ..., 'score': ..., 'samples': ...}."""
    reports = sorted(work_dir.glob("reports/*/*.json"))
    if not reports:
        raise StageError(f"evaluate: EvalScope wrote no report under {work_dir}/reports; see its log above")
    report = json.loads(reports[0].read_text())
    wanted = report.get("primary_metric_identity")
    for metric in report.get("metrics", []):
        if metric.get("identity") == wanted or wanted is None:
            return {"metric": metric["identity"]["name"], "score": round(float(metric["score"]), 4),
                    "samples": int(metric.get("num", 0))}
    raise StageError(f"evaluate: report {reports[0]} has no metric matching {wanted}")


def evalscope_env(key: str | None) -> dict:
    """EvalScope's environment: the served endpoint's api key (as KEY_VARIABLE) and no other credential;
    the model is a local folder or that endpoint, and built-in sets come from the local cache only."""
    return child_env(**{KEY_VARIABLE: key})


def run_evalscope(job: dict, logger, log_path: Path, key: str | None) -> int:
    """`python -m tasks.evaluate JOB`: EvalScope's whole output goes to `log_path`. Returns the exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    from alignflow.processes import run_logged, tail

    code = run_logged([sys.executable, "-m", "tasks.evaluate", json.dumps(job)], log_path, evalscope_env(key))
    if code not in (0, UNAVAILABLE):
        raise StageError(f"evaluate: EvalScope failed with exit code {code}. Last lines of {log_path}:\n"
                         f"{tail(log_path)}")
    return code


def unavailable_message(work_dir: Path) -> str:
    missing = json.loads((work_dir / "unavailable.json").read_text())
    lines = [f"  - {m['name']}: {m['benchmark']} ({m['dataset_id']}) is not in the local cache ({m['cache']}). "
             f"Pre-fetch it where the network is reachable: `modelscope download --dataset {m['dataset_id']}` with "
             f"MODELSCOPE_CACHE pointing at that cache, or set on_unavailable: skip" for m in missing if m["fail"]]
    return "evaluate: built-in benchmark data is missing, and this machine cannot download it:\n" + "\n".join(lines)


@stage("evaluate", config=EvaluateStage, needs=("data.eval",), key_metric="score", libraries=LIBRARIES,
       accelerator=True)
def evaluate(run: RunContext, model: ArtifactRef, data: ArtifactRef, config: EvaluateStage, role: str,
             fingerprints: Optional[dict] = None, serving: Optional[Serving] = None) -> ArtifactRef:
    """`fingerprints`: the local sets' files (EvaluateStage.fingerprints); `serving`: for engine vllm."""
    from prefect import get_run_logger

    from tasks.degeneracy import empty_answers, noted

    logger, store, workdir = get_run_logger(), run.open_store(), run.workdir()
    data_dir, work_dir, out = workdir / "data", workdir / "evalscope", workdir / "output"
    for stale in (work_dir, out):
        shutil.rmtree(stale, ignore_errors=True)
    data_dir.mkdir(exist_ok=True)
    out.mkdir()
    shutil.copyfile(store.get_dir(data) / "data.jsonl", data_dir / f"{SUBSET}_test.jsonl")
    job = {"work": str(work_dir), "sets": dataset_jobs(data_dir, config), "config": config.model_dump()}
    log_path = run.log_file(f"evaluate[{role}]")
    with model_access(run, model, config, serving, logger) as (access, key):
        logger.info("evaluate %s: EvalScope on %s through %s (log: %s)", role, ", ".join(
            j["name"] for j in job["sets"]), access.get("url") or "transformers", log_path)
        code = run_evalscope(dict(job, model=access), logger, log_path, key)
    if code == UNAVAILABLE:
        raise StageError(unavailable_message(work_dir))
    scores, skipped = collect(work_dir, job["sets"], out, logger)
    primary = scores[config.primary]
    summary = {**primary, "primary": config.primary, "sets": scores, "skipped": skipped, "engine": config.engine,
               "model": {"name": model.name, "version": model.version, "digest": model.digest}}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    shutil.copyfile(log_path, out / "evalscope.log")
    logger.info("evaluate %s %s: %s", role, model.label, "; ".join(
        f"{name} {s['metric']} = {s['score']:.3f} ({s['samples']})" for name, s in scores.items()))
    metrics = {**primary, "primary": config.primary, "sets": {n: s["score"] for n, s in scores.items()}}
    metrics = noted(metrics, [empty_answers(sorted(out.glob("*/predictions-*.jsonl")))], f"evaluate {role}", logger)
    return publish(run, f"eval-{role}", "eval_report", out, stage="evaluate", config=config,
                   inputs={"model": model, "data": data}, libraries=LIBRARIES, metrics=metrics)


def collect(work_dir: Path, sets: list[dict], out: Path, logger) -> tuple[dict, list[str]]:
    """Each set's score, its EvalScope report and predictions into `out`; the names of skipped sets."""
    scores, skipped = {}, []
    for item in sets:
        folder = work_dir / item["name"]
        if not folder.exists():
            skipped.append(item["name"])
            logger.warning("evaluate: skipped %s: %s is not in the local cache (on_unavailable: skip)",
                           item["name"], item["builtin"])
            continue
        scores[item["name"]] = read_score(folder)
        target = out / item["name"]
        target.mkdir()
        for path in folder.glob("reports/*/*.json"):
            shutil.copyfile(path, target / f"report-{path.name}")
        for path in folder.glob("predictions/*/*.jsonl"):
            shutil.copyfile(path, target / f"predictions-{path.name}")
    return scores, skipped


def model_access(run: RunContext, model: ArtifactRef, config: EvaluateStage, serving: Serving | None, logger):
    """How EvalScope reaches the model: {'path': folder} for llm_ckpt, {'url', 'name'} of a vLLM server
    (and its api key) for engine vllm, whatever engine deploy serves with. A scratch server stops on the way
    out; a green one stays for deploy."""
    import contextlib

    @contextlib.contextmanager
    def access():
        if config.engine == "llm_ckpt":
            yield {"path": str(run.open_store().get_dir(model))}, None
            return
        from serving import rollout
        from serving.lifecycle import stop_server
        from serving.settings import Settings
        from tasks.models import first_question

        settings = serving.deploy if serving and serving.deploy else Settings()
        if serving and serving.green:
            prompt = first_question(run.open_store().get_dir(serving.probe) / "data.jsonl") if serving.probe \
                else "Hello!"
            record, key = rollout.green_server(run, model, settings, prompt, logger)
            yield {"url": record.endpoint, "name": record.served_name}, key
            return
        record = rollout.start_server(run, model, settings.scratch(), logger)
        try:
            yield {"url": record.endpoint, "name": record.served_name}, None
        finally:
            stop_server(record)

    return access()


# ---- the child process ---------------------------------------------------------------------------

def task_config(access: dict, item: dict, config: EvaluateStage, work_dir: Path):
    from evalscope import TaskConfig

    args = item["args"]
    if item.get("template"):
        args = dict(args, prompt_template=item["template"])
    elif item.get("language"):  # EvalScope's own single-answer prompt, in the set's language
        from evalscope.utils.multi_choices import MultipleChoiceTemplate

        args = dict(args, prompt_template=MultipleChoiceTemplate.SINGLE_ANSWER if item["language"] == "en"
                    else MultipleChoiceTemplate.CHINESE_SINGLE_ANSWER_TEMPLATE)
    served = {"eval_type": "openai_api", "api_url": access["url"], "model": access["name"],
              "api_key": os.environ.get(KEY_VARIABLE, "EMPTY")} if "url" in access else {
        "eval_type": "llm_ckpt", "model": access["path"]}
    return TaskConfig(**served, datasets=[item["dataset"]], dataset_args={item["dataset"]: args},
                      generation_config={"max_tokens": config.max_tokens, "temperature": 0.0, "do_sample": False},
                      limit=item["limit"], eval_batch_size=config.batch_size, work_dir=str(work_dir),
                      no_timestamp=True, seed=42)


def cached(benchmark: str) -> dict:
    """Whether a built-in benchmark's data is in the local ModelScope cache, as EvalScope looks for it."""
    from evalscope.api.registry import BENCHMARK_REGISTRY
    from modelscope import snapshot_download

    if benchmark not in BENCHMARK_REGISTRY:
        import difflib

        close = difflib.get_close_matches(benchmark, list(BENCHMARK_REGISTRY), n=3)
        raise SystemExit(f"evaluate: EvalScope has no benchmark {benchmark!r}" + (
            f"; did you mean {', '.join(close)}?" if close else ""))
    dataset_id = BENCHMARK_REGISTRY[benchmark].dataset_id
    cache = os.environ.get("MODELSCOPE_CACHE", str(Path.home() / ".cache" / "modelscope"))
    try:
        found = os.path.exists(dataset_id) or bool(snapshot_download(repo_id=dataset_id, repo_type="dataset",
                                                                     local_files_only=True))
    except Exception:  # noqa: BLE001 (modelscope raises several kinds for "not cached")
        found = False
    return {"benchmark": benchmark, "dataset_id": dataset_id, "cache": cache, "found": found}


def child(job: dict) -> int:
    from evalscope import run_task

    config, work = EvaluateStage.model_validate(job["config"]), Path(job["work"])
    register_benchmark()
    missing = []
    for item in job["sets"]:
        if item["builtin"]:
            state = cached(item["builtin"])
            if not state["found"]:
                missing.append(dict(state, name=item["name"], fail=item["on_unavailable"] == "fail"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "unavailable.json").write_text(json.dumps(missing))
    if any(m["fail"] for m in missing):
        return UNAVAILABLE  # within seconds, before any model is loaded
    skip = {m["name"] for m in missing}
    for item in job["sets"]:
        if item.get("answer_by") == "likelihood":
            from tasks import likelihood

            likelihood.score_set(job["model"], item, work / item["name"])
        elif item["name"] not in skip:
            run_task(task_cfg=task_config(job["model"], item, config, work / item["name"]))
    return 0


if __name__ == "__main__":  # the child process of run_evalscope
    sys.exit(child(json.loads(sys.argv[1])))
