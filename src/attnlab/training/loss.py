"""Label-smoothed cross-entropy (paper, section 5.4: epsilon_ls = 0.1), summed over real tokens."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def label_smoothed_nll(logits: Tensor, target: Tensor, pad_id: int, smoothing: float = 0.1) -> tuple[Tensor, Tensor]:
    """logits (B, T, V), target (B, T) -> (smoothed loss summed over non-pad tokens, plain NLL summed).

    The NLL (no smoothing) is what perplexity is computed from.
    """
    flat_logits = logits.reshape(-1, logits.size(-1)).float()
    flat_target = target.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_target, ignore_index=pad_id, label_smoothing=smoothing, reduction="sum")
    if smoothing == 0.0:
        return loss, loss.detach()
    nll = F.cross_entropy(flat_logits.detach(), flat_target, ignore_index=pad_id, reduction="sum")
    return loss, nll
