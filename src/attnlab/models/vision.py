"""Image encoders that turn a picture into a grid of region features, the "annotation vectors"
a_1..a_L of Show, Attend and Tell (Xu et al. 2015, section 3.1.1).

- `CNNRegionEncoder`: a small convolutional network trained from scratch (no download): 3 x 3
  stride-2 convolutions halve the picture until it is `grid_size` x `grid_size`; each cell's feature
  vector describes one region of the image. The receptive field stays small (15 pixels for three
  stages), so a cell describes its own region and not the whole picture, which is what lets attention
  over cells mean "where the model looks".
- `TorchvisionRegionEncoder`: a torchvision ResNet's convolutional feature map (optionally with
  ImageNet weights, downloaded by torchvision), pooled to the grid. torchvision is an optional
  dependency, imported only when such a backbone is asked for; without it, a one-line error.
Both map (B, 3, H, W) -> (B, grid_size * grid_size, d_feature), regions in row-major order.

Place in the layering: models; imports only from layers and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import math

import torch
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


RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _resnet(name: str, pretrained: bool) -> nn.Module:
    """torchvision's ResNet `name`, with ImageNet weights when `pretrained`; one-line errors otherwise."""
    try:
        import torchvision
    except ImportError:
        raise ValueError(f"backbone {name!r} needs torchvision (pip install torchvision, the build that matches "
                         "your torch); backbone 'scratch' needs nothing") from None
    try:
        return getattr(torchvision.models, name)(weights="DEFAULT" if pretrained else None)
    except Exception as err:  # noqa: BLE001 - a download fails as URLError, RuntimeError (hash), OSError, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"could not load the ImageNet weights of {name} (torchvision downloads them once into "
                         f"~/.cache/torch/hub): {reason}; set pretrained=false or backbone=scratch") from None


class TorchvisionRegionEncoder(nn.Module):
    """A ResNet cut after the deepest stage whose map still has at least grid x grid cells (layer4 at
    stride 32, else layer3 at 16, else layer2 at 8: a 224-pixel image gives layer3's 14 x 14, the grid of
    the paper's VGG conv5_4), average-pooled to the grid and projected to d_feature by a 1 x 1 conv.
    With `freeze`, the backbone's weights stay fixed, and in eval mode (its BatchNorm statistics kept)."""

    def __init__(self, name: str, image_size: int, grid_size: int, d_feature: int, pretrained: bool = False,
                 freeze: bool = True):
        super().__init__()
        last = next((stage for stage, stride in (("layer4", 32), ("layer3", 16), ("layer2", 8))
                     if image_size // stride >= grid_size), None)
        if last is None:
            raise ValueError(f"a {grid_size} x {grid_size} grid needs image_size >= {8 * grid_size} for backbone "
                             f"{name!r} (its maps have a stride of 8 at least), got {image_size}")
        stages = dict(_resnet(name, pretrained).named_children())
        self.body = nn.Sequential(*[stages[s] for s in RESNET_STAGES[: RESNET_STAGES.index(last) + 1]])
        with torch.no_grad():
            channels = self.body.eval()(torch.zeros(1, 3, 64, 64)).size(1)
        self.pool = nn.AdaptiveAvgPool2d(grid_size)
        self.proj = nn.Conv2d(channels, d_feature, 1)
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
        return TorchvisionRegionEncoder(backbone, image_size, grid_size, d_feature, pretrained, freeze)
    raise ValueError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
