"""A trained reward model at work: loading a `reward_model` artifact and scoring conversations with it.

The `train_reward_model` stage (tasks/reward.py) trains one; `score`, `judge` and GRPO's reward function load
and use it through this module.
"""

from __future__ import annotations


def stored_reward_model(store, ref) -> tuple:
    """(model, tokenizer, max_length) of a `reward_model` artifact: it scores at the length it was trained on."""
    model, tokenizer = load_reward_model(store.get_dir(ref))
    return model, tokenizer, store.manifest(ref.digest)["metadata"].get("max_length", 1024)


def load_reward_model(folder):
    """(model, tokenizer) of a `reward_model` artifact's folder, ready to score."""
    from transformers import AutoModelForSequenceClassification

    from tasks.models import load_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    return model, load_tokenizer([folder])


def rewards(model, tokenizer, conversations: list[list[dict]], max_length: int, batch_size: int = 16) -> list[float]:
    """The reward model's score of each conversation (prompt turns plus the answer), as it was trained:
    the chat template's text, truncated to `max_length` tokens."""
    import torch

    from tasks.chat import encode_chat

    model.eval()
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(conversations), batch_size):
            texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations[start:start + batch_size]]
            batch = encode_chat(tokenizer, texts, return_tensors="pt", padding=True, truncation=True,
                                max_length=max_length).to(model.device)
            scores += model(**batch).logits.squeeze(-1).float().tolist()
    return scores
