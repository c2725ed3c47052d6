"""Image encoders that turn a picture into a grid of region features, the "annotation vectors"
a_1..a_L of Show, Attend and Tell (Xu et al. 2015, section 3.1.1).

- `CNNRegionEncoder`: a small convolutional network trained from scratch (no download): 3 x 3
  stride-2 convolutions halve the picture until it is `grid_size` x `grid_size`; each cell's feature
  vector describes one region of the image. The receptive field stays small (15 pixels for three
  stages), so a cell describes its own region and not the whole picture, which is what lets attention
  over cells mean "where the model looks".
- `TorchvisionRegionEncoder`: a torchvision ResNet's last convolutional feature map (optionally
  with ImageNet weights, downloaded by torchvision), pooled to the grid. torchvision is an optional
  dependency; it is imported only when asked for.
Both map (B, 3, H, W) -> (B, grid_size * grid_size, d_feature), regions in row-major order.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

BACKBONES = ("scratch", "resnet18", "resnet34", "resnet50")


def conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class CNNRegionEncoder(nn.Module):
    def __init__(self, image_size: int, grid_size: int, d_feature: int, channels: int = 32):
        super().__init__()
        n_down = math.log2(image_size / grid_size) if image_size >= grid_size else -1
        if n_down < 0 or n_down != int(n_down):
            raise ValueError(f"image_size / grid_size must be a power of two (the CNN halves the picture per "
                             f"stage), got {image_size} / {grid_size}")
        # the stem already halves the picture (most of a CNN's cost is at full resolution)
        layers: list[nn.Module] = [conv_block(3, channels, 2 if n_down >= 1 else 1)]
        c = channels
        for _ in range(max(int(n_down) - 1, 0)):
            c_out = min(2 * c, d_feature)
            layers.append(conv_block(c, c_out, 2))
            c = c_out
        layers.append(nn.Conv2d(c, d_feature, 1))
        self.net = nn.Sequential(*layers)
        self.grid_shape = (grid_size, grid_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).flatten(2).transpose(1, 2)  # (B, d_feature, g, g) -> (B, g*g, d_feature)


class TorchvisionRegionEncoder(nn.Module):
    """A ResNet without its pooling and classifier; its feature map is pooled to grid x grid and
    projected to d_feature. With `freeze`, the backbone's weights stay fixed (and in eval mode)."""

    def __init__(self, name: str, grid_size: int, d_feature: int, pretrained: bool = False, freeze: bool = True):
        super().__init__()
        try:
            import torchvision
        except ImportError:
            raise ValueError(f"backbone {name!r} needs torchvision (pip install torchvision); "
                             "backbone 'scratch' needs nothing") from None
        weights = "DEFAULT" if pretrained else None
        resnet = getattr(torchvision.models, name)(weights=weights)
        self.body = nn.Sequential(*list(resnet.children())[:-2])  # up to the last conv stage
        self.pool = nn.AdaptiveAvgPool2d(grid_size)
        self.proj = nn.Conv2d(resnet.fc.in_features, d_feature, 1)
        self.freeze = freeze
        if freeze:
            self.body.requires_grad_(False)
        self.grid_shape = (grid_size, grid_size)

    def train(self, mode: bool = True) -> "TorchvisionRegionEncoder":
        super().train(mode)
        if self.freeze:
            self.body.eval()  # keep the pretrained BatchNorm statistics
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(self.pool(self.body(images))).flatten(2).transpose(1, 2)


def region_encoder(backbone: str, image_size: int, grid_size: int, d_feature: int, channels: int = 32,
                   pretrained: bool = False, freeze: bool = True) -> nn.Module:
    if backbone == "scratch":
        return CNNRegionEncoder(image_size, grid_size, d_feature, channels)
    if backbone in BACKBONES:
        return TorchvisionRegionEncoder(backbone, grid_size, d_feature, pretrained, freeze)
    raise ValueError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
