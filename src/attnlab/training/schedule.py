"""Learning-rate schedule of the paper (section 5.3):

    lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)

i.e. linear warm-up for `warmup_steps`, then decay with the inverse square root of the step.
`scale` multiplies the whole curve (the Annotated Transformer's `factor`).

Place in the layering: training; imports only from data and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import torch


def inverse_sqrt_lr(step: int, d_model: int, warmup_steps: int, scale: float = 1.0) -> float:
    step = max(step, 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def peak_lr(d_model: int, warmup_steps: int, scale: float = 1.0) -> float:
    return inverse_sqrt_lr(warmup_steps, d_model, warmup_steps, scale)


def inverse_sqrt_schedule(
    optimizer: torch.optim.Optimizer, d_model: int, warmup_steps: int, scale: float = 1.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over an optimizer whose base lr is 1.0 (the lambda gives the absolute rate)."""
    for group in optimizer.param_groups:
        group["lr"] = 1.0
        group["initial_lr"] = 1.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: inverse_sqrt_lr(step + 1, d_model, warmup_steps, scale)
    )
