"""Training configuration (saved in RUN/config.json).

Place in the layering: training; imports only from data and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

SCHEDULES = ("inverse_sqrt", "budget", "auto")  # learning-rate schedules (training/schedule.py)


@dataclass
class TrainConfig:
    max_tokens: int = 4096  # padded tokens per batch (per process)
    accum_steps: int = 1  # gradient accumulation: batches per optimizer step
    lr_scale: float = 1.0  # multiplies the paper's schedule d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
    warmup_steps: int = 4000
    lr_schedule: str = "inverse_sqrt"  # the paper's; "budget": decay to 0 at the budget's end; "auto" (training/schedule.py)
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
    decode_tuning_sentences: int = 500  # at the end, beam and length penalty chosen on this many of the
    # eval_bleu_sentences validation sentences (0 = off; attnlab.pipelines.decode_tuning)
    patience: int = 0  # stop after this many validations without improvement (0 = never)
    keep_last: int = 3  # checkpoints kept on disk
    average_last: int = 0  # at the end, average the last k checkpoints into the final model (0 = off)
    seed: int = 1
    log_every: int = 50
    max_len: int = 256  # training examples are truncated to this many tokens
    threads: int = 0  # torch.set_num_threads (0 = leave the default)

    def __post_init__(self) -> None:
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"amp must be auto, bf16, fp16 or none, got {self.amp!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be inverse_sqrt, budget or auto, got {self.lr_schedule!r}")
        if self.lr_schedule == "budget" and not self.has_budget:
            raise ValueError("lr_schedule budget decays to zero at the budget's end: give max_steps, max_minutes "
                             "or max_epochs")
        for name, low, high in _RANGES:  # "(0" = above 0; high is exclusive
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int if name in _INTS else (int, float)):
                raise ValueError(f"training setting {name} must be {'an integer' if name in _INTS else 'a number'}, "
                                 f"got {value!r}")
            above = low == "(0"
            lowest = 0 if above else low
            ok = math.isfinite(value) and (value > lowest if above else value >= lowest) and (high is None or value < high)
            if not ok:
                need = ("> 0" if above else f">= {low}") + (f" and < {high}" if high is not None else "")
                raise ValueError(f"training setting {name} must be {need}, got {value!r}")

    @property
    def has_budget(self) -> bool:
        return bool(self.max_steps or self.max_minutes or self.max_epochs)

    def budget_schedule(self) -> bool:
        """Whether the learning rate decays to zero at the end of the budget (training/schedule.py)."""
        return self.lr_schedule == "budget" or (self.lr_schedule == "auto" and self.has_budget)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# (name, lowest allowed or "(0" for above zero, exclusive upper bound or None)
_RANGES: list[tuple[str, Any, Any]] = [("max_tokens", 1, None), ("accum_steps", 1, None), ("lr_scale", "(0", None), ("warmup_steps", 1, None),
           ("adam_beta1", 0, 1), ("adam_beta2", 0, 1), ("adam_eps", "(0", None), ("weight_decay", 0, None),
           ("label_smoothing", 0, 1), ("clip_norm", 0, None), ("max_steps", 0, None), ("max_epochs", 0, None),
           ("max_minutes", 0, None), ("eval_every", 1, None), ("eval_bleu_sentences", 0, None), ("eval_beam", 1, None),
           ("decode_tuning_sentences", 0, None),
           ("patience", 0, None), ("keep_last", 0, None), ("average_last", 0, None), ("seed", 0, 2**63),
           ("log_every", 1, None), ("max_len", 3, None), ("threads", 0, None)]
_INTS = {f.name for f in dataclasses.fields(TrainConfig) if f.type == "int"}


def coerce(value: str, current: Any) -> Any:
    """Parse a `--set key=value` string to the type of the current value."""
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        if value.lower() == "none":  # an optional id switched off (e.g. model.zero_start_id)
            return None
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if isinstance(current, float):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    if current is None:
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
        return None if value.lower() == "none" else value
    return value


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def apply_overrides(train_cfg: TrainConfig, model_values: dict[str, Any], overrides: dict[str, str],
                    model_fields: set[str]) -> TrainConfig:
    train_values = train_cfg.to_dict()
    for key, value in overrides.items():
        if key.startswith("model."):
            key = key[6:]
            target = "model"
        elif key.startswith("train."):
            key = key[6:]
            target = "train"
        else:
            target = "train" if key in train_values else "model" if key in model_fields else None
        if target == "train" and key in train_values:
            dest = train_values
        elif target == "model" and key in model_fields:
            dest = model_values
        else:
            raise ValueError(f"--set {key}: no such training or model setting")
        try:
            dest[key] = coerce(value, dest.get(key))
        except ValueError as err:
            raise ValueError(f"--set {key}={value}: {err}") from None
    return TrainConfig.from_dict(train_values)
