"""Runs each stage of the flow, keeps the row the end-of-run summary shows for it, and puts the stage's
card (or, when it fails, what failed and how to reproduce it) in the Prefect dashboard."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypedDict

from alignflow.errors import ConfigError, DataError, SourceError, UsageError
from alignflow.tables import format_table
from storage import ArtifactRef
from tasks.gate import Decision
from tasks.stage import DECLARATIONS

class RunStatus(StrEnum):
    """How a run ended, as its summary, its `--json`, its not-shipped event and its exit code say."""

    COMPLETED = "completed"
    REJECTED = "rejected by gate"
    SUPERSEDED = "superseded"  # another run promoted first: this candidate was judged against a stale production
    HELD = "held for the sweep"  # passed, not promoted: a sweep ships only its best child (flows/sweep.py)


EXIT_CODES = {RunStatus.REJECTED: 3, RunStatus.SUPERSEDED: 4}  # `alignflow run`'s, besides 0


class RunSummary(TypedDict, total=False):
    """What a run returns and `--json` writes: one row per stage, and what was served and judged."""

    name: str
    store: str
    status: RunStatus
    steps: list[dict]  # Steps.row: stage, status, seconds, artifact, digest, metric, warnings
    reasons: list[str]  # why the candidate was not shipped
    scores: dict  # the primary metric's candidate, base and production scores (and win_rate)
    quantization: dict
    production: str  # the model now production, name@version
    endpoint: str
    deployment: str
    probe: str
    load_test: list[dict] | None


INPUT_ERRORS = (ConfigError, DataError, SourceError, UsageError)  # bad input: nothing of the failure is kept
ROW_NOTES = ("bad", "duplicates", "skipped", "contaminated", "truncated", "no_loss")  # data counts shown when not zero


@dataclass
class Steps:
    """Runs the flow's stages. Use it as a context manager: what it shows in the dashboard is sent in the
    background (one card per stage would otherwise add a round trip each to a run of cache hits), and
    leaving the `with` block waits until all of it has arrived."""

    spec: Any  # the PipelineSpec: its retry policy, and the failure card's reproduction recipe
    result_storage: Any = None  # where stage results and cache records go (storage/results.py)
    context: Any = None  # the RunContext: its store holds the results
    rows: list[dict] = field(default_factory=list)
    pinned: dict[str, str] = field(default_factory=dict)  # store:// sources as resolved: {split: NAME@VERSION}
    _background: Any = None

    def __enter__(self) -> "Steps":
        from concurrent.futures import ThreadPoolExecutor

        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="alignflow-dashboard")
        return self

    def __exit__(self, *exc) -> None:
        self._background.shutdown(wait=True)

    def later(self, fn, *args) -> None:
        """Call `fn(*args)` in the background, in this run's context (artifacts attach to this run). A
        failure to show something is logged and never fails the run."""
        import contextvars

        context = contextvars.copy_context()
        self._background.submit(context.run, _quietly, fn, *args)

    def run(self, task, *args, label: str | None = None):
        """Call a stage task with the spec's retry policy; record ran/cached, duration and output."""
        from prefect.tasks import exponential_backoff

        from flows import dashboard

        label = label or task.name
        retry = self.spec.retry
        options: dict[str, Any] = dict(retries=retry.retries,
                                       retry_delay_seconds=exponential_backoff(retry.delay_seconds))
        if self.result_storage is not None:
            options["result_storage"] = self.result_storage
        started, state = time.monotonic(), None
        try:
            state = task.with_options(**options)(*args, return_state=True)
            result = state.result()  # raises the stage's own error if it failed
        except Exception as exc:
            if isinstance(exc, INPUT_ERRORS):
                self.forget_failure(state)
            self.later(dashboard.show_failure, self.spec, label, exc, dict(self.pinned))
            raise
        row = self.row(task, label, state, result, time.monotonic() - started)
        self.rows.append(row)
        self.later(dashboard.show_stage, self.spec, row, args, result)
        return result

    def forget_failure(self, state) -> None:
        """Prefect pickles a failed stage's exception into the result storage; a failure on bad input leaves
        nothing behind (the message says it all, and the rerun must not find it)."""
        key = getattr(getattr(getattr(state, "data", None), "metadata", None), "storage_key", None)
        if key and self.context is not None:
            store = self.context.open_store()
            store.backend.delete(f"prefect-results/{Path(str(key)).name}")
            if "://" not in store.uri:  # the store's folder, if writing the failure created it
                with contextlib.suppress(OSError):
                    Path(store.uri).rmdir()

    @staticmethod
    def row(task, label: str, state, result, seconds: float) -> dict:
        status = "cached" if state.name == "Cached" else "ran"
        if isinstance(result, ArtifactRef) and result.metrics.get("action") == "unchanged":
            status = "unchanged"  # an idempotent stage found its work already done
        row = {"stage": label, "status": status, "seconds": round(seconds, 1)}
        if isinstance(result, Decision):
            row["metric"] = "passed" if result.passed else "rejected"
        elif isinstance(result, dict):  # a check's verdict: its key metric
            metric = DECLARATIONS[task.name].key_metric if task.name in DECLARATIONS else None
            row["metric"] = f"{metric}={result[metric]}" if metric in result else ""
        if isinstance(result, ArtifactRef):
            metric = DECLARATIONS[task.name].key_metric if task.name in DECLARATIONS else None
            row.update(artifact=result.label, digest=result.short_digest,
                       metric=f"{metric}={result.metrics[metric]}" if metric in result.metrics else "")
            notes = [f"{k}={result.metrics[k]}" for k in ROW_NOTES if result.metrics.get(k)]
            row["metric"] = " ".join([row["metric"], *notes]).strip()
            if result.metrics.get("warnings"):
                row["warnings"] = list(result.metrics["warnings"])
        return row


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 (the run's own work and errors matter more than its dashboard)
        from prefect import get_run_logger

        get_run_logger().warning("could not update the dashboard (%s): %s", fn.__name__, exc)


def render(summary: dict) -> str:
    """The end-of-run report: every stage, what was degenerate, the scores side by side, and how to try
    the endpoint."""
    warned = [(row["stage"], text) for row in summary["steps"] for text in row.get("warnings", [])]
    out = [f"pipeline {summary['name']}: {summary['status']}  (store: {summary['store']})", "",
           format_table(summary["steps"], ["stage", "status", "seconds", "artifact", "digest", "metric"])]
    if warned:
        out += ["", f"warnings ({len(warned)}; degenerate outputs: the run went on, but check these):"]
        out += [f"  {stage}: {text}" for stage, text in warned]
    scores = summary.get("scores")
    if scores:
        primary = scores.get("primary", "qa")
        out += ["", f"eval {primary} ({scores['metric']}, the gate's): base {scores['base']:.3f}  ->  candidate "
                    f"{scores['candidate']:.3f}  ({scores['candidate'] - scores['base']:+.3f})"]
        for name, pair in scores.get("sets", {}).items():
            if name != primary:
                base = "-" if pair["base"] is None else f"{pair['base']:.3f}"
                out.append(f"eval {name}: base {base}  ->  candidate {pair['candidate']:.3f}")
        quality = summary.get("quantization")
        if quality:
            out.append(f"quantize {quality['method']}: {quality['set']} {quality['before']:.3f} unquantized -> "
                       f"{quality['after']:.3f} ({quality['after'] - quality['before']:+.3f}); weights "
                       f"{quality['weights_mb_before']:.2f} MB -> {quality['weights_mb']:.2f} MB")
        if "win_rate" in scores:
            out.append(f"reward model: the candidate wins {scores['win_rate']:.1%} of held-out prompts against the "
                       "SFT policy")
        if "vs_production" in scores:
            versus = scores["vs_production"]
            low, high = versus["win_rate_ci"]
            out.append(f"LLM judge vs production: win {versus['wins']} / tie {versus['ties']} / loss "
                       f"{versus['losses']} ({versus['unjudged']} unjudged): win rate {versus['win_rate']:.3f} "
                       f"[{low:.2f}, {high:.2f}], length-controlled {versus['lc_win_rate']:.3f}")
    for reason in summary.get("reasons", []):
        out.append(f"gate: {reason}")
    load = [row for row in summary.get("load_test") or [] if "error" not in row]
    if load:
        out += ["", "load test (evalscope perf):",
                format_table(load, ["concurrency", "requests", "succeeded", "output_tok_s", "req_s", "ttft_ms_p50",
                                    "latency_s_p50", "latency_s_p99"])]
    if summary.get("endpoint"):
        out += ["", f"serving {summary['model']} at {summary['endpoint']} as model {summary['name']!r}",
                "try it:", f"  curl -s {summary['endpoint']}/chat/completions -H 'Content-Type: application/json' \\",
                f"    -d '{{\"model\": \"{summary['name']}\", \"messages\": [{{\"role\": \"user\", "
                f"\"content\": \"{summary.get('probe', 'hello')}\"}}], \"max_tokens\": 32}}'",
                f"stop it: alignflow serve stop {summary['name']}"]
    return "\n".join(out)
