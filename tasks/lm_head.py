"""The trainers' LM head on a CPU.

TRL 1.16's SFT, DPO, KTO and GRPO trainers score tokens through a fused LM head (trl.trainer.utils
`add_fused_lm_head`) that never holds the logits of a whole batch. Two of its choices cost a CPU dearly:
- it projects only the positions whose next token carries a label on CUDA and XPU alone; elsewhere it
  projects every position, the prompt's and the padding's too, to keep tile shapes fixed for compiled devices;
- without Triton, each tile of the logits is folded by a dozen torch passes over the vocabulary, and the
  backward projects every tile a second time.
On a CPU in float32, `install` makes it project the labelled positions only, once: one product, torch's
log-softmax, and the log-probabilities kept for the backward (up to SAVED_ELEMENTS of them; beyond that the
backward projects again, a chunk at a time). Its outputs, loss and gradients are TRL's
(tests/tasks/test_lm_head.py). Other devices and dtypes, and soft-capped logits (Gemma 2), keep TRL's kernel.
This module runs in the trainer child (tasks.trainer), which has torch loaded anyway.
"""

from __future__ import annotations

import functools

CHUNK_ELEMENTS = 2**25  # rows x vocabulary projected at once: 128 MiB of float32 logits
SAVED_ELEMENTS = 2**28  # log-probabilities kept for the backward, at most: 1 GiB of float32


def install() -> None:
    """Patch TRL's fused LM head in this process (the trainer child calls it before building a trainer)."""
    import trl.trainer.utils as fused

    if isinstance(fused._ChunkedLogProbFunction, Dispatch):
        return
    on_gpu = fused._use_triton
    fused._use_triton = lambda device: device.type == "cpu" or on_gpu(device)
    fused._ChunkedLogProbFunction = Dispatch(fused._ChunkedLogProbFunction)


class Dispatch:
    """Stands where TRL looks its kernel up (`_ChunkedLogProbFunction.apply`, with TRL's arguments): the lean
    head where it applies, TRL's kernel elsewhere."""

    def __init__(self, kernel):
        self.kernel = kernel

    def apply(self, hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0,
              outputs=("log_probs",)):
        if softcap is None and lean_applies(hidden, weight):
            import torch

            # the reference's forward (no gradient) keeps nothing for a backward that never comes
            keep = torch.is_grad_enabled() and hidden.shape[0] * weight.shape[0] <= SAVED_ELEMENTS
            return lean_function().apply(hidden, weight, bias, targets, logit_scale / temperature, tuple(outputs),
                                         keep)
        return self.kernel.apply(hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale,
                                 outputs)


def lean_applies(hidden, weight) -> bool:
    import torch

    return (hidden.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
            and hidden.dtype == weight.dtype == torch.float32)


def log_softmax(hidden, weight, bias, scale: float):
    """The scaled logits of `hidden` rows through the head, and their log-softmax over the vocabulary."""
    import torch

    logits = hidden @ weight.t()
    if bias is not None:
        logits += bias
    if scale != 1.0:
        logits *= scale
    return logits, torch.log_softmax(logits, dim=-1)


def extras(logits, log_probs, targets, outputs: tuple) -> list:
    """TRL's optional per-token outputs, in its order: entropy, log(sum p^2), mean logit, is-top-1."""
    import torch

    return [
        -row_dot(torch.softmax(logits, dim=-1), log_probs) if "entropy" in outputs else None,
        torch.logsumexp(2 * log_probs, dim=-1) if "log_sum_sq_probs" in outputs else None,
        logits.mean(-1) if "mean_logits" in outputs else None,
        log_probs.argmax(-1) == targets if "is_top1" in outputs else None,
    ]


def row_dot(a, b):
    """sum(a * b, -1) of two rows x vocabulary matrices, without their product's temporary."""
    return (a.unsqueeze(1) @ b.unsqueeze(2)).view(-1)


def logits_grad(log_probs, targets, entropy, grad_lp, grad_entropy, scale: float):
    """d loss / d logits of one chunk, from its log-softmax (consumed: overwritten in place).
    d log p_t / d z_v = [v = t] - p_v;  d H / d z_v = -p_v (log p_v + H)."""
    p = log_probs.exp()
    grad = None
    if grad_entropy is not None:
        grad = log_probs.add_(entropy[:, None]).mul_(p).mul_(-grad_entropy[:, None])
    if grad_lp is not None:
        p.mul_(-grad_lp[:, None]).scatter_add_(1, targets[:, None], grad_lp[:, None])
        grad = p if grad is None else grad.add_(p)
    return grad if scale == 1.0 else grad.mul_(scale)


def chunks(n: int, rows: int) -> list[slice]:
    """Slices of `rows` rows over n, at least one (an all-masked batch still gives a connected output)."""
    return [slice(start, start + rows) for start in range(0, max(n, 1), rows)]


@functools.cache
def lean_function():
    import torch

    class LeanHead(torch.autograd.Function):
        """Per-token log-probabilities of `hidden @ weight.T (+ bias)` times `scale`, with TRL's optional
        outputs; projected in chunks of CHUNK_ELEMENTS logits, whose log-softmax is kept for the backward if
        `keep` (else the backward projects again)."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, scale, outputs, keep):
            ctx.set_materialize_grads(False)
            rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
            pieces, kept = [], []
            for chunk in chunks(hidden.shape[0], rows):
                logits, log_probs = log_softmax(hidden[chunk], weight, bias, scale)
                picked = log_probs.gather(1, targets[chunk, None]).squeeze(1)
                pieces.append([picked, *extras(logits, log_probs, targets[chunk], outputs)])
                del logits
                kept.append(log_probs if keep else None)
            out = [None if piece[0] is None else torch.cat(piece) for piece in zip(*pieces)]
            entropy = out[0] if out[1] is None else out[1]
            ctx.save_for_backward(hidden, weight, bias, targets, entropy)
            ctx.kept, ctx.rows, ctx.scale = kept, rows, scale
            ctx.mark_non_differentiable(*(x for x in out[2:] if x is not None))
            return tuple(out)

        @staticmethod
        def backward(ctx, grad_lp, grad_entropy, *_):
            hidden, weight, bias, targets, entropy = ctx.saved_tensors
            need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
            grad_hidden = torch.zeros_like(hidden) if need_hidden else None
            grad_weight = torch.zeros_like(weight) if need_weight else None
            grad_bias = torch.zeros_like(bias) if need_bias else None
            if grad_lp is None and grad_entropy is None:
                return grad_hidden, grad_weight, grad_bias, None, None, None, None
            for i, chunk in enumerate(chunks(hidden.shape[0], ctx.rows)):
                log_probs = ctx.kept[i]
                if log_probs is None:
                    log_probs = log_softmax(hidden[chunk], weight, bias, ctx.scale)[1]
                grad = logits_grad(log_probs, targets[chunk], entropy[chunk],
                                   None if grad_lp is None else grad_lp[chunk],
                                   None if grad_entropy is None else grad_entropy[chunk], ctx.scale)
                ctx.kept[i] = None
                if need_hidden:
                    grad_hidden[chunk] = grad @ weight
                if need_weight:
                    grad_weight.addmm_(grad.t(), hidden[chunk])
                if need_bias:
                    grad_bias += grad.sum(0)
            return grad_hidden, grad_weight, grad_bias, None, None, None, None

    return LeanHead
