"""Export an attnlab Transformer to ONNX as two graphs, and decode with onnxruntime alone.

    encoder.onnx       src (B, S) int64
                       -> memory (B, S, d_model), src_mask (B, S) bool,
                          cross_k_i, cross_v_i (B, H, S, d_k) for every decoder layer i
    decoder_step.onnx  token (B, 1) int64, position () int64, src_mask (B, S) bool,
                       cross_k_i, cross_v_i, past_k_i, past_v_i (B, H, t, d_k)
                       -> logits (B, V), present_k_i, present_v_i (B, H, t + 1, d_k)

One decoder step is the protocol's `decode_step` with a cache: embed the newest token at its
position, append its self-attention key/value to the cache, attend over everything cached (no
mask is needed: a step never sees the future), attend over the encoder keys/values computed once.
At the first step the caches are empty (t = 0). Batch, source length and cache length are dynamic.

The graphs are traced from wrapper modules (`OnnxEncoder`, `OnnxDecoderStep`) that call the
model's own sub-modules (embeddings, MultiHeadAttention, AddNorm, feed-forward, output
projection) and differ from `Transformer.encode` / `decode_step` only where those use Python
state a graph cannot hold: token-id checks (`int(src.max())`), the `KVCache` object written in
place at a Python int position, and the position table that grows on demand. Here positions are
read from a fixed table of `max_positions` rows (the model's max_len; sinusoidal or learned) and
the cache is a pair of tensors in, a pair out.

Exporter: torch.onnx.export(dynamo=True) (torch.export + onnxscript), the default since torch 2.9
and the one maintained; the TorchScript exporter (dynamo=False) is deprecated.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attnlab.export.card import save_tokenizer, write_model_card
from attnlab.export.hf import special_ids
from attnlab.layers.embedding import LearnedPositionalEncoding, SinusoidalPositionalEncoding, sinusoidal_table
from attnlab.models.transformer import Transformer

ENCODER_FILE, DECODER_FILE, META_FILE = "encoder.onnx", "decoder_step.onnx", "attnlab_onnx.json"
OPSET = 18


def _position_table(module: nn.Module, d_model: int, length: int) -> Tensor | None:
    """The (length, d_model) table the positional module adds, or None for no positions."""
    if isinstance(module, SinusoidalPositionalEncoding):
        return sinusoidal_table(length, d_model)
    if isinstance(module, LearnedPositionalEncoding):
        return module.embedding.weight.detach()[:length]
    return None


class OnnxEncoder(nn.Module):
    """src (B, S) -> memory, src_mask (B, S), and every decoder layer's cross-attention keys/values."""

    def __init__(self, model: Transformer, max_positions: int):
        super().__init__()
        self.model = model
        table = _position_table(model.src_positions, model.cfg.d_model, max_positions)
        self.register_buffer("positions", table, persistent=False)

    def forward(self, src: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        src_mask = src != m.pad_id  # (B, S)
        x = m.input_embedding(src)  # (B, S, d_model)
        if self.positions is not None:
            x = x + self.positions[: src.size(1)]
        memory, _ = m.encoder(x, src_mask[:, None, None, :])
        kv = []
        for layer in m.decoder.layers:
            kv.extend(layer.cross_attn.project_kv(memory))  # 2 x (B, H, S, d_k)
        return (memory, src_mask, *kv)


class OnnxDecoderStep(nn.Module):
    """One cached decoder step: (token, position, src_mask, cross K/V, past K/V) -> (logits, present K/V)."""

    def __init__(self, model: Transformer, max_positions: int):
        super().__init__()
        self.model = model
        self.n_layers = len(model.decoder.layers)
        table = _position_table(model.tgt_positions, model.cfg.d_model, max_positions)
        self.register_buffer("positions", table, persistent=False)

    def forward(self, token: Tensor, position: Tensor, src_mask: Tensor, *caches: Tensor) -> tuple[Tensor, ...]:
        # token (B, 1); position () int64; src_mask (B, S) bool
        # caches: cross_k_0, cross_v_0, ..., then past_k_0, past_v_0, ... each (B, H, *, d_k)
        m, n = self.model, self.n_layers
        cross, past = caches[: 2 * n], caches[2 * n:]
        x = m.output_embedding(token)  # (B, 1, d_model)
        if self.positions is not None:
            x = x + self.positions[position]  # (d_model,) broadcast over B and the one step
        key_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        present = []
        for i, layer in enumerate(m.decoder.layers):

            def self_attend(h: Tensor, i: int = i, layer: nn.Module = layer) -> Tensor:
                k_new, v_new = layer.self_attn.project_kv(h)  # keys/values of the new token (B, H, 1, d_k)
                k = torch.cat([past[2 * i], k_new], dim=2)
                v = torch.cat([past[2 * i + 1], v_new], dim=2)
                present.extend((k, v))
                # attention over the given keys/values: Q from h, K/V = the whole cache, no mask
                return layer.self_attn(h, memory_kv=(k, v))[0]

            def cross_attend(h: Tensor, i: int = i, layer: nn.Module = layer) -> Tensor:
                return layer.cross_attn(h, mask=key_mask, memory_kv=(cross[2 * i], cross[2 * i + 1]))[0]

            add_norms = (layer.add_norm1, layer.add_norm2, layer.add_norm3)
            x = layer.block(x, self_attend, cross_attend, layer.ffn, add_norms)  # DecoderLayer's one definition
        h = m.decoder.final_norm(x)
        logits = m.output_projection(h[:, -1])  # (B, V)
        return (logits, *present)


def _names(n_layers: int) -> dict[str, list[str]]:
    cross = [f"cross_{kv}_{i}" for i in range(n_layers) for kv in ("k", "v")]
    past = [f"past_{kv}_{i}" for i in range(n_layers) for kv in ("k", "v")]
    present = [f"present_{kv}_{i}" for i in range(n_layers) for kv in ("k", "v")]
    return {
        "encoder_inputs": ["src"], "encoder_outputs": ["memory", "src_mask", *cross],
        "decoder_inputs": ["token", "position", "src_mask", *cross, *past],
        "decoder_outputs": ["logits", *present],
    }


def export_onnx(
    model: Transformer,
    out_dir: str | Path,
    tokenizer: Any = None,
    model_card: dict[str, Any] | None = None,
    *,
    max_positions: int | None = None,
    bos_id: int | None = None,
    eos_id: int | None = None,
    opset: int = OPSET,
) -> Path:
    """Write encoder.onnx, decoder_step.onnx, attnlab_onnx.json (names, sizes, special ids), a
    model card README.md and, when given, the tokenizer (anything with `save(directory)`) to
    `out_dir`. Weights are exported in float32. Target positions (and source lengths) are limited
    to `max_positions` (default: the model's max_len). BOS/EOS ids come from the arguments, else the
    tokenizer, else attnlab's fixed 1 and 2. The intended CLI: `attnlab export --model RUN --format onnx --out DIR`."""
    if not isinstance(model, Transformer):
        raise TypeError(f"export_onnx exports attnlab's Transformer, got {type(model).__name__}")
    cfg = model.cfg
    max_positions = int(max_positions or cfg.max_len)
    if cfg.positional == "learned" and max_positions > cfg.max_len:
        raise ValueError(f"max_positions {max_positions} exceeds the {cfg.max_len} learned positions")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, h, dk = cfg.decoder_layers, cfg.n_heads, cfg.head_dim
    names = _names(n)

    was_training, device, dtype = model.training, next(model.parameters()).device, next(model.parameters()).dtype
    model = model.float().cpu().eval()
    try:
        encoder = OnnxEncoder(model, max_positions).eval()
        step = OnnxDecoderStep(model, max_positions).eval()
        # example inputs: sizes >= 2 everywhere, so that torch.export keeps every axis symbolic
        b, s, t = 2, 5, 3
        src = torch.randint(0, cfg.src_vocab_size, (b, s))
        src[:, 0] = (cfg.pad_id + 1) % cfg.src_vocab_size  # at least one real token per row
        batch, src_len, cache_len = (torch.export.Dim(x) for x in ("batch", "src_len", "cache_len"))

        with torch.no_grad():
            outs = encoder(src)
        _export(encoder, (src,), out_dir / ENCODER_FILE, names["encoder_inputs"], names["encoder_outputs"],
                ({0: batch, 1: src_len},), opset)

        token = torch.randint(0, cfg.tgt_vocab_size, (b, 1))
        position = torch.tensor(t, dtype=torch.long)
        past = [torch.randn(b, h, t, dk) for _ in range(2 * n)]
        args = (token, position, outs[1], *outs[2:], *past)
        shapes = ({0: batch}, None, {0: batch, 1: src_len},  # *caches is one argument to torch.export
                  tuple([{0: batch, 2: src_len}] * (2 * n) + [{0: batch, 2: cache_len}] * (2 * n)))
        _export(step, args, out_dir / DECODER_FILE, names["decoder_inputs"], names["decoder_outputs"],
                shapes, opset)
    finally:
        model.to(device=device, dtype=dtype).train(was_training)

    bos, eos = special_ids(tokenizer, bos_id, eos_id)
    tokenizer_files = save_tokenizer(tokenizer, out_dir, max_positions) if tokenizer is not None else []
    meta = {
        "format": "attnlab-onnx", "version": 1, "opset": opset, "exporter": "torch.onnx.export(dynamo=True)",
        "torch": torch.__version__, "pad_id": cfg.pad_id, "bos_id": bos, "eos_id": eos,
        "n_layers": n, "n_heads": h, "head_dim": dk, "d_model": cfg.d_model,
        "src_vocab_size": cfg.src_vocab_size, "tgt_vocab_size": cfg.tgt_vocab_size,
        "max_positions": max_positions, "tokenizer_files": tokenizer_files, "config": cfg.to_dict(), **names,
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    write_model_card(
        out_dir, cfg, "onnx", {"pad": cfg.pad_id, "bos": bos, "eos": eos},
        "```python\nfrom attnlab.export import OnnxTranslator\n"
        f"translator = OnnxTranslator(\"{out_dir.name}\")  # onnxruntime and numpy only\n"
        f"tokens = translator.greedy(src, max_len=128)  # src: (B, S) int64 ids ending with </s>={eos}\n```\n\n"
        "Graphs: `encoder.onnx` (src -> memory, src_mask, cross_k_i/cross_v_i) and `decoder_step.onnx` "
        "(token, position, src_mask, cross K/V, past_k_i/past_v_i -> logits, present_k_i/present_v_i); "
        "inputs and outputs are listed in `attnlab_onnx.json`.",
        model_card,
        notes=[f"Target positions are read from a table of {max_positions} rows: outputs are at most "
               f"{max_positions} tokens long."],
    )
    return out_dir


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            dynamic_shapes: tuple, opset: int) -> None:
    import logging
    import warnings

    # the exporter's chatter: deprecated torch.export internals, "torchvision is not installed"
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=input_names, output_names=output_names,
                dynamic_shapes=dynamic_shapes, opset_version=opset, external_data=False, verbose=False,
            )
    finally:
        registry_log.setLevel(level)
    program.save(str(path), external_data=False)


class OnnxTranslator:
    """Greedy decoding with onnxruntime and numpy only, the same algorithm as attnlab.decoding.greedy."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        meta_file = path / META_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path}: no {META_FILE} (not a directory written by attnlab export_onnx)")
        self.meta = json.loads(meta_file.read_text())
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = providers or ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(path / ENCODER_FILE), options, providers=providers)
        self.decoder = ort.InferenceSession(str(path / DECODER_FILE), options, providers=providers)
        self.pad_id = int(self.meta["pad_id"])

    def encode(self, src: Any) -> dict[str, np.ndarray]:
        """src (B, S) ids -> {"memory", "src_mask", "cross_k_0", ...}."""
        src = np.ascontiguousarray(np.asarray(src, dtype=np.int64))
        if src.ndim != 2 or src.shape[1] > self.meta["max_positions"]:
            raise ValueError(f"src must be (batch, length <= {self.meta['max_positions']}), got shape {src.shape}")
        outs = self.encoder.run(None, {"src": src})
        return dict(zip(self.meta["encoder_outputs"], outs))

    def empty_cache(self, batch_size: int) -> dict[str, np.ndarray]:
        m = self.meta
        shape = (batch_size, m["n_heads"], 0, m["head_dim"])
        return {f"past_{kv}_{i}": np.zeros(shape, np.float32) for i in range(m["n_layers"]) for kv in ("k", "v")}

    def step(self, token: np.ndarray, position: int, encoded: dict[str, np.ndarray],
             cache: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One decoder step: token (B, 1) at `position` -> logits (B, V) and the grown cache."""
        feed = {"token": np.ascontiguousarray(token, dtype=np.int64),
                "position": np.array(position, dtype=np.int64), "src_mask": encoded["src_mask"]}
        feed.update({k: v for k, v in encoded.items() if k.startswith("cross_")})
        feed.update(cache)
        logits, *present = self.decoder.run(None, feed)
        return logits, {name.replace("present_", "past_"): value
                        for name, value in zip(self.meta["decoder_outputs"][1:], present)}

    def greedy(self, src: Any, max_len: int, bos: int | None = None, eos: int | None = None) -> np.ndarray:
        """src (B, S) -> tokens (B, T <= max_len) without BOS; each row ends at its EOS (included) and
        is padded with pad_id after it, exactly as attnlab.decoding.greedy."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if max_len > self.meta["max_positions"]:
            raise ValueError(f"max_len {max_len} exceeds the exported position table ({self.meta['max_positions']})")
        bos = self.meta["bos_id"] if bos is None else bos
        eos = self.meta["eos_id"] if eos is None else eos
        encoded = self.encode(src)
        b = encoded["memory"].shape[0]
        cache = self.empty_cache(b)
        tokens = np.full((b, 1), bos, dtype=np.int64)
        finished = np.zeros(b, dtype=bool)
        for pos in range(max_len):
            logits, cache = self.step(tokens[:, -1:], pos, encoded, cache)
            next_token = np.where(finished, self.pad_id, logits.argmax(axis=-1))
            tokens = np.concatenate([tokens, next_token[:, None]], axis=1)
            finished |= next_token == eos
            if finished.all():
                break
        return tokens[:, 1:]


__all__ = ["export_onnx", "OnnxTranslator", "OnnxEncoder", "OnnxDecoderStep"]
