"""The statistics of a pairwise judge comparing a candidate model's answers with the production model's.

The judge sees each prompt's two answers twice: the candidate shown as A, then, positions swapped, as B. A
verdict stands only when both orders agree (`reduce_pair`); a prompt the judge could not rule on either time
is unjudged. `summarize` gives the counts, the win rate (a tie is half a win) with a bootstrap confidence
interval, and a length-controlled win rate in the spirit of AlpacaEval 2: the win rate the judge would give
if both answers were equally long, with the slope (`length_bias`) that says how much length swayed it.
`describe` puts a summary on one line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

RESULTS = ("win", "tie", "loss")
SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}
PREFERS_A = {"A>>B": 1, "A>B": 1, "A=B": 0, "B>A": -1, "B>>A": -1}  # a verdict: +1 A is better, -1 B is better
RESAMPLES = 2000  # bootstrap resamples of the prompts

# The length-controlled fit: a logistic regression of the outcome on tanh(length difference / its std), by
# Newton's method. The slope has an L2 penalty (a standard normal prior, negligible against a few dozen
# prompts): without it a judge that always preferred the longer answer would send the slope to infinity. The
# intercept has a tiny one, so that all wins (or all losses) give a finite intercept and a rate within 1e-4
# of 1 (or 0) instead of diverging.
SLOPE_PENALTY = 1.0
INTERCEPT_PENALTY = 1e-6
MAX_STEPS = 100
TOLERANCE = 1e-10


@dataclass(frozen=True)
class Outcome:
    """One prompt's result from the candidate's side ("win", "tie", "loss"; None: unjudged) and the lengths of
    the two answers, in whatever unit the caller chose (characters or tokens), the same for both."""

    result: str | None
    candidate_length: float
    production_length: float

    def __post_init__(self):
        if self.result is not None and self.result not in RESULTS:
            raise ValueError(f"outcome {self.result!r} is not one of {', '.join(RESULTS)} or None")


def reduce_pair(first: str | None, second: str | None) -> str | None:
    """The candidate's result from the two verdicts ("A>>B", "A>B", "A=B", "B>A", "B>>A"; None: unparseable):
    `first` with the candidate shown as A, `second` with it shown as B. Both orders for the candidate: win;
    both for production: loss; a tie or a disagreement: tie; either unparseable: None."""
    if first is None or second is None:
        return None
    for verdict in (first, second):
        if verdict not in PREFERS_A:
            raise ValueError(f"verdict {verdict!r} is not one of {', '.join(PREFERS_A)} or None")
    candidate_first, candidate_second = PREFERS_A[first], -PREFERS_A[second]
    if candidate_first == candidate_second != 0:
        return "win" if candidate_first > 0 else "loss"
    return "tie"


def summarize(outcomes: Iterable[Outcome | None], confidence: float = 0.95, seed: int = 0) -> dict:
    """Counts (n judged, unjudged, wins, ties, losses), win_rate, its bootstrap percentile interval
    (win_rate_ci, at `confidence`), lc_win_rate (length-controlled) and length_bias (the fit's slope: above 0,
    longer candidate answers won more often). The rates and the slope are None when nothing was judged."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} is not between 0 and 1")
    outcomes = list(outcomes)
    judged = [o for o in outcomes if o is not None and o.result is not None]
    counts = {result: sum(o.result == result for o in judged) for result in RESULTS}
    summary = {"n": len(judged), "unjudged": len(outcomes) - len(judged), "wins": counts["win"],
               "ties": counts["tie"], "losses": counts["loss"], "confidence": confidence, "win_rate": None,
               "win_rate_ci": None, "lc_win_rate": None, "length_bias": None}
    if not judged:
        return summary
    scores = np.array([SCORES[o.result] for o in judged])
    differences = np.array([o.candidate_length - o.production_length for o in judged], dtype=float)
    intercept, slope = _fit(_length_feature(differences), scores)
    return dict(summary, win_rate=float(scores.mean()), win_rate_ci=_bootstrap(counts, confidence, seed),
                lc_win_rate=float(_sigmoid(intercept)), length_bias=float(slope))


def describe(summary: dict) -> str:
    """A summary on one line: the counts, the win rate with its interval and the length-controlled rate."""
    counts = f"win {summary['wins']} / tie {summary['ties']} / loss {summary['losses']} of {summary['n']}"
    if summary["unjudged"]:
        counts += f" ({summary['unjudged']} unjudged)"
    if summary["win_rate"] is None:
        return f"{counts}: no judged prompts"
    low, high = summary["win_rate_ci"]
    return (f"{counts}: win rate {summary['win_rate']:.3f} [{low:.2f}, {high:.2f}], "
            f"length-controlled {summary['lc_win_rate']:.2f}")


def _bootstrap(counts: dict, confidence: float, seed: int) -> list[float]:
    """The percentile interval of the win rate over prompts resampled with replacement."""
    n = sum(counts.values())
    shares = [counts[result] / n for result in RESULTS]
    # A resample's win rate depends only on how many wins, ties and losses it drew: a multinomial draw.
    drawn = np.random.default_rng(seed).multinomial(n, shares, size=RESAMPLES)
    rates = (drawn[:, 0] + drawn[:, 1] / 2) / n
    low, high = np.quantile(rates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(low), float(high)]


def _length_feature(differences: np.ndarray) -> np.ndarray:
    """tanh of the length differences in units of their standard deviation (all 0 when they are all equal)."""
    spread = differences.std()
    if not np.isfinite(spread) or spread == 0:
        return np.zeros_like(differences)
    return np.tanh(differences / spread)


def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def _loss(weights: np.ndarray, features: np.ndarray, scores: np.ndarray, penalty: np.ndarray) -> float:
    """Cross-entropy of the fractional scores under the logistic model, plus the L2 penalties."""
    logits = features @ weights
    return float(np.sum(np.logaddexp(0.0, logits) - scores * logits) + penalty @ weights**2 / 2)


def _fit(feature: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of the penalized logistic regression of the scores on the feature."""
    features = np.column_stack([np.ones_like(feature), feature])
    penalty = np.array([INTERCEPT_PENALTY, SLOPE_PENALTY])
    weights = np.zeros(2)
    for _ in range(MAX_STEPS):
        predicted = _sigmoid(features @ weights)
        gradient = features.T @ (predicted - scores) + penalty * weights
        hessian = features.T @ (features * (predicted * (1 - predicted))[:, None]) + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        before = _loss(weights, features, scores, penalty)
        while _loss(weights - step, features, scores, penalty) > before and np.abs(step).max() > TOLERANCE:
            step = step / 2  # a Newton step that overshoots is halved until it does not
        weights = weights - step
        if np.abs(step).max() < TOLERANCE:
            break
    return float(weights[0]), float(weights[1])
