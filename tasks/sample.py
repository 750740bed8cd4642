"""Stage `sample`: k answers per prompt from the current policy, the raw material of on-policy pairs.

Engines: `vllm` runs vLLM's offline engine in the serve env (tasks/vllm_generate.py, started with the
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
import subprocess
import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from alignflow.errors import ConfigError, StageError
from storage import ArtifactRef
from tasks.config import StageConfig
from tasks.models import conversations, load_tokenizer, materialize, model_chain, render
from tasks.stage import RunContext, publish, stage

LIBRARIES = ("torch", "transformers", "peft")


class SampleSpec(StageConfig):
    """How answers are drawn from the policy (for on-policy pairs)."""

    k: int = Field(4, ge=2, le=64, description="answers drawn per prompt; the best and the worst become a pair")
    temperature: float = Field(1.0, gt=0, le=5, description="sampling temperature (higher: more varied answers)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the smallest set of tokens with this "
                                                      "much probability")
    max_tokens: int = Field(64, ge=1, le=65536, description="generation budget per answer")
    max_prompts: Optional[int] = Field(None, ge=1, description="sample for at most this many prompts (empty: all)")
    engine: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="vllm: the serve env's offline engine; transformers: generate in the worker; auto: "
                            "vLLM on a GPU host where it can run the model, else transformers")
    batch_size: int = Field(16, ge=1, le=4096, description="prompts per generate call (transformers engine)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="sampling seed")


@stage("sample", config=SampleSpec, key_metric="answers", libraries=LIBRARIES,
       uses=("tasks.models", "tasks.vllm_generate"), accelerator=True)
def sample(run: RunContext, model: ArtifactRef, prompts: ArtifactRef, config: SampleSpec) -> ArtifactRef:
    """`prompts`: any canonical split; each row's conversation without its answer is a prompt."""
    from prefect import get_run_logger

    logger, store, workdir = get_run_logger(), run.open_store(), run.workdir()
    asked = conversations(store.get_dir(prompts) / "data.jsonl", config.max_prompts, with_answers=False)
    folder, texts = ready_to_answer(store, model, asked, workdir / "policy")
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


def ready_to_answer(store, model: ArtifactRef, asked: list[list[dict]], dest: Path) -> tuple[Path, list[str]]:
    """(a folder with the model's full weights, each conversation rendered by its chat template to be answered)."""
    chain = model_chain(store, model)
    tokenizer = load_tokenizer(chain)
    return materialize(chain, dest), [render(tokenizer, messages) for messages in asked]


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


def with_vllm(model_dir: Path, prompts: list[str], config: SampleSpec, cache_dir: str, workdir: Path) -> dict:
    """vLLM's offline engine in the serve env (a child process with its own torch)."""
    from tasks import vllm_generate
    from tasks.servers import serve_python, server_env

    python = serve_python()
    job, result, log = workdir / "vllm-job.json", workdir / "vllm-result.json", workdir / "vllm.log"
    result.unlink(missing_ok=True)
    job.write_text(json.dumps({"model": str(model_dir), "prompts": prompts, "n": config.k,
                               "temperature": config.temperature, "top_p": config.top_p,
                               "max_tokens": config.max_tokens, "seed": config.seed, "output": str(result)}))
    with open(log, "w") as out:
        code = subprocess.run([python, vllm_generate.__file__, str(job)], stdout=out, stderr=subprocess.STDOUT,
                              env=server_env(cache_dir), cwd=workdir).returncode
    if code != 0 or not result.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise StageError(f"sample: vLLM's offline engine failed (exit code {code}); its log ends:\n{tail}")
    return dict(json.loads(result.read_text()), engine="vllm")


def with_transformers(model_dir: Path, prompts: list[str], config: SampleSpec) -> dict:
    """`generate` in this process, `batch_size` prompts at a time, k sampled answers each."""
    import torch

    torch.manual_seed(config.seed)
    return hf_generate(model_dir, prompts, config.max_tokens, config.batch_size, k=config.k, do_sample=True,
                       temperature=config.temperature, top_p=config.top_p)


def hf_generate(model_dir: Path, prompts: list[str], max_tokens: int, batch_size: int, k: int = 1,
                **sampling) -> dict:
    """Answers to rendered prompts with transformers' `generate` (greedy unless `sampling` says otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.chat import encode_chat

    tokenizer = load_tokenizer([model_dir], padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    completions, tokens, started = [], 0, time.monotonic()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = encode_chat(tokenizer, prompts[start:start + batch_size], return_tensors="pt", padding=True)
            out = model.generate(**batch, max_new_tokens=max_tokens, num_return_sequences=k,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
            new = out[:, batch["input_ids"].shape[1]:]
            tokens += int((new != tokenizer.pad_token_id).sum())
            answers = tokenizer.batch_decode(new, skip_special_tokens=True)
            completions += [[a.strip() for a in answers[i:i + k]] for i in range(0, len(answers), k)]
    return {"completions": completions, "tokens": tokens, "seconds": time.monotonic() - started,
            "engine": "transformers"}
