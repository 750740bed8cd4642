"""Stage `quantize`: post-training quantization with llm-compressor, saved as compressed-tensors.

    w8a8    SmoothQuant + GPTQ, int8 weights and activations (vLLM serves it on CPU and GPU)
    w4a16   GPTQ int4 weights (vLLM serves it on GPU; not on x86 CPU)
Calibration uses prompts from the SFT dataset rendered with the chat template. `method: none` is
handled by the flow (the stage is skipped).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.models import chat_texts
from tasks.stage import RunContext, publish, stage

LIBRARIES = ("torch", "transformers", "llmcompressor", "compressed-tensors")


class QuantizeStage(StageConfig):
    """Post-training quantization with llm-compressor, saved as compressed-tensors."""

    method: Literal["w8a8", "w4a16", "none"] = Field(
        "w8a8", description="w8a8: SmoothQuant + GPTQ int8 (vLLM on CPU and GPU); w4a16: GPTQ int4 weights "
                            "(GPU serving); none: skip")
    calibration_samples: int = Field(64, ge=1, le=100000, description="rows of the SFT data used to calibrate")
    max_length: int = Field(512, ge=8, le=1048576, description="calibration sequence length in tokens")


def recipe(method: str) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier

    if method == "w4a16":
        return [GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])]
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    return [SmoothQuantModifier(smoothing_strength=0.8),
            GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])]


@stage("quantize", config=QuantizeStage, key_metric="weights_mb", libraries=LIBRARIES, uses=("tasks.models",),
       accelerator=True)
def quantize(run: RunContext, model: ArtifactRef, calibration: ArtifactRef, config: QuantizeStage) -> ArtifactRef:
    from datasets import Dataset
    from llmcompressor import LoggerConfig, configure_logger, oneshot
    from prefect import get_run_logger
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store, out = run.open_store(), run.workdir() / "output"
    src = store.get_dir(model)
    tokenizer = AutoTokenizer.from_pretrained(src)
    lm = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    texts = chat_texts(store.get_dir(calibration) / "data.jsonl", tokenizer, config.calibration_samples)
    samples = Dataset.from_dict(dict(tokenizer(texts, truncation=True, max_length=config.max_length)))
    log_file = run.log_file("quantize")
    get_run_logger().info("quantize: %s with %d calibration samples (llm-compressor's output: %s)", config.method,
                          len(texts), log_file)
    # llm-compressor logs every module it touches through loguru, which the stage's redirect misses
    configure_logger(LoggerConfig(console_log_level=None, log_file=str(log_file), log_file_level="INFO"))
    oneshot(model=lm, tokenizer=tokenizer, dataset=samples, recipe=recipe(config.method),
            max_seq_length=config.max_length, num_calibration_samples=len(texts))
    lm.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    size = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    return publish(run, "quantized", "model", out, stage="quantize", config=config,
                   inputs={"model": model, "calibration": calibration}, libraries=LIBRARIES,
                   metadata={"quantization": config.method}, metrics={"weights_mb": round(size / 2**20, 3)})
