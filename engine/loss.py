"""The training loss: label-smoothed cross entropy over the real target tokens, lean in memory.

    loss = (1 - eps) * NLL + eps * mean over the vocabulary of -log p     (fairseq's smoothing)

summed over the rows given, and the plain NLL beside it (what every reported loss is). This is
also ``F.cross_entropy(..., label_smoothing=eps, reduction="sum")``'s definition.

Why not ``F.cross_entropy``: with a vocabulary of 37,000 the logits are the largest tensors of
a step, and the usual path keeps several float32 copies of them alive (the cast, log_softmax's
output saved for backward, its gradient, the gradient of the cast) plus a second log_softmax for
the unsmoothed NLL. Here the caller passes only the real target positions (``target_positions``
in engine/batching.py: padding never reaches the output projection), and the forward computes
the loss and, in float32 a chunk of rows at a time, the gradient of the loss with respect to the
logits,

    d loss / d logit_j = p_j - (1 - eps) * [j = y] - eps / V,

stored in the logits' dtype (bf16 for fp16); backward only scales it. So a step holds the logits and one
gradient of their size, never a float32 copy of the whole.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 21  # float32 values computed at a time: 8 MB, whatever the batch
# (under glibc's 32 MB mmap threshold: chunk temporaries reuse heap memory instead of being
# mapped and page-faulted afresh every step)


def label_smoothed_loss(logits: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """(smoothed loss summed, NLL summed) of ``logits`` (N, V) against ``target`` (N,).

    Every row counts (leave padding out before: engine.batching.target_positions). Works in
    float32 whatever the dtype of ``logits``. The NLL carries no gradient. Backward may run once (it
    scales the stored gradient in place)."""
    if torch.is_grad_enabled() and logits.requires_grad:
        return _SmoothedCrossEntropy.apply(logits, target, float(epsilon))
    nll, smooth = _sums(logits, target, epsilon, grad=None)  # validation: values only
    return (1.0 - epsilon) * nll + epsilon * smooth / logits.size(-1), nll


def _sums(logits: Tensor, target: Tensor, epsilon: float,
          grad: Tensor | None) -> tuple[Tensor, Tensor]:
    """(NLL summed, -log p summed over rows and vocabulary), a float32 chunk of rows at a time;
    fills ``grad`` with d loss / d logits when given."""
    n, vocab = logits.shape
    nll = logits.new_zeros((), dtype=torch.float32)
    smooth = logits.new_zeros((), dtype=torch.float32)
    rows = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, n, rows):
        end = min(start + rows, n)
        lprobs = torch.log_softmax(logits[start:end].float(), dim=-1)
        t = target[start:end].unsqueeze(1)
        nll -= lprobs.gather(1, t).sum()
        smooth -= lprobs.sum()
        if grad is not None:
            probs = lprobs.exp_()  # in place: one float32 chunk at a time
            probs.sub_(epsilon / vocab)
            probs.scatter_add_(1, t, probs.new_full(t.shape, -(1.0 - epsilon)))
            grad[start:end] = probs
    return nll, smooth


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
        # fp16 logits: the gradient before the loss scaling holds probabilities far below fp16's
        # smallest normal number; bf16 keeps their range (autograd casts the result to fp16)
        dtype = torch.bfloat16 if logits.dtype == torch.float16 else logits.dtype
        grad = torch.empty_like(logits, dtype=dtype)
        nll, smooth = _sums(logits, target, epsilon, grad)
        loss = (1.0 - epsilon) * nll + epsilon * smooth / logits.size(-1)
        ctx.mark_non_differentiable(nll)
        ctx.save_for_backward(grad)
        ctx.set_materialize_grads(False)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss: Tensor | None, grad_nll: Tensor | None):
        (grad,) = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None
        # in place: a second tensor of the logits' size would be the step's peak
        return grad.mul_(grad_loss), None, None
