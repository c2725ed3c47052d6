"""Learning-rate schedule of the paper (section 5.3):

    lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)

i.e. linear warm-up for `warmup_steps`, then decay with the inverse square root of the step.
`scale` multiplies the whole curve (the Annotated Transformer's `factor`).

`lr_schedule="budget"`, for runs with a budget (steps, minutes or epochs): the same linear warm-up to the
same peak, then a linear decay to zero at the end of the budget (Li et al. 2020, "Budgeted training"):

    lrate = peak * min(step / warmup_steps, 1) * (1 - progress),  progress = the budget's used fraction

A time budget makes the decay follow the clock, so a slower machine anneals over its fewer steps instead of
stopping at the peak rate. `"auto"` is the budget schedule when there is a budget, the paper's otherwise.

Place in the layering: training; imports only from data and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

from typing import Any, Callable

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


def budget_lr(step: int, progress: float, d_model: int, warmup_steps: int, scale: float = 1.0) -> float:
    step = max(step, 1)
    return peak_lr(d_model, warmup_steps, scale) * min(step / warmup_steps, 1.0) * max(1.0 - progress, 0.0)


class BudgetSchedule:
    """The budget schedule over an optimizer; `progress(steps)` gives the used fraction of the budget after
    that many optimizer steps (the trainer's, the same on every process). The interface the trainer and
    checkpoints use of LambdaLR's."""

    def __init__(self, optimizer: torch.optim.Optimizer, progress: Callable[[int], float], d_model: int,
                 warmup_steps: int, scale: float = 1.0):
        self.optimizer, self.progress = optimizer, progress
        self.d_model, self.warmup_steps, self.scale = d_model, warmup_steps, scale
        self.last_epoch = 0  # optimizer steps taken (LambdaLR's name)
        self._set(budget_lr(1, 0.0, d_model, warmup_steps, scale))

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr for _ in self.optimizer.param_groups]

    def step(self) -> None:
        self.last_epoch += 1
        self._set(budget_lr(self.last_epoch + 1, self.progress(self.last_epoch), self.d_model, self.warmup_steps,
                            self.scale))

    def get_last_lr(self) -> list[float]:
        return self._last_lr

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "_last_lr": self._last_lr, "schedule": "budget"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])
        self._set(float(state["_last_lr"][0]))
