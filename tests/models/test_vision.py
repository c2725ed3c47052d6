"""Region encoders: the scratch CNN, and the optional torchvision ResNet backbone (tested with a stand-in
torchvision module: the real one is an optional dependency, never needed by the tests)."""
import sys
import types

import pytest
import torch
from torch import nn

from attnlab.models.captioning import CaptionTransformer, CaptionTransformerConfig, SATConfig, ShowAttendTell
from attnlab.models.vision import CNNRegionEncoder


def test_scratch_cnn_gives_a_grid_of_regions_that_each_see_their_own_part():
    torch.manual_seed(0)
    enc = CNNRegionEncoder(64, 8, 32, channels=8).eval()
    x = torch.zeros(1, 3, 64, 64)
    out = enc(x)
    assert out.shape == (1, 64, 32) and enc.grid_shape == (8, 8)
    y = x.clone()
    y[..., 56:, 56:] = 1.0  # change the bottom-right 8 x 8 cell only
    changed = (enc(y) - out).abs().sum(-1).view(8, 8) > 1e-6
    assert changed[7, 7] and not changed[:5].any() and not changed[:, :5].any()  # a small receptive field


def _fake_resnet(calls: list, fail: Exception | None = None):
    def conv(c_in, c_out, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out))

    def resnet18(weights=None):
        calls.append(weights)
        if fail is not None and weights is not None:
            raise fail
        net = nn.Module()
        for name, module in [("conv1", nn.Conv2d(3, 4, 3, 2, 1)), ("bn1", nn.BatchNorm2d(4)), ("relu", nn.ReLU()),
                             ("maxpool", nn.MaxPool2d(3, 2, 1)), ("layer1", conv(4, 4, 1)), ("layer2", conv(4, 8, 2)),
                             ("layer3", conv(8, 16, 2)), ("layer4", conv(16, 32, 2)),
                             ("avgpool", nn.AdaptiveAvgPool2d(1)), ("fc", nn.Linear(32, 1000))]:
            net.add_module(name, module)
        return net

    return types.SimpleNamespace(models=types.SimpleNamespace(resnet18=resnet18))


@pytest.fixture
def fake_torchvision(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "torchvision", _fake_resnet(calls))
    return calls


@pytest.mark.parametrize("image_size, grid, channels", [(256, 8, 32), (224, 14, 16), (64, 8, 8)])
def test_pretrained_resnet_backbone_is_cut_at_the_stage_that_fits_the_grid(fake_torchvision, image_size, grid,
                                                                           channels):
    cfg = SATConfig.preset("test", vocab_size=20, image_size=image_size, grid_size=grid, backbone="resnet18",
                           pretrained=True)
    model = ShowAttendTell(cfg)
    assert fake_torchvision == ["DEFAULT"]  # torchvision was asked for its ImageNet weights
    enc = model.encoder
    assert enc.proj.in_channels == channels  # layer4 (stride 32), layer3 (16), layer2 (8)
    memory = model.encode(torch.randn(2, 3, image_size, image_size))
    assert memory.shape == (2, grid * grid, cfg.d_feature)
    model.train()
    assert not enc.body.training and enc.proj.training  # frozen backbone keeps its BatchNorm statistics
    assert not any(p.requires_grad for p in enc.body.parameters()) and enc.proj.weight.requires_grad


def test_unfrozen_backbone_and_the_transformer_captioner_on_resnet_regions(fake_torchvision):
    model = ShowAttendTell(SATConfig.preset("test", vocab_size=20, image_size=64, grid_size=4, backbone="resnet18",
                                            freeze_backbone=False))
    assert fake_torchvision == [None]  # pretrained=False: random weights, nothing downloaded
    model.train()
    assert model.encoder.body.training and all(p.requires_grad for p in model.encoder.body.parameters())
    ct = CaptionTransformer(CaptionTransformerConfig.preset("test", vocab_size=20, image_size=64, encoder="cnn",
                                                            grid_size=4, backbone="resnet18"))
    assert ct.grid_shape == (4, 4) and ct.encode(torch.randn(1, 3, 64, 64)).shape == (1, 16, 32)


def test_without_torchvision_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` raises ImportError
    with pytest.raises(ValueError, match=r"backbone 'resnet50' needs torchvision \(pip install torchvision") as info:
        ShowAttendTell(SATConfig.preset("test", vocab_size=20, backbone="resnet50", pretrained=True))
    assert "\n" not in str(info.value)
    ShowAttendTell(SATConfig.preset("test", vocab_size=20))  # the scratch CNN needs nothing


def test_weights_that_cannot_be_downloaded_are_a_one_line_error(monkeypatch):
    from urllib.error import URLError

    calls: list = []
    monkeypatch.setitem(sys.modules, "torchvision", _fake_resnet(calls, URLError("[Errno -3] no network")))
    with pytest.raises(ValueError, match="could not load the ImageNet weights of resnet18.*no network") as info:
        ShowAttendTell(SATConfig.preset("test", vocab_size=20, image_size=64, backbone="resnet18", pretrained=True))
    assert "\n" not in str(info.value) and "pretrained=false" in str(info.value)


def test_a_grid_too_fine_for_the_image_is_refused(fake_torchvision):
    with pytest.raises(ValueError, match="needs image_size >= 128"):
        ShowAttendTell(SATConfig.preset("test", vocab_size=20, image_size=64, grid_size=16, backbone="resnet18"))
