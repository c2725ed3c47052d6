"""Fallbacks that normal runs never take: oneDNN kernels missing at run time, rows of a layer that has none,
an optional model family whose dependency is missing, and a captioning config with an unknown field."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from attnlab.layers import onednn
from attnlab.models import registry
from attnlab.models.captioning import SATConfig


def test_linear_on_other_modules_takes_no_rows():
    x = torch.randn(2, 4)
    with pytest.raises(TypeError, match="cannot take rows of a Identity"):
        onednn.linear(torch.nn.Identity(), x, rows=slice(0, 2))
    assert torch.equal(onednn.linear(torch.nn.Identity(), x, relu=True), x.relu())


def test_when_onednn_fails_at_run_time_linear_falls_back_for_good(monkeypatch):
    monkeypatch.setitem(onednn._state, "available", True)
    layer = torch.nn.Linear(8, 6)
    x = torch.randn(3, 8)

    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel in this build")

    monkeypatch.setattr(onednn, "_usable", lambda x, w: True)
    monkeypatch.setattr(onednn, "_packed", broken)
    with torch.no_grad():
        torch.testing.assert_close(onednn.linear(layer, x), F.linear(x, layer.weight, layer.bias))
    assert onednn._state["available"] is False
    monkeypatch.setitem(onednn._state, "available", True)
    monkeypatch.setattr(onednn, "_prepackable", lambda w: True)
    with torch.no_grad():
        step = onednn.prepacked(layer, relu=True)
        assert onednn._state["available"] is False  # said by prepacked itself, before any call
        torch.testing.assert_close(step(x), F.linear(x, layer.weight, layer.bias).relu())


def test_an_optional_family_is_skipped_only_when_its_own_module_is_missing(monkeypatch):
    real = importlib.import_module

    def missing(name, what):
        def fake(module, *args):
            if module == name:
                raise ModuleNotFoundError(f"No module named {what!r}", name=what)
            return real(module, *args)
        return fake

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(importlib, "import_module", missing("attnlab.models.rnn", "attnlab.models.rnn"))
    registry._load_builtin()  # not written yet: skipped
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(importlib, "import_module", missing("attnlab.models.rnn", "some_dependency"))
    with pytest.raises(ModuleNotFoundError, match="some_dependency"):
        registry._load_builtin()  # a dependency of an existing module: said, not hidden


def test_captioning_config_names_an_unknown_field():
    with pytest.raises(ValueError, match=r"unknown SATConfig fields: \['d_modle'\]"):
        SATConfig.from_dict({"d_modle": 256})
