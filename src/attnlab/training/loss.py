"""Label-smoothed cross-entropy (paper, section 5.4: epsilon_ls = 0.1), summed over real tokens.

The loss of one token with target y over a vocabulary of V, with log-probabilities log p = x - lse(x):

    (1 - eps) * (-log p_y) + eps / V * sum_j (-log p_j)  =  lse(x) - (1 - eps) x_y - eps * mean_j x_j

(the definition of F.cross_entropy(label_smoothing=eps)). It is computed in one fused function: a
log-sum-exp per row in fp32 (bf16 logits are widened a block of rows at a time, never copied to fp32 whole), and a
backward that writes (softmax(x) - (1 - eps) onehot(y) - eps / V) * grad straight from the saved
logits, instead of materialising fp32 log-probabilities twice (smoothed loss and plain NLL).

Place in the layering: training; imports only from data and the parts below it (tests/test_layering.py).
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
        acc = torch.promote_types(logits.dtype, torch.float32)  # fp32 (fp64 for fp64 logits: gradcheck)
        lse = _logsumexp_fp32(logits)
        target_logit = logits.gather(1, safe_target[:, None]).squeeze(1).to(acc)
        nll = ((lse - target_logit) * keep).sum()
        loss = nll.clone()  # a separate output: nll carries no gradient
        if smoothing:
            mean_logit = logits.sum(dim=-1, dtype=acc) / logits.size(-1)
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
    """(N, V) -> (N,) fp32 (fp64 for fp64) log-sum-exp; reduced-precision logits are widened a block of rows at a time."""
    if logits.dtype in (torch.float32, torch.float64):
        return torch.logsumexp(logits, dim=-1)
    return torch.cat([torch.logsumexp(block.float(), dim=-1) for block in logits.split(rows)])


def label_smoothed_nll(logits: Tensor, target: Tensor, pad_id: int, smoothing: float = 0.1) -> tuple[Tensor, Tensor]:
    """logits (B, T, V), target (B, T) -> (smoothed loss summed over non-pad tokens, plain NLL summed).

    The NLL (no smoothing) is what perplexity is computed from. Both are fp32 (fp64 for fp64 logits), whatever the dtype of
    the logits; the NLL carries no gradient.
    """
    flat_logits = logits.reshape(-1, logits.size(-1))
    flat_target = target.reshape(-1)
    loss, nll = _SmoothedCrossEntropy.apply(flat_logits, flat_target, pad_id, float(smoothing))
    if smoothing == 0.0:
        return loss, loss.detach()
    return loss, nll


class _ProjectedSmoothedCrossEntropy(torch.autograd.Function):
    """The output projection and the loss in one pass over blocks of rows (CPU, fp32 training).

    For each block of rows the logits z = h W^T are computed, turned into the loss and at once into
    their gradient (softmax(z) - (1 - eps) onehot(y) - eps / V), which is multiplied back into dL/dh
    and accumulated into dL/dW; the block's logits are then dropped. The (N, V) logits and their
    gradient never exist whole: they are the largest tensors of a small translator's training step
    (N x 8,000 floats, written and read several times), while a block of them stays within the last-level
    cache. Blocks hold ~32 MB of logits (~1,000 rows at V = 8,000): smaller ones fit lower caches but make
    the three V x d_model matmuls less efficient (2-core AMD EPYC, 1,145 rows, d_model 512, forward +
    backward: 8 MB blocks 238 ms, 32 MB 189 ms; at d_model 256 no difference).
    Backward only scales the gradients computed here by the incoming gradient. Same values as
    `label_smoothed_nll(F.linear(h, W), ...)` up to float rounding.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, pad_id: int, smoothing: float,
                block_rows: int):  # type: ignore[override]
        n, vocab = hidden.size(0), weight.size(0)
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_grad else None
        grad_weight = (torch.empty_like(weight) if n else torch.zeros_like(weight)) if want_grad else None  # the first block writes it
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 (fp64 for fp64 inputs)
        nll = hidden.new_zeros((), dtype=acc)
        smooth = hidden.new_zeros((), dtype=acc)
        eps = smoothing
        for start in range(0, n, block_rows):
            h = hidden[start:start + block_rows]
            y = target[start:start + block_rows]
            keep = y != pad_id
            safe_y = y.masked_fill(~keep, 0)
            z = torch.mm(h, weight.t()).to(acc)  # (b, V) logits of this block
            target_logit = z.gather(1, safe_y[:, None]).squeeze(1)
            mean_logit = z.sum(dim=-1) / vocab if eps else None
            top = z.amax(dim=-1, keepdim=True)
            z.sub_(top).exp_()
            total = z.sum(dim=-1, keepdim=True)
            lse = (top + total.log()).squeeze(1)
            nll += ((lse - target_logit) * keep).sum()
            if eps:
                smooth += ((lse - mean_logit) * keep).sum()
            if want_grad:
                z.div_(total)  # softmax
                if eps:
                    z.sub_(eps / vocab)
                z.scatter_add_(1, safe_y[:, None], z.new_full((y.size(0), 1), -(1.0 - eps)))
                if not bool(keep.all()):
                    z.mul_(keep[:, None])
                g = z.to(hidden.dtype)
                torch.mm(g, weight, out=grad_hidden[start:start + block_rows])
                if start == 0:
                    torch.mm(g.t(), h, out=grad_weight)
                else:
                    grad_weight.addmm_(g.t(), h)
        loss = (1.0 - eps) * nll + eps * smooth if eps else nll.clone()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):  # type: ignore[override]
        # The gradients were computed in forward for an incoming gradient of 1; they are scaled in place
        # (no second V x d_model weight gradient in fresh memory), so a second backward through a
        # retained graph is refused by autograd's check of the saved tensors' versions.
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden.mul_(grad_loss) if ctx.needs_input_grad[0] else None
        gw = grad_weight.mul_(grad_loss) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None


def projected_label_smoothed_nll(hidden: Tensor, weight: Tensor, target: Tensor, pad_id: int,
                                 smoothing: float = 0.1, block_bytes: int = 32 << 20) -> tuple[Tensor, Tensor]:
    """label_smoothed_nll(F.linear(hidden, weight), target, ...) without the (N, V) logits:
    hidden (N, d_model), weight (V, d_model) (the output projection, no bias), target (N,).
    Blocks of equal numbers of rows whose logits fill at most about `block_bytes`."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.size(1) != weight.size(1) or target.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden (N, d), weight (V, d), target (N,); got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(target.shape)}")
    max_rows = max(16, block_bytes // (4 * weight.size(0)))
    n_blocks = max(1, -(-hidden.size(0) // max_rows))
    block_rows = max(1, -(-hidden.size(0) // n_blocks))  # equal blocks: no small, slow last matmul
    return _ProjectedSmoothedCrossEntropy.apply(hidden, weight, target, pad_id, float(smoothing), block_rows)
