"""Memory-efficient language-model loss: the head matmul and cross-entropy, a chunk of tokens at a time.

`linear_cross_entropy(h, weight, labels, chunk_size)` equals
`F.cross_entropy(F.linear(h, weight).float(), labels, ignore_index=-100)` (mean over labelled
tokens) in value and gradients, but never holds the (tokens, vocab) logits: each chunk's logits are
formed, turned into its loss and its gradients (d h, d weight) in the forward pass, and dropped. The
backward pass only scales the stored gradients. Memory is O(chunk x vocab + tokens x d + vocab x d).
`chunk_size=0` runs the plain loss. Non-goals: z-loss and label smoothing (not used by Huginn).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, labels: Tensor, chunk_size: int, denom: Tensor | None):
        # h: (N, d) in the compute dtype (bf16 under autocast), weight: (V, d), labels: (N,)
        n_valid = (labels != IGNORE).sum()
        acc = torch.promote_types(h.dtype, torch.float32)  # fp32 softmax for bf16/fp32 inputs, fp64 stays fp64
        scale = 1.0 / (denom if denom is not None else n_valid.clamp(min=1)).to(acc)
        w = weight.to(h.dtype)
        grad_h = torch.empty_like(h) if h.requires_grad else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if weight.requires_grad else None
        total = torch.zeros((), dtype=acc, device=h.device)
        for start in range(0, h.shape[0], chunk_size):
            hc, yc = h[start : start + chunk_size], labels[start : start + chunk_size]
            logits = (hc @ w.T).to(acc)  # (chunk, V): the only vocab-sized buffer
            lse = torch.logsumexp(logits, dim=-1)
            valid = yc != IGNORE
            target = logits.gather(1, yc.clamp(min=0)[:, None])[:, 0]
            total += ((lse - target) * valid).sum()
            if grad_h is None and grad_w is None:
                continue
            # d loss / d logits = (softmax - onehot) * scale on labelled rows
            probs = torch.exp(logits.sub_(lse[:, None]))
            probs[torch.arange(len(yc), device=yc.device), yc.clamp(min=0)] -= 1
            probs.mul_((valid.to(acc) * scale)[:, None])
            if grad_h is not None:
                grad_h[start : start + chunk_size] = (probs.to(h.dtype) @ w).to(h.dtype)
            if grad_w is not None:
                grad_w += probs.T @ hc.to(acc)
        ctx.save_for_backward(
            grad_h if grad_h is not None else torch.empty(0), grad_w if grad_w is not None else torch.empty(0)
        )
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if ctx.has[0] else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.has[1] else None
        return gh, gw, None, None, None


def linear_cross_entropy(
    h: Tensor, weight: Tensor, labels: Tensor, chunk_size: int = 4096, denom: Tensor | None = None
) -> Tensor:
    """Mean cross-entropy of `h @ weight.T` against `labels` (-100 ignored), chunked over tokens.

    `denom` overrides the divisor (default: the number of labelled tokens), so that micro-batches and
    ranks can share one global token count.
    """
    h = h.reshape(-1, h.shape[-1])
    labels = labels.reshape(-1)
    if chunk_size <= 0:
        logits = F.linear(h, weight.to(h.dtype))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        total = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
        return total / (denom if denom is not None else (labels != IGNORE).sum().clamp(min=1))
    return _ChunkedLinearCE.apply(h, weight, labels, chunk_size, denom)
