"""Runs each stage of the flow and keeps the row the end-of-run summary table shows for it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flows.spec import RetrySpec
from storage import ArtifactRef

KEY_METRICS = {  # the one number each stage is judged by in the summary
    "convert_dataset": "rows", "train_sft": "train_loss", "train_reward_model": "pairwise_accuracy",
    "train_dpo": "rewards_accuracies", "merge": "max_logit_diff", "quantize": "weights_mb",
    "evaluate": "score", "deploy": "endpoint",
}


@dataclass
class Steps:
    retry: RetrySpec
    rows: list[dict] = field(default_factory=list)

    def run(self, task, *args, label: str | None = None):
        """Call a stage task with the spec's retry policy; record ran/cached, duration and output."""
        delays = [self.retry.delay_seconds * 2**i for i in range(self.retry.retries)]
        started = time.monotonic()
        state = task.with_options(retries=self.retry.retries, retry_delay_seconds=delays or 0)(*args, return_state=True)
        result = state.result()  # raises the stage's own error if it failed
        status = "cached" if state.name == "Cached" else "ran"
        if isinstance(result, ArtifactRef) and result.metrics.get("action") == "unchanged":
            status = "unchanged"  # an idempotent stage found its work already done
        row = {"stage": label or task.name, "status": status, "seconds": round(time.monotonic() - started, 1)}
        if isinstance(result, dict) and "passed" in result:  # the gate's decision
            row["metric"] = "passed" if result["passed"] else "rejected"
        if isinstance(result, ArtifactRef):
            metric = KEY_METRICS.get(task.name)
            row.update(artifact=result.label, digest=result.short_digest,
                       metric=f"{metric}={result.metrics[metric]}" if metric in result.metrics else "")
        self.rows.append(row)
        return result


def format_table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def render(summary: dict) -> str:
    """The end-of-run report: every stage, the scores side by side, and how to try the endpoint."""
    out = [f"pipeline {summary['name']}: {summary['status']}  (store: {summary['store']})", "",
           format_table(summary["steps"], ["stage", "status", "seconds", "artifact", "digest", "metric"])]
    scores = summary.get("scores")
    if scores:
        out += ["", f"eval ({scores['metric']}): base {scores['base']:.3f}  ->  candidate {scores['candidate']:.3f}"
                    f"  ({scores['candidate'] - scores['base']:+.3f})"]
    for reason in summary.get("reasons", []):
        out.append(f"gate: {reason}")
    if summary.get("endpoint"):
        out += ["", f"serving {summary['model']} at {summary['endpoint']} as model {summary['name']!r}",
                "try it:", f"  curl -s {summary['endpoint']}/chat/completions -H 'Content-Type: application/json' \\",
                f"    -d '{{\"model\": \"{summary['name']}\", \"messages\": [{{\"role\": \"user\", "
                f"\"content\": \"{summary.get('probe', 'hello')}\"}}], \"max_tokens\": 32}}'",
                f"stop it: alignflow serve stop {summary['name']}"]
    return "\n".join(out)
