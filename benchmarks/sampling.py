"""Sampling answers for on-policy pairs: vLLM's offline engine vs transformers `generate`, same prompts.

    .venv/bin/python benchmarks/sampling.py [--prompts 256] [--k 4] [--max-tokens 64]

Both engines answer the same rendered prompts k times each (temperature 1) with the `sample` stage's own
code (tasks/sample.py); generated tokens per second excludes start-up, which is printed apart (vLLM loads
its engine in a child process of the serve env). Two models: the built-in tiny one and a random one of
about 30M parameters, where compute matters more than per-call overhead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def wider_model(folder: Path) -> Path:
    """A random Qwen2 of about 30M parameters with the tiny model's tokenizer (head size 64 for vLLM on CPU)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tasks.download import fetch_model
    from tasks.models import load_tokenizer

    tiny = fetch_model("builtin://tiny-qwen2", folder / "tiny")
    tokenizer = load_tokenizer([tiny])
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder / "wide")
    tokenizer.save_pretrained(folder / "wide")
    return folder / "wide"


def measure(name: str, model: Path, prompts: int, k: int, max_tokens: int, work: Path) -> None:
    from tasks.models import load_tokenizer, render
    from tasks.on_policy import SampleSpec
    from tasks.sample import with_transformers, with_vllm

    tokenizer = load_tokenizer([model])
    questions = ["reverse: " + " ".join("abcdefgh"[(i + j) % 8] for j in range(i % 12 + 2)) for i in range(prompts)]
    texts = [render(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    config = SampleSpec(k=k, max_tokens=max_tokens, batch_size=32)
    rows = {}
    for engine, fn in (("transformers", lambda: with_transformers(model, texts, config)),
                       ("vllm", lambda: with_vllm(model, texts, config, str(work / "cache"), work))):
        started = time.monotonic()
        result = fn()
        total = time.monotonic() - started
        rows[engine] = (result["tokens"] / result["seconds"], result["tokens"], total - result["seconds"], total)
    print(f"{name}: {prompts} prompts x {k} answers, up to {max_tokens} tokens each")
    for engine, (rate, tokens, start, total) in rows.items():
        print(f"  {engine:12s} {rate:9.0f} tokens/s  ({tokens} tokens; start-up {start:5.1f} s, total {total:5.1f} s)")
    print(f"  vllm / transformers: {rows['vllm'][0] / rows['transformers'][0]:.2f}x tokens/s, "
          f"{rows['transformers'][3] / rows['vllm'][3]:.2f}x end to end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from tasks.download import fetch_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        measure("tiny model (2 layers, hidden 128)", fetch_model("builtin://tiny-qwen2", work / "tiny"),
                args.prompts, args.k, args.max_tokens, work)
        measure("random model (8 layers, hidden 512, ~30M parameters)", wider_model(work), args.prompts, args.k,
                args.max_tokens, work)


if __name__ == "__main__":
    main()
