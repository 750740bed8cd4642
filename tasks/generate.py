"""Answers from a model in this process with transformers' `generate`, to conversations rendered by the model's
chat template. The `sample` stage's transformers engine and the `judge` stage answer through it."""

from __future__ import annotations

import time
from pathlib import Path

from storage import ArtifactRef
from tasks.models import load_tokenizer, materialize, model_chain, render


def ready_to_answer(store, model: ArtifactRef, asked: list[list[dict]], dest: Path) -> tuple[Path, list[str]]:
    """(a folder with the model's full weights, each conversation rendered by its chat template to be answered)."""
    chain = model_chain(store, model)
    tokenizer = load_tokenizer(chain)
    return materialize(chain, dest), [render(tokenizer, messages) for messages in asked]


def hf_generate(model_dir: Path, prompts: list[str], max_tokens: int, batch_size: int, k: int = 1,
                batch_seed: int | None = None, **sampling) -> dict:
    """Answers to rendered prompts with transformers' `generate` (greedy unless `sampling` says otherwise).
    With `batch_seed`, batch j draws with seed `batch_seed + j`: the answers to a batch depend on it alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.chat import encode_chat

    tokenizer = load_tokenizer([model_dir], padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    completions, tokens, started = [], 0, time.monotonic()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            if batch_seed is not None:
                torch.manual_seed(batch_seed + start // batch_size)
            batch = encode_chat(tokenizer, prompts[start:start + batch_size], return_tensors="pt", padding=True)
            out = model.generate(**batch, max_new_tokens=max_tokens, num_return_sequences=k,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
            new = out[:, batch["input_ids"].shape[1]:]
            tokens += int((new != tokenizer.pad_token_id).sum())
            answers = tokenizer.batch_decode(new, skip_special_tokens=True)
            completions += [[a.strip() for a in answers[i:i + k]] for i in range(0, len(answers), k)]
    return {"completions": completions, "tokens": tokens, "seconds": time.monotonic() - started,
            "engine": "transformers"}
