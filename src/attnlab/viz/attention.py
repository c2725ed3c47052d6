"""Attention heatmaps: target tokens (rows) x source tokens (columns), one layer/head or averaged.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_attention(weights, row_tokens: Sequence[str], col_tokens: Sequence[str], path: str | Path,
                   title: str = "", xlabel: str = "source", ylabel: str = "target") -> Path:
    """weights: (len(row_tokens), len(col_tokens)) array-like; writes a PNG and returns its path."""
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != (len(row_tokens), len(col_tokens)):
        raise ValueError(f"weights of shape {w.shape} do not match {len(row_tokens)} x {len(col_tokens)} tokens")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig_w = max(4.0, 0.45 * len(col_tokens) + 2)
    fig_h = max(3.0, 0.4 * len(row_tokens) + 1.5)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-6), aspect="auto")
    ax.set_xticks(range(len(col_tokens)), labels=list(col_tokens), rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(len(row_tokens)), labels=list(row_tokens), fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
