"""Label-smoothed cross-entropy (paper, section 5.4: epsilon_ls = 0.1), summed over real tokens.

The loss of one token with target y over a vocabulary of V, with log-probabilities log p = x - lse(x):

    (1 - eps) * (-log p_y) + eps / V * sum_j (-log p_j)  =  lse(x) - (1 - eps) x_y - eps * mean_j x_j

(the definition of F.cross_entropy(label_smoothing=eps)). It is computed in one fused function: a
log-sum-exp per row in fp32 (bf16 logits are widened a block of rows at a time, never copied to fp32 whole), and a
backward that writes (softmax(x) - (1 - eps) onehot(y) - eps / V) * grad straight from the saved
logits, instead of materialising fp32 log-probabilities twice (smoothed loss and plain NLL).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, pad_id: int, smoothing: float):  # type: ignore[override]
        # logits (N, V), target (N,) -> (smoothed loss summed over non-pad rows, NLL summed)
        keep = target != pad_id  # (N,)
        safe_target = target.masked_fill(~keep, 0)  # pad_id may lie outside the vocabulary
        lse = _logsumexp_fp32(logits)
        target_logit = logits.gather(1, safe_target[:, None]).squeeze(1).float()
        nll = ((lse - target_logit) * keep).sum()
        loss = nll.clone()  # a separate output: nll carries no gradient
        if smoothing:
            mean_logit = logits.sum(dim=-1, dtype=torch.float32) / logits.size(-1)
            loss = (1.0 - smoothing) * nll + smoothing * ((lse - mean_logit) * keep).sum()
        ctx.save_for_backward(logits, safe_target, lse, keep)
        ctx.smoothing = smoothing
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):  # type: ignore[override]
        logits, target, lse, keep = ctx.saved_tensors
        eps, vocab = ctx.smoothing, logits.size(-1)
        grad = torch.sub(logits, lse[:, None]).exp_()  # softmax, fp32 (N, V)
        if eps:
            grad.sub_(eps / vocab)
        grad.scatter_add_(1, target[:, None], grad.new_full((target.size(0), 1), -(1.0 - eps)))
        pad_rows = (~keep).nonzero().squeeze(1)
        if pad_rows.numel():
            grad.index_fill_(0, pad_rows, 0.0)
        grad.mul_(grad_loss)
        return grad.to(logits.dtype), None, None, None


def _logsumexp_fp32(logits: Tensor, rows: int = 1024) -> Tensor:
    """(N, V) -> (N,) fp32 log-sum-exp; reduced-precision logits are widened a block of rows at a time."""
    if logits.dtype == torch.float32:
        return torch.logsumexp(logits, dim=-1)
    return torch.cat([torch.logsumexp(block.float(), dim=-1) for block in logits.split(rows)])


def label_smoothed_nll(logits: Tensor, target: Tensor, pad_id: int, smoothing: float = 0.1) -> tuple[Tensor, Tensor]:
    """logits (B, T, V), target (B, T) -> (smoothed loss summed over non-pad tokens, plain NLL summed).

    The NLL (no smoothing) is what perplexity is computed from. Both are fp32, whatever the dtype of
    the logits; the NLL carries no gradient.
    """
    flat_logits = logits.reshape(-1, logits.size(-1))
    flat_target = target.reshape(-1)
    loss, nll = _SmoothedCrossEntropy.apply(flat_logits, flat_target, pad_id, float(smoothing))
    if smoothing == 0.0:
        return loss, loss.detach()
    return loss, nll
