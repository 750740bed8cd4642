"""Stage `sample`: k answers per prompt from the current policy, the raw material of on-policy pairs.

Engines: `vllm` runs vLLM's offline engine in the serve env (serving/vllm_generate.py, started with the
serve env's python: vLLM keeps its own torch), `transformers` runs `generate` here. `auto` uses vLLM on a
GPU host and falls back to transformers when the serve env is missing or cannot run the model (the
reason is logged); on a CPU host it uses transformers, since vLLM's CPU engine takes about a minute to
start (docs/BENCHMARKS.md has both engines' numbers).
Output: `<pipeline>/samples` (kind `samples`): samples.jsonl, one row per prompt {"prompt": [messages],
"completions": [k answers]}, with the sampling settings and the engine in its metadata and the policy in
its lineage.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignflow.errors import ConfigError, StageError
from storage import ArtifactRef
from tasks.generate import hf_generate, ready_to_answer
from tasks.models import conversations
from tasks.on_policy import SampleSpec
from tasks.stage import RunContext, publish, stage

LIBRARIES = ("torch", "transformers", "peft")


@stage("sample", config=SampleSpec, key_metric="answers", libraries=LIBRARIES, accelerator=True)
def sample(run: RunContext, model: ArtifactRef, prompts: ArtifactRef, config: SampleSpec) -> ArtifactRef:
    """`prompts`: any canonical split; each row's conversation without its answer is a prompt."""
    from prefect import get_run_logger

    logger, store, workdir = get_run_logger(), run.open_store(), run.workdir()
    asked = conversations(store.get_dir(prompts) / "data.jsonl", config.max_prompts, with_answers=False)
    folder, texts = ready_to_answer(store, model, asked, workdir / "policy")
    if config.engine == "ray":
        result = on_ray(run, store, model, texts, config, workdir, logger)
    else:
        result = generate(folder, texts, config, run.cache_dir, workdir, logger)
    out = workdir / "output"
    out.mkdir(exist_ok=True)
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        for messages, answers in zip(asked, result["completions"]):
            f.write(json.dumps({"prompt": messages, "completions": answers}, ensure_ascii=False) + "\n")
    metrics = {"prompts": len(texts), "answers": len(texts) * config.k, "tokens": result["tokens"],
               "engine": result["engine"]}  # no timings: the same samples must give the same digest
    logger.info("sample: %d answers to %d prompts with %s, %d tokens at %.0f tokens/s", metrics["answers"],
                len(texts), result["engine"], result["tokens"], result["tokens"] / max(result["seconds"], 1e-9))
    return publish(run, "samples", "samples", out, stage="sample", config=config,
                   inputs={"policy": model, "prompts": prompts}, libraries=LIBRARIES, metrics=metrics,
                   metadata={"sampling": config.model_dump(), "engine": result["engine"]})


def generate(model_dir: Path, prompts: list[str], config: SampleSpec, cache_dir: str, workdir: Path,
             logger) -> dict:
    """{"completions": [[k answers] per prompt], "tokens", "seconds", "engine"} from the configured engine."""
    import torch

    if config.engine == "vllm" or (config.engine == "auto" and torch.cuda.is_available()):
        try:
            return with_vllm(model_dir, prompts, config, cache_dir, workdir)
        except (ConfigError, StageError) as exc:
            if config.engine == "vllm":
                raise
            logger.warning("sample: vLLM cannot sample here, using transformers instead (%s)", str(exc)[-800:])
    return with_transformers(model_dir, prompts, config)


def on_ray(run: RunContext, store, model: ArtifactRef, texts: list[str], config: SampleSpec, workdir: Path,
           logger) -> dict:
    """transformers on Ray workers, batch i seeded with seed + i (distributed/fanout.py)."""
    from distributed import fanout
    from tasks.models import chain_refs

    settings = {"max_tokens": config.max_tokens, "batch_size": config.batch_size, "k": config.k,
                "batch_seed": config.seed, "do_sample": True, "temperature": config.temperature, "top_p": config.top_p}
    return fanout.answer(store, run.credentials_block, chain_refs(store, model), texts, settings, config,
                         workdir / "ray", logger)


def with_vllm(model_dir: Path, prompts: list[str], config: SampleSpec, cache_dir: str, workdir: Path) -> dict:
    """vLLM's offline engine in the serve env (a child process with its own torch)."""
    from serving import vllm
    from serving.lifecycle import serve_python, server_env

    sampling = {"n": config.k, "temperature": config.temperature, "top_p": config.top_p,
                "max_tokens": config.max_tokens, "seed": config.seed}
    result = vllm.generate(serve_python(), server_env(vllm.ENGINE, cache_dir), model_dir, prompts, sampling, workdir)
    return dict(result, engine="vllm")


def with_transformers(model_dir: Path, prompts: list[str], config: SampleSpec) -> dict:
    """`generate` in this process, `batch_size` prompts at a time, k sampled answers each."""
    import torch

    torch.manual_seed(config.seed)
    return hf_generate(model_dir, prompts, config.max_tokens, config.batch_size, k=config.k, do_sample=True,
                       temperature=config.temperature, top_p=config.top_p)

