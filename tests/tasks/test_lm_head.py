"""The trainers' LM head on a CPU projects only the positions that carry a label (tasks.trainer
score_labelled_positions_only): the same loss and gradients as projecting every position, for less work."""

from __future__ import annotations

import pytest


@pytest.fixture
def fused_model(tmp_path, monkeypatch):
    """The tiny model with TRL's fused LM head, as the SFT and DPO trainers give it; TRL's own choice of
    positions restored afterwards."""
    import torch
    import trl.trainer.utils as fused
    from transformers import AutoModelForCausalLM

    from tasks.builtin import tiny_model

    monkeypatch.setattr(fused, "_use_triton", fused._use_triton)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.build(tmp_path / "tiny"))
    fused.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    return model


def projected_rows(model, monkeypatch) -> tuple[list[int], float, list]:
    """(rows the LM head projected per call, the loss, the gradients) of one step on a batch whose labels
    cover 12 of its 2 x 31 next-token positions."""
    import types

    import torch
    import trl.trainer.utils as fused

    seen, apply = [], fused._ChunkedLogProbFunction.apply
    monkeypatch.setattr(fused, "_ChunkedLogProbFunction", types.SimpleNamespace(
        apply=lambda hidden, *rest: seen.append(hidden.shape[0]) or apply(hidden, *rest)))
    ids = torch.randint(0, 200, (2, 32), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, -100)
    labels[:, 20:26] = ids[:, 20:26]  # the answer; the prompt and the padding carry no label
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    return seen, out.loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_only_labelled_positions_are_projected_with_the_same_loss_and_gradients(fused_model, monkeypatch):
    import torch

    from tasks.trainer import score_labelled_positions_only

    every, loss, grads = projected_rows(fused_model, monkeypatch)
    assert every == [2 * 31]  # TRL's choice off CUDA: every position
    score_labelled_positions_only()
    labelled, same_loss, same_grads = projected_rows(fused_model, monkeypatch)
    assert labelled == [12]
    assert same_loss == pytest.approx(loss, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, same_grads))
