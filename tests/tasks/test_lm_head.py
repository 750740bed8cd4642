"""The trainers' LM head on a CPU (tasks.lm_head): it projects only the positions that carry a label, once,
with the same outputs, loss and gradients as TRL's fused head projecting every position."""

from __future__ import annotations

import pytest

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@pytest.fixture
def trl_head(monkeypatch):
    """TRL's kernel and its choice of positions, restored after the test (install() patches them)."""
    import trl.trainer.utils as fused

    monkeypatch.setattr(fused, "_use_triton", fused._use_triton)
    monkeypatch.setattr(fused, "_ChunkedLogProbFunction", fused._ChunkedLogProbFunction)
    return fused._ChunkedLogProbFunction


@pytest.fixture
def fused_model(tmp_path, trl_head):
    """The tiny model with TRL's fused LM head, as the SFT and DPO trainers give it."""
    import torch
    import trl.trainer.utils as fused
    from transformers import AutoModelForCausalLM

    from tasks.builtin import tiny_model

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

    seen, kernel = [], fused._ChunkedLogProbFunction
    monkeypatch.setattr(fused, "_ChunkedLogProbFunction", types.SimpleNamespace(
        apply=lambda hidden, *rest: seen.append(hidden.shape[0]) or kernel.apply(hidden, *rest)))
    ids = torch.randint(0, 200, (2, 32), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, -100)
    labels[:, 20:26] = ids[:, 20:26]  # the answer; the prompt and the padding carry no label
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    monkeypatch.setattr(fused, "_ChunkedLogProbFunction", kernel)
    return seen, out.loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_only_labelled_positions_are_projected_with_the_same_loss_and_gradients(fused_model, monkeypatch):
    import torch

    from tasks import lm_head

    every, loss, grads = projected_rows(fused_model, monkeypatch)
    assert every == [2 * 31]  # TRL's choice off CUDA: every position
    lm_head.install()
    labelled, same_loss, same_grads = projected_rows(fused_model, monkeypatch)
    assert labelled == [12]
    assert same_loss == pytest.approx(loss, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, same_grads))


def head_step(kernel, case: dict, outputs: tuple):
    """TRL's kernel arguments through `kernel`: its outputs, and the gradients of a loss that reads the
    log-probabilities and (when asked for) the entropy, for the hidden states, the head and its bias."""
    import torch

    g = torch.Generator().manual_seed(case["seed"])
    n, vocab, width = case["rows"], case["vocab"], 24
    hidden = torch.randn(n, width, generator=g, requires_grad=True)
    weight = (torch.randn(vocab, width, generator=g) * 0.3).requires_grad_()
    bias = (torch.randn(vocab, generator=g) * 0.1).requires_grad_() if case["bias"] else None
    targets = torch.randint(0, vocab, (n,), generator=g)
    out = kernel.apply(hidden, weight, bias, targets, case["temperature"], 64, None, case["scale"], outputs)
    weights = torch.rand(n, generator=g)
    loss = (out[0] * weights).sum() + (0 if out[1] is None else (out[1] * weights.flip(0)).sum())
    loss.backward()
    leaves = [hidden, weight] + ([bias] if bias is not None else [])
    return out, [leaf.grad for leaf in leaves]


CASES = [
    dict(seed=0, rows=37, vocab=300, bias=False, temperature=1.0, scale=1.0),
    dict(seed=1, rows=5, vocab=1000, bias=True, temperature=0.7, scale=1.0),
    dict(seed=2, rows=64, vocab=129, bias=True, temperature=1.0, scale=0.25),
    dict(seed=3, rows=0, vocab=300, bias=False, temperature=1.0, scale=1.0),  # an all-masked microbatch
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['rows']}x{c['vocab']}")
@pytest.mark.parametrize("outputs", [("log_probs",), OUTPUTS], ids=["log_probs", "all"])
@pytest.mark.parametrize("budget", ["kept", "recomputed"])
def test_lean_head_matches_trl_kernel(trl_head, monkeypatch, case, outputs, budget):
    """Every output and gradient as TRL's kernel gives them, in several chunks, with the log-softmax kept for
    the backward or (over the budget) projected again."""
    import torch

    from tasks import lm_head

    monkeypatch.setattr(lm_head, "CHUNK_ELEMENTS", 16 * case["vocab"])  # 16 rows a chunk
    monkeypatch.setattr(lm_head, "SAVED_ELEMENTS", 0 if budget == "recomputed" else lm_head.SAVED_ELEMENTS)
    want, want_grads = head_step(trl_head, case, outputs)
    got, got_grads = head_step(lm_head.Dispatch(trl_head), case, outputs)
    for name, a, b in zip(OUTPUTS, want, got):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.shape == b.shape and a.dtype == b.dtype, name
            assert torch.allclose(a.float(), b.float(), atol=2e-5), name
    for a, b in zip(want_grads, got_grads):
        assert torch.allclose(a, b, atol=2e-5)


def test_other_dtypes_keep_trl_kernel(trl_head):
    """bfloat16 (and soft-capped logits) go to TRL's kernel: the lean head is float32 on a CPU only."""
    import types

    import torch

    from tasks import lm_head

    calls = []
    spy = types.SimpleNamespace(apply=lambda *args: calls.append(args) or "trl")
    hidden, weight, targets = torch.randn(3, 8), torch.randn(50, 8), torch.tensor([1, 2, 3])
    head = lm_head.Dispatch(spy)
    assert head.apply(hidden.bfloat16(), weight.bfloat16(), None, targets, 1.0, 64, None, 1.0, OUTPUTS) == "trl"
    assert head.apply(hidden, weight, None, targets, 1.0, 64, 30.0, 1.0, OUTPUTS) == "trl"
    assert head.apply(hidden, weight, None, targets, 1.0, 64, None, 1.0, OUTPUTS) != "trl"
    assert len(calls) == 2
