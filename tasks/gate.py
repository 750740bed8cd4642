"""Stage `gate`: decide whether the candidate may replace what is in production.

Rules (all must hold; each failure is listed in the decision's reasons):
    score >= min_score
    score - base score >= min_gain_over_base
    score >= production score - max_regression    (when a model is in production)
    reward-model win rate over the SFT policy >= min_win_rate    (when set; the `judge` stage measures it)
    length-controlled win rate over production >= min_win_rate_vs_production   (when set and a model other
        than the candidate is in production; the `compare` stage's LLM judge measures it)
    each set in max_drop: its score >= the base model's - max_drop[set]   (what training must not cost)
    each set in max_set_regression: its score >= production's - max_set_regression[set]   (when a model is
        in production and its report scored that set)
Never cached: production moves between runs. The decision is a plain dict the flow reports; it names
the production version it judged against, and the flow promotes the candidate only if production still
points there (compare-and-swap), so two runs that pass at once never lose an update.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Optional

from pydantic import Field

from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.stage import RunContext, stage

PRODUCTION = "production"


class GateStage(StageConfig):
    """Rules the candidate's primary score must pass before it may replace production (scores are 0..1)."""

    min_score: float = Field(0.0, ge=0, le=1, description="the candidate's score must reach this")
    min_gain_over_base: float = Field(0.0, ge=-1, le=1, description="... beat the base model by at least this")
    max_regression: float = Field(0.0, ge=0, le=1, description="... and not fall below production's score by "
                                                               "more than this")
    min_win_rate: Optional[float] = Field(None, ge=0, le=1, description="... and win at least this share of "
                                                                        "held-out prompts against the SFT policy, "
                                                                        "by the reward model (needs stages.reward)")
    min_win_rate_vs_production: Optional[float] = Field(
        None, ge=0, le=1, description="... and reach at least this length-controlled win rate against the "
                                      "production model, by stages.compare's LLM judge (a tie counts half; "
                                      "nothing in production, or the same model: not asked)")
    max_drop: dict[str, float] = Field(default_factory=dict, description="per evaluation set (its name, or qa): "
                                       "how far below the base model's score the candidate may fall there, e.g. "
                                       "{knowledge: 0.05}: a skill the training must not cost")
    max_set_regression: dict[str, float] = Field(default_factory=dict, description="per evaluation set (its name, "
                                                 "or qa): how far below production's score the candidate may "
                                                 "fall there, e.g. {mcq: 0.05}: a set production does well on "
                                                 "must stay good")

    def needs(self) -> tuple[str, ...]:
        return ("stages.evaluate",) + (("stages.reward",) if self.min_win_rate is not None else ()) + (
            ("stages.compare",) if self.min_win_rate_vs_production is not None else ())

    def problems(self) -> list[str]:
        rules = {"max_drop": self.max_drop, "max_set_regression": self.max_set_regression}
        return [f"stages.gate.{rule}.{name}: {drop} is not between 0 and 1" for rule, drops in rules.items()
                for name, drop in drops.items() if not 0 <= drop <= 1]


def production_report(run: RunContext) -> ArtifactRef | None:
    store, name = run.open_store(), f"{run.name}/eval-candidate"
    return store.ref(name, PRODUCTION) if store.alias_target(name, PRODUCTION) is not None else None


def decide(score: float, base: float, production: float | None, config: GateStage,
           win_rate: float | None = None, sets: dict | None = None, base_sets: dict | None = None,
           production_sets: dict | None = None, compared: dict | None = None) -> list[str]:
    """`compared`: the compare stage's metrics (None: it did not run).

    >>> decide(0.5, 0.3, None, GateStage(min_score=0.6))
    ['score 0.500 is below min_score 0.600']"""
    reasons = []
    if score < config.min_score:
        reasons.append(f"score {score:.3f} is below min_score {config.min_score:.3f}")
    if score - base < config.min_gain_over_base:
        reasons.append(f"gain over base {score - base:+.3f} is below min_gain_over_base "
                       f"{config.min_gain_over_base:.3f}")
    if production is not None and score < production - config.max_regression:
        reasons.append(f"score {score:.3f} is below production's {production:.3f} by more than max_regression "
                       f"{config.max_regression:.3f}")
    if config.min_win_rate is not None and (win_rate is None or win_rate < config.min_win_rate):
        measured = "was not measured (no judge report)" if win_rate is None else f"{win_rate:.3f}"
        reasons.append(f"win rate over the SFT policy {measured} is below min_win_rate {config.min_win_rate:.3f}")
    reasons += versus_production(compared, config.min_win_rate_vs_production)
    reasons += set_drops(sets or {}, base_sets or {}, config.max_drop)
    if production is not None:
        reasons += set_drops(sets or {}, production_sets or {}, config.max_set_regression, "max_set_regression",
                             "production's")
    return reasons


def versus_production(compared: dict | None, minimum: float | None) -> list[str]:
    """The LLM judge's length-controlled win rate against production, below `minimum`."""
    if minimum is None or compared is None:
        return []
    rate = compared["lc_win_rate"]  # always measured: compare fails when the judge rules on no prompt
    counts = (f"win/tie/loss {compared['wins']}/{compared['ties']}/{compared['losses']}, "
              f"{compared['unjudged']} unjudged")
    if rate < minimum:
        return [f"length-controlled win rate over production {rate:.3f} ({counts}) is below "
                f"min_win_rate_vs_production {minimum:.3f}"]
    return []


def set_drops(sets: dict, reference: dict, allowed: dict, rule: str = "max_drop",
              whose: str = "the base model's") -> list[str]:
    """One reason per set in `allowed` that was not evaluated, or whose score fell below `reference`'s by
    more than its allowance. A set `reference` has no score for (production's report predates it) passes."""
    reasons = []
    for name, drop in sorted(allowed.items()):
        if name not in sets:
            reasons.append(f"{name}: {rule} names a set that was not evaluated (sets: {', '.join(sorted(sets))})")
        elif name in reference and sets[name] < reference[name] - drop:
            reasons.append(f"{name}: {sets[name]:.3f} is {reference[name] - sets[name]:.3f} below {whose} "
                           f"{reference[name]:.3f}, more than {rule} {drop:.3f}")
    return reasons


@dataclass(frozen=True)
class Decision:
    """What the gate decided, and the scores it judged: the flow ships the candidate only when `passed`."""

    passed: bool
    reasons: list[str]  # why not, one per failed rule (empty when passed)
    score: float
    base_score: float
    production_score: Optional[float]
    win_rate: Optional[float]
    win_rate_vs_production: Optional[float]  # length-controlled, by the compare stage's judge
    production: Optional[str]  # the production report it was judged against (name@version)
    production_version: Optional[int]  # promotion is a compare-and-swap against this version


@stage("gate", config=GateStage, needs=("stages.evaluate",), cached=False)
def gate(run: RunContext, candidate: ArtifactRef, base: ArtifactRef, config: GateStage,
         judged: Optional[ArtifactRef] = None, compared: Optional[ArtifactRef] = None) -> Decision:
    """`judged`: the judge stage's report (the reward model's win rate), when the pipeline has one;
    `compared`: the compare stage's report (the LLM judge against production), when it ran."""
    from prefect import get_run_logger

    production = production_report(run)
    prod_score = production.metrics["score"] if production else None
    win_rate = judged.metrics["win_rate"] if judged else None
    reasons = decide(candidate.metrics["score"], base.metrics["score"], prod_score, config, win_rate,
                     candidate.metrics.get("sets"), base.metrics.get("sets"),
                     production.metrics.get("sets") if production else None,
                     compared.metrics if compared else None)
    decision = Decision(passed=not reasons, reasons=reasons, score=candidate.metrics["score"],
                        base_score=base.metrics["score"], production_score=prod_score, win_rate=win_rate,
                        win_rate_vs_production=compared.metrics.get("lc_win_rate") if compared else None,
                        production=production.label if production else None,
                        production_version=production.version if production else None)
    get_run_logger().info("gate: %s%s", "passed" if not reasons else "rejected: ", "; ".join(reasons))
    return decision
