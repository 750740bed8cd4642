"""The quality check after quantization: the primary score before and after, and a limit on the loss."""

from __future__ import annotations

import pytest
from prefect.logging import disable_run_logger

from alignflow.errors import StageError
from storage import ArtifactRef
from tasks.quantize import QuantizeStage, quantize_quality

QUANTIZED = ArtifactRef("demo/quantized", "model", 1, "sha256:q", {"weights_mb_before": 1.27, "weights_mb": 0.44})


def report(score: float) -> ArtifactRef:
    return ArtifactRef("demo/eval", "eval_report", 1, f"sha256:{score}",
                       {"metric": "exact_match", "score": score, "primary": "qa"})


def check(before: float, after: float, limit: float | None) -> dict:
    with disable_run_logger():
        return quantize_quality.fn(None, QUANTIZED, report(before), report(after),
                                   QuantizeStage(method="w8a8", max_quality_drop=limit))


def test_a_loss_within_the_limit_is_reported_with_both_scores_and_sizes():
    quality = check(0.985, 0.980, 0.01)
    assert (quality["before"], quality["after"], quality["drop"]) == (0.985, 0.98, 0.005)
    assert (quality["weights_mb_before"], quality["weights_mb"]) == (1.27, 0.44)
    assert check(0.98, 0.98, 0.0)["drop"] == 0.0  # nothing lost passes even the strictest limit


def test_a_larger_loss_fails_naming_both_scores_and_the_limit():
    with pytest.raises(StageError, match=r"w8a8 lost 0\.005 of qa exact_match \(0\.985 unquantized -> 0\.980 "
                                         r"quantized\), more than max_quality_drop 0\.003"):
        check(0.985, 0.980, 0.0025)
