"""Where the captioner looked: the image once, then one panel per generated word with that word's
attention over the grid of regions, upsampled to the picture and drawn over it (Xu et al. 2015, Fig. 2).

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attnlab.data.images import denormalise  # noqa: E402


def upsample_attention(weights: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """weights (T, h * w) over row-major regions -> (T, H, W), smoothly upsampled, each map scaled to [0, 1]."""
    h, w = grid
    maps = weights.float().reshape(-1, 1, h, w)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-8)[:, None, None]
    return maps / peak


def plot_caption_attention(image: torch.Tensor, words: Sequence[str], weights: torch.Tensor,
                           grid: tuple[int, int], path: str | Path, title: str = "", columns: int = 5) -> Path:
    """image (3, H, W) normalised as by load_image; weights (len(words), h * w). Writes a PNG."""
    weights = torch.as_tensor(weights)
    if weights.dim() != 2 or weights.size(0) != len(words) or weights.size(1) != grid[0] * grid[1]:
        raise ValueError(f"weights of shape {tuple(weights.shape)} do not match {len(words)} words x "
                         f"{grid[0]}x{grid[1]} regions")
    picture = denormalise(image.detach().float().cpu()).permute(1, 2, 0).numpy()
    maps = upsample_attention(weights, grid, picture.shape[:2]).numpy()
    panels = len(words) + 1
    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title("image", fontsize=9)
    for i, word in enumerate(words):
        ax = axes.flat[i + 1]
        ax.imshow(picture)
        ax.imshow(maps[i], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
        ax.set_title(word, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
