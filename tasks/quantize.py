"""Stage `quantize`: post-training quantization with llm-compressor, saved as compressed-tensors; and its
quality check, `quantize_quality`, which compares the primary score before and after.

Which of them the serving engine runs is the engine's to say (serving/vllm.py: `quantizations`):
    w8a8              SmoothQuant + GPTQ, int8 weights and activations (vLLM on CPU and GPU)
    w4a16             GPTQ int4 weights, 16-bit activations (vLLM on GPU; the x86 CPU build lacks the kernel);
                      weights in groups of 128, or the largest of 64 and 32 that divides every quantized
                      Linear's input width (SmolLM2-135M is 576 wide), else one scale per output row
    int8_weight_only  GPTQ int8 weights, 16-bit activations (vLLM on GPU; its CPU kernel takes int4 only)
    fp8               FP8 weights and dynamic per-token FP8 activations, no calibration (vLLM on GPU and,
                      by vLLM 0.32's fallback, on CPU)
Calibration uses prompts from the SFT dataset rendered with the chat template. `method: none` is handled
by the flow (the stage is skipped). A method the serving target cannot run is refused before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from alignflow.errors import StageError
from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.models import chat_texts, load_tokenizer
from tasks.stage import RunContext, publish, stage

LIBRARIES = ("torch", "transformers", "llmcompressor", "compressed-tensors")
WEIGHT_ONLY = {"w4a16": "W4A16", "int8_weight_only": "W8A16"}  # method: compressed-tensors' preset scheme


class QuantizeStage(StageConfig):
    """Post-training quantization with llm-compressor, saved as compressed-tensors, with a quality check."""

    method: Literal["w8a8", "w4a16", "int8_weight_only", "fp8", "none"] = Field(
        "w8a8", description="w8a8: SmoothQuant + GPTQ int8 weights and activations; w4a16: GPTQ int4 weights; "
                            "int8_weight_only: GPTQ int8 weights (both in groups of 128 weights, or of 64 or 32 "
                            "where 128 does not divide the model's widths); fp8: FP8 weights and activations (no "
                            "calibration); none: skip")
    calibration_samples: int = Field(64, ge=1, le=100000, description="rows of the SFT data used to calibrate")
    max_length: int = Field(512, ge=8, le=1048576, description="calibration sequence length in tokens")
    max_quality_drop: Optional[float] = Field(None, ge=0, le=1, description="fail when the primary score falls "
                                                                            "by more than this (needs "
                                                                            "stages.evaluate)")
    target: Literal["auto", "cpu", "gpu"] = Field("auto", description="where the model will be served: auto is "
                                                                      "this machine (a GPU if one is visible)")

    def needs(self) -> tuple[str, ...]:
        return ("stages.evaluate",) if self.max_quality_drop is not None else ()

    def serving_target(self) -> str:
        from serving.lifecycle import has_gpu

        return self.target if self.target != "auto" else ("gpu" if has_gpu() else "cpu")

    def serving_problems(self, engine_name: str) -> list[str]:
        """A method the engine that serves the model (stages.deploy.engine; vllm without a deploy stage) has no
        kernel for on the target."""
        from serving.engine import engine_for

        engine, target = engine_for(engine_name), self.serving_target()
        servable = engine.quantizations.get(target, ())
        if self.method == "none" or self.method in servable:
            return []
        return [f"stages.quantize.method: {engine.label} on {target.upper()} cannot run {self.method} models; "
                f"choose one of {', '.join(servable) or '(none)'} (or target: gpu to export for GPU serving "
                "elsewhere)"]


GROUP_SIZES = (128, 64, 32)  # of the weight-only schemes, largest first; all three run on vLLM's GPU kernels


def group_size(columns: set[int]) -> int | None:
    """The largest group size that divides every quantized Linear's input width, None for one scale per
    output channel. The schemes' own 128 does not divide every model: SmolLM2-135M is 576 wide, and
    llm-compressor refuses a group that straddles rows."""
    return next((size for size in GROUP_SIZES if all(width % size == 0 for width in columns)), None)


def recipe(method: str, group: int | None = 128) -> list:
    """llm-compressor's modifiers for `method`; `group`: weights per scale of the weight-only methods (None:
    one scale per output row)."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if method == "fp8":
        return [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])]
    if method in WEIGHT_ONLY:
        from compressed_tensors.quantization import QuantizationArgs, preset_name_to_scheme

        scheme = preset_name_to_scheme(WEIGHT_ONLY[method], ["Linear"])
        weights = {**scheme.weights.model_dump(), "group_size": group, "strategy": "group" if group else "channel"}
        scheme = scheme.model_copy(update={"weights": QuantizationArgs(**weights)})
        return [GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])]
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    return [SmoothQuantModifier(smoothing_strength=0.8),
            GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])]


def quantized_widths(lm) -> set[int]:
    """The input widths of the Linears the recipes quantize (every one but the LM head)."""
    import torch

    return {m.in_features for name, m in lm.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"}


def weight_groups(lm, method: str, logger) -> tuple[int | None, dict]:
    """(the group size for `method`'s recipe, what the artifact records of it): weight-only methods only."""
    if method not in WEIGHT_ONLY:
        return None, {}
    columns = quantized_widths(lm)
    group = group_size(columns)
    logger.info("quantize: weight groups of %s (input widths %s)", group or "a whole row", sorted(columns))
    return group, {"group_size": group or "channel"}


def weights_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 2**20, 3)


@stage("quantize", config=QuantizeStage, key_metric="weights_mb", libraries=LIBRARIES, accelerator=True)
def quantize(run: RunContext, model: ArtifactRef, calibration: ArtifactRef, config: QuantizeStage) -> ArtifactRef:
    from datasets import Dataset
    from llmcompressor import LoggerConfig, configure_logger, oneshot
    from prefect import get_run_logger
    from transformers import AutoModelForCausalLM

    from tasks.chat import encode_chat

    store, out = run.open_store(), run.workdir() / "output"
    src = store.get_dir(model)
    tokenizer = load_tokenizer([src])
    lm = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    texts = chat_texts(store.get_dir(calibration) / "data.jsonl", tokenizer, config.calibration_samples)
    samples = Dataset.from_dict(dict(encode_chat(tokenizer, texts, truncation=True, max_length=config.max_length)))
    log_file = run.log_file("quantize")
    get_run_logger().info("quantize: %s with %d calibration samples (llm-compressor's output: %s)", config.method,
                          len(texts), log_file)
    # llm-compressor logs every module it touches through loguru, which the stage's redirect misses
    configure_logger(LoggerConfig(console_log_level=None, log_file=str(log_file), log_file_level="INFO"))
    group, grouping = weight_groups(lm, config.method, get_run_logger())
    # no shuffling: its sampler is unseeded, and the order changes GPTQ's sums (so the bytes, so the digest)
    oneshot(model=lm, tokenizer=tokenizer, dataset=samples, recipe=recipe(config.method, group),
            max_seq_length=config.max_length, num_calibration_samples=len(texts), shuffle_calibration_samples=False)
    lm.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    return publish(run, "quantized", "model", out, stage="quantize", config=config,
                   inputs={"model": model, "calibration": calibration}, libraries=LIBRARIES,
                   metadata={"quantization": config.method, **grouping},
                   metrics={"weights_mb": weights_mb(out), "weights_mb_before": weights_mb(src)})


@stage("quantize_quality", config=QuantizeStage, key_metric="drop")
def quantize_quality(run: RunContext, quantized: ArtifactRef, before: ArtifactRef, after: ArtifactRef,
                     config: QuantizeStage) -> dict:
    """The primary score of the model before quantization (`before`, an eval report) and after (`after`):
    fail with both numbers when it fell by more than `max_quality_drop`."""
    from prefect import get_run_logger

    metric, old, new = after.metrics["metric"], before.metrics["score"], after.metrics["score"]
    quality = {"method": config.method, "set": after.metrics["primary"], "metric": metric, "before": old,
               "after": new, "drop": round(old - new, 4), "weights_mb_before": quantized.metrics["weights_mb_before"],
               "weights_mb": quantized.metrics["weights_mb"]}
    get_run_logger().info("quantize %s: %s %s %.3f -> %.3f (%+.3f); weights %.3f MB -> %.3f MB", config.method,
                          quality["set"], metric, old, new, new - old, quality["weights_mb_before"],
                          quality["weights_mb"])
    if config.max_quality_drop is not None and old - new > config.max_quality_drop:
        raise StageError(f"quantize: {config.method} lost {old - new:.3f} of {quality['set']} {metric} ({old:.3f} "
                         f"unquantized -> {new:.3f} quantized), more than max_quality_drop "
                         f"{config.max_quality_drop:.3f}; try w8a8 or more calibration_samples, raise "
                         "max_quality_drop, or set method: none")
    return quality
