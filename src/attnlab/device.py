"""`--device` values checked up front: a clear one-line error instead of torch's assertion deep inside.

Place in the layering: io, the lowest part; imports nothing from attnlab (tests/test_layering.py).
"""
from __future__ import annotations

import torch

KINDS = ("cpu", "cuda", "mps")


def parse_device(name: str | None) -> torch.device:
    """cpu | cuda | cuda:N | mps, or None for cuda when available else cpu."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {name!r}: not a device; use cpu, cuda or cuda:N") from None
    if device.type not in KINDS:
        raise ValueError(f"--device {name!r}: attnlab runs on cpu, cuda or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here (use --device cpu)")
    return device
