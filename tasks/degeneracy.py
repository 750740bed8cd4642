"""Outputs that are technically fine and practically useless: a stage that made one says so.

A run whose DPO trained two steps on eighteen pairs at zero margin "completed"; nothing told the user. Each
check here reads what a stage already has (its counts, its training history, its predictions) and returns
a warning that names what is degenerate and the fix, or None. The stage puts its warnings in its output's
metrics (`warnings`), so the run summary, the stage's card in the dashboard and `artifacts show` all carry
them, on cached runs too.

>>> few_pairs(pairs=18, prompts=1200, ties=1182)[:58]
'only 18 on-policy pairs from 1200 prompts (1182 were ties)'
"""

from __future__ import annotations

import json
from pathlib import Path

MIN_PAIRS = 64  # fewer on-policy pairs than this, or than a tenth of the prompts, is too little to learn from
MIN_STEPS = 10  # optimizer steps below which a training curve says nothing
FLAT = 0.01  # a loss that moved less than 1% from its first logged value did not move
DUPLICATE_SHARE = 0.5  # half the rows or more removed as duplicates


def noted(metrics: dict, warnings: list[str | None], label: str, logger) -> dict:
    """`metrics` with the warnings that apply (None: this check found nothing) under `warnings`, each also
    logged as `label: warning`."""
    found = [warning for warning in warnings if warning]
    for warning in found:
        logger.warning("%s: %s", label, warning)
    return dict(metrics, warnings=found) if found else metrics


def few_pairs(pairs: int, prompts: int, ties: int) -> str | None:
    if pairs * 10 >= prompts and pairs >= min(MIN_PAIRS, prompts // 2):
        return None
    return (f"only {pairs} on-policy pairs from {prompts} prompts ({ties} were ties): the sampled answers are "
            "too alike to compare. Fix: sample more varied answers (sampling.temperature 1.0 or more, or a "
            "larger sampling.k), lower scoring.min_margin, or use pairs: mixed to add the offline pairs")


def training_warnings(stage: str, history: list[dict], steps: int) -> list[str]:
    """The loss did not move; a preference margin stayed at zero; too few steps to learn anything."""
    warnings = []
    losses = [h["loss"] for h in history if isinstance(h.get("loss"), (int, float)) and "train_loss" not in h]
    if len(losses) >= 2 and abs(losses[-1] - losses[0]) <= FLAT * max(abs(losses[0]), 1e-8):
        warnings.append(f"the loss did not move ({losses[0]:.4g} -> {losses[-1]:.4g} over {steps} steps). Fix: "
                        f"check stages.{stage}.learning_rate, and that the data differs from what the model "
                        "already does")
    margins = [h["rewards/margins"] for h in history if isinstance(h.get("rewards/margins"), (int, float))]
    if margins and max(abs(m) for m in margins) < 1e-6:
        warnings.append(f"the reward margin stayed at zero over {steps} steps: chosen and rejected answers look "
                        "the same to the policy. Fix: check the pairs (chosen != rejected) and the learning rate")
    if 0 < steps < MIN_STEPS:
        warnings.append(f"trained only {steps} optimizer steps. Fix: more rows, more epochs, or a smaller "
                        f"stages.{stage}.batch_size")
    return warnings


def mostly_duplicates(read: int, duplicates: int) -> str | None:
    if read == 0 or duplicates < DUPLICATE_SHARE * read:
        return None
    return (f"{duplicates} of {read} rows were exact duplicates and were removed. Fix: check the source for "
            "repeated files or rows; the model trains on the rows that are left")


def empty_answers(predictions: list[Path]) -> str | None:
    """Every answer in EvalScope's predictions is empty: the model stops at once."""
    total = empty = 0
    for path in predictions:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    total += 1
                    empty += not answer_text(json.loads(line)).strip()
    if total == 0 or empty < total:
        return None
    return (f"every one of the {total} answers was empty: the model ends its turn at once. Fix: check that the "
            "chat template's end-of-turn token is the tokenizer's eos_token and that training reached the "
            "answers (stages.sft.loss_on)")


def answer_text(row: dict) -> str:
    """The text of an EvalScope prediction record's first choice."""
    choices = (row.get("model_output") or {}).get("choices") or [{}]
    return content_text((choices[0].get("message") or {}).get("content") or "")


def content_text(content) -> str:
    """A chat message's content as text: a string as it is, a list of parts by their text parts."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)
