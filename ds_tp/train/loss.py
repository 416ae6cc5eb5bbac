"""Cross-entropy of the LM head without the full logits: the token losses are computed in chunks of
rows, each chunk's logits made, used and dropped, and the gradients for the hidden states and the
head's weight computed in the same pass (the fused-linear-cross-entropy idea of Liger-Kernel and
Cut Cross Entropy, in plain torch). Peak memory for the head falls from tokens x vocab fp32 logits
(and their gradient) to chunk x vocab. Used where the head's weight is a plain tensor on this rank:
ZeRO stage 0-2 without tensor parallelism.
"""
from __future__ import annotations

import torch

from ds_tp.labels import IGNORE  # noqa: F401  (re-exported)


def _chunk_losses(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor):
    logits = (h @ weight.t()).float()
    valid = y != IGNORE
    target = y.clamp(min=0)
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, target[:, None])[:, 0]
    return logits, lse, (lse - picked) * valid, valid, target


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start:start + chunk], labels[start:start + chunk]
            logits, lse, losses, valid, target = _chunk_losses(h, weight, y)
            total += losses.sum()
            # d(sum of losses)/d logits = softmax - one_hot(target), zero on ignored rows
            g = torch.exp(logits - lse[:, None])
            g[torch.arange(g.shape[0], device=g.device), target] -= 1.0
            g *= valid[:, None]
            g = g.to(h.dtype)  # under autocast the matmuls below run in its dtype anyway
            grad_h[start:start + chunk] = (g @ weight).to(grad_h.dtype)
            grad_w += (g.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out.to(grad_w.dtype), None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                             chunk: int = 4096) -> torch.Tensor:
    """sum over rows of CE(hidden @ weight.T, labels), ignoring label -100; hidden (N, H), weight (V, H)."""
    if not torch.is_grad_enabled():
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            total += _chunk_losses(hidden[start:start + chunk], weight, labels[start:start + chunk])[2].sum()
        return total
    return _LinearCrossEntropySum.apply(hidden, weight, labels, chunk)
