"""attnlab -> ONNX: onnxruntime gives PyTorch's encoder outputs, step logits and greedy tokens."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from required import require_module

ort = require_module("onnxruntime")
require_module("onnxscript")  # torch.onnx.export(dynamo=True) needs it

from attnlab.decoding import greedy  # noqa: E402
from attnlab.export import OnnxTranslator, export_onnx  # noqa: E402
from export_helpers import BOS, EOS, PAD, make_batch, trained_model  # noqa: E402

ATOL = 1e-4
# Exporting is the slow part (seconds a graph), so two configurations. The wrappers call the model's
# own modules whatever the embedding sharing; "gelu-untied" has separate vocabularies, an untied
# output projection, gelu and 1 encoder / 2 decoder layers (a mix-up of the two would show);
# "prenorm-learned" is what Marian refuses: pre-norm with final LayerNorms, learned positions, no biases.
ONNX_CONFIGS = ["gelu-untied", "prenorm-learned"]


@pytest.fixture(scope="module", params=ONNX_CONFIGS)
def exported(request, tmp_path_factory):
    model = trained_model(request.param)
    out = tmp_path_factory.mktemp(f"onnx-{request.param}")
    export_onnx(model, out, model_card={"data": "reversal task", "bleu": 0.0}, bos_id=BOS, eos_id=EOS)
    return model, OnnxTranslator(out, threads=1), out


def test_encoder_matches(exported):
    model, translator, _ = exported
    src, _ = make_batch(model, b=3, s=9)  # not the export's example sizes: the axes are dynamic
    encoded = translator.encode(src.numpy())
    with torch.no_grad():
        memory = model.encode(src)
        kv = [t for layer in model.decoder.layers for t in layer.cross_attn.project_kv(memory)]
    np.testing.assert_array_equal(encoded["src_mask"], (src != PAD).numpy())
    np.testing.assert_allclose(encoded["memory"], memory.numpy(), atol=ATOL, rtol=0)
    for i, ref in enumerate(kv):
        name = f"cross_{'kv'[i % 2]}_{i // 2}"
        np.testing.assert_allclose(encoded[name], ref.numpy(), atol=ATOL, rtol=0)


def test_decoder_steps_match(exported):
    """Teacher-forced: step t of the ONNX decoder (with its cache) gives the logits of
    model(src, tgt)[:, t], the whole-prefix forward pass."""
    model, translator, _ = exported
    src, tgt = make_batch(model, t=7)
    with torch.no_grad():
        reference = model(src, tgt)  # (B, T, V)
    encoded = translator.encode(src.numpy())
    cache = translator.empty_cache(src.size(0))
    for t in range(tgt.size(1)):
        logits, cache = translator.step(tgt[:, t:t + 1].numpy(), t, encoded, cache)
        np.testing.assert_allclose(logits, reference[:, t].numpy(), atol=ATOL, rtol=0, err_msg=f"step {t}")
        assert cache["past_k_0"].shape == (src.size(0), model.cfg.n_heads, t + 1, model.cfg.head_dim)


@pytest.mark.parametrize("rows", [3, 1])
def test_greedy_matches_attnlab(exported, rows):
    model, translator, _ = exported
    src, _ = make_batch(model)
    src = src[:rows]
    ours = greedy(model, src, 10, BOS, EOS)
    theirs = translator.greedy(src.numpy(), 10, BOS, EOS)
    assert theirs.tolist() == ours.tolist()
    assert len(set(ours.flatten().tolist())) > 2, ours  # a model that repeats one token tests little


def test_files(exported):
    model, _, out = exported
    meta = json.loads((out / "attnlab_onnx.json").read_text())
    assert meta["n_layers"] == model.cfg.decoder_layers and meta["eos_id"] == EOS
    assert "| Training data | reversal task |" in (out / "README.md").read_text()
    import onnx

    for name in ("encoder.onnx", "decoder_step.onnx"):
        onnx.checker.check_model(str(out / name))
