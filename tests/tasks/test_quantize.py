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


def test_weight_groups_divide_every_width_or_fall_back_to_one_scale_a_row():
    from tasks.quantize import group_size

    assert group_size({576, 1536}) == 64  # SmolLM2-135M: 128 does not divide its 576
    assert group_size({4096, 14336}) == 128  # Llama-3.1-8B keeps the schemes' own 128
    assert group_size({96, 160}) == 32
    assert group_size({576, 100}) is None


def test_w4a16_quantizes_a_model_whose_width_128_does_not_divide(tmp_path):
    """llm-compressor refuses groups of 128 on a 96-wide model (columns % group_size): the recipe picks 32."""
    import json
    import logging

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tasks.builtin.tiny_model import build_tokenizer
    from tasks.quantize import recipe, weight_groups

    build_tokenizer(tmp_path / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=96, intermediate_size=160,
                                      num_hidden_layers=1, num_attention_heads=3, num_key_value_heads=1,
                                      tie_word_embeddings=True))
    lm.save_pretrained(tmp_path / "model")  # llm-compressor checks what the model was loaded from
    lm = LlamaForCausalLM.from_pretrained(tmp_path / "model")
    group, recorded = weight_groups(lm, "w4a16", logging.getLogger("test"))
    assert (group, recorded) == (32, {"group_size": 32})
    assert weight_groups(lm, "w8a8", logging.getLogger("test")) == (None, {})  # not weight-only: no groups
    samples = Dataset.from_dict({"input_ids": [[(i * 7 + j) % 64 for j in range(16)] for i in range(4)],
                                 "attention_mask": [[1] * 16 for _ in range(4)]})
    oneshot(model=lm, tokenizer=tokenizer, dataset=samples, recipe=recipe("w4a16", group), max_seq_length=16,
            num_calibration_samples=4, shuffle_calibration_samples=False)
    lm.save_pretrained(tmp_path / "out", save_compressed=True)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    weights = config["quantization_config"]["config_groups"]["group_0"]
    assert (weights["weights"]["num_bits"], weights["weights"]["group_size"]) == (4, 32)
