"""Training configuration (saved in RUN/config.json)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class TrainConfig:
    max_tokens: int = 4096  # padded tokens per batch (per process)
    accum_steps: int = 1  # gradient accumulation: batches per optimizer step
    lr_scale: float = 1.0  # multiplies the paper's schedule d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
    warmup_steps: int = 4000
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0  # 0 = no clipping
    max_steps: int = 0  # 0 = no limit
    max_epochs: int = 0  # 0 = no limit
    max_minutes: float = 0.0  # time budget for the whole run, resumes included; 0 = none
    amp: str = "auto"  # auto | bf16 | fp16 | none
    eval_every: int = 500  # optimizer steps between validations (and checkpoints)
    eval_bleu_sentences: int = 500  # validation sentences decoded for BLEU (0 = loss only)
    eval_beam: int = 1
    patience: int = 0  # stop after this many validations without improvement (0 = never)
    keep_last: int = 3  # checkpoints kept on disk
    average_last: int = 0  # at the end, average the last k checkpoints into the final model (0 = off)
    seed: int = 1
    log_every: int = 50
    max_len: int = 256  # training examples are truncated to this many tokens
    threads: int = 0  # torch.set_num_threads (0 = leave the default)

    def __post_init__(self) -> None:
        if self.max_tokens <= 0 or self.accum_steps <= 0 or self.warmup_steps <= 0:
            raise ValueError("max_tokens, accum_steps and warmup_steps must be positive")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"amp must be auto, bf16, fp16 or none, got {self.amp!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def coerce(value: str, current: Any) -> Any:
    """Parse a `--set key=value` string to the type of the current value."""
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if current is None:
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
        return None if value.lower() == "none" else value
    return value
