"""Stage `evaluate`: EvalScope scores a model on the eval split, fully offline, from local files.

`metric: exact_match` registers the benchmark `alignflow_qa` (EvalScope's own `exact_match` metric over
question/answer rows: a whole answer is right or wrong, no partial credit for noise); `metric: rouge` uses
EvalScope's `general_qa` (Rouge-L recall). The flow evaluates the candidate and the base model with the
same settings, so their scores compare.
Output: an `eval_report` artifact (score, per-sample predictions, EvalScope's report and log); the flow
shows candidate, production and base side by side in the dashboard. EvalScope runs in a child process:
importing it reconfigures the process's root logger, and its memory and any crash stay out of the
Prefect worker. Its output goes to the stage's log file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from alignflow.errors import StageError
from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.stage import RunContext, publish, stage

LIBRARIES = ("torch", "transformers", "evalscope", "compressed-tensors")
BENCHMARK = "alignflow_qa"
SUBSET = "default"


class EvaluateStage(StageConfig):
    """EvalScope on the eval split, offline; the candidate and the base model get the same settings."""

    metric: Literal["exact_match", "rouge"] = Field(
        "exact_match", description="exact_match: the whole answer right or wrong (trimmed, case-insensitive); "
                                   "rouge: Rouge-L recall (EvalScope general_qa)")
    max_tokens: int = Field(64, ge=1, le=65536, description="generation budget per answer (greedy)")
    batch_size: int = Field(16, ge=1, le=4096, description="answers generated at once")
    limit: Optional[int] = Field(None, ge=1, description="evaluate only the first N rows (empty: all)")


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


def task_config(model_dir: Path, data_dir: Path, work_dir: Path, config: EvaluateStage):
    from evalscope import TaskConfig

    if config.metric == "exact_match":
        register_benchmark()
        dataset, args = BENCHMARK, {"local_path": str(data_dir), "subset_list": [SUBSET]}
    else:
        dataset, args = "general_qa", {"local_path": str(data_dir), "subset_list": [SUBSET],
                                       "prompt_template": "{question}", "metric_list": ["Rouge"]}
    return TaskConfig(model=str(model_dir), eval_type="llm_ckpt", datasets=[dataset], dataset_args={dataset: args},
                      generation_config={"max_tokens": config.max_tokens, "temperature": 0.0, "do_sample": False},
                      limit=config.limit, eval_batch_size=config.batch_size, work_dir=str(work_dir),
                      no_timestamp=True, seed=42)


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


def run_evalscope(model_dir: Path, data_dir: Path, work_dir: Path, config: EvaluateStage, logger,
                  log_path: Path) -> None:
    """`python -m tasks.evaluate JOB`: EvalScope's whole output goes to `log_path`."""
    job = {"model": str(model_dir), "data": str(data_dir), "work": str(work_dir), "config": config.model_dump()}
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("evaluate: EvalScope generating answers for the eval split (log: %s)", log_path)
    with open(log_path, "w") as log:
        code = subprocess.run([sys.executable, "-m", "tasks.evaluate", json.dumps(job)], stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise StageError(f"evaluate: EvalScope failed with exit code {code}. Last lines of {log_path}:\n{tail}")


@stage("evaluate", config=EvaluateStage, needs=("data.eval",), key_metric="score", libraries=LIBRARIES,
       accelerator=True)
def evaluate(run: RunContext, model: ArtifactRef, data: ArtifactRef, config: EvaluateStage, role: str) -> ArtifactRef:
    from prefect import get_run_logger

    store, workdir = run.open_store(), run.workdir()
    data_dir, work_dir, out = workdir / "data", workdir / "evalscope", workdir / "output"
    for stale in (work_dir, out):
        shutil.rmtree(stale, ignore_errors=True)
    data_dir.mkdir(exist_ok=True)
    out.mkdir()
    shutil.copyfile(store.get_dir(data) / "data.jsonl", data_dir / f"{SUBSET}_test.jsonl")
    log_path = run.log_file(f"evaluate[{role}]")
    run_evalscope(store.get_dir(model), data_dir, work_dir, config, get_run_logger(), log_path)
    score = read_score(work_dir)
    summary = {**score, "model": {"name": model.name, "version": model.version, "digest": model.digest}}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    for path in work_dir.glob("reports/*/*.json"):
        shutil.copyfile(path, out / "evalscope_report.json")
    for path in work_dir.glob("predictions/*/*.jsonl"):
        shutil.copyfile(path, out / "predictions.jsonl")
    shutil.copyfile(log_path, out / "evalscope.log")
    get_run_logger().info("evaluate %s %s: %s = %.3f on %d samples", role, model.label, score["metric"],
                          score["score"], score["samples"])
    return publish(run, f"eval-{role}", "eval_report", out, stage="evaluate", config=config,
                   inputs={"model": model, "data": data}, libraries=LIBRARIES, metrics=score)


if __name__ == "__main__":  # the child process of run_evalscope
    from evalscope import run_task

    job = json.loads(sys.argv[1])
    run_task(task_cfg=task_config(Path(job["model"]), Path(job["data"]), Path(job["work"]),
                                  EvaluateStage.model_validate(job["config"])))
