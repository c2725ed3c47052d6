"""Read a Hugging Face Marian directory into an attnlab Transformer: one that `attnlab export --format hf`
wrote, or a published opus-mt one (Helsinki-NLP/opus-mt-*, opus-mt-tc-*), with identical logits.

    model = load_marian(path)                 # attnlab Transformer in eval mode
    defaults = generation_defaults(path)      # how transformers' generate() decodes it

Marian is the paper's post-norm Transformer; every way it differs is read from config.json, and a
setting attnlab does not compute is refused with a one-line error naming it:

- activation_function: swish (= SiLU, opus-mt), gelu or relu -> TransformerConfig.activation;
- final_logits_bias -> a bias on the output projection (TransformerConfig.output_bias);
- scale_embedding (x sqrt(d_model)), share_encoder_decoder_embeddings (opus-mt-tc-big models have separate
  source and target vocabularies), tie_word_embeddings;
- the positions: Marian's sinusoids are not interleaved (all sines, then all cosines); the weights' hidden
  dimension is permuted so that attnlab's interleaved table computes the same function
  (attnlab.export.hf.marian_permutation);
- decoding: the decoder starts from decoder_start_token_id (the pad id in opus-mt), pad is never generated
  (bad_words_ids), a hypothesis cut at max_length ends with forced_eos_token_id, num_beams and
  length_penalty (score = sum of log-probs / length ** length_penalty) from generation_config.json
  (else config.json): `generation_defaults`.

Weights: model.safetensors (or its shards), else pytorch_model.bin read with torch.load(weights_only=True).

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab.config import TransformerConfig
from attnlab.export.hf import (
    MARIAN_LAYER_NORM_EPS,
    PAD_ROW_KEY,
    MarianExportError,
    _permute,
    layer_pieces,
    marian_permutation,
)
from attnlab.models.transformer import Transformer

ACTIVATIONS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu"}
# config.json settings attnlab computes one way only: (key, the value it needs, what a different one means)
FIXED = (
    ("normalize_before", False, "pre-norm layers"),
    ("add_final_layer_norm", False, "a final LayerNorm"),
    ("normalize_embedding", False, "a LayerNorm on the embeddings"),
    ("static_position_embeddings", True, "learned positions"),
    ("add_bias_logits", False, "a learned logits bias"),
    ("is_encoder_decoder", True, "a decoder-only model"),
)
# generation settings attnlab's decoders do not have: (key, the value they need)
GENERATION_FIXED = (("do_sample", False), ("num_beam_groups", 1), ("no_repeat_ngram_size", 0),
                    ("encoder_no_repeat_ngram_size", 0), ("repetition_penalty", 1.0), ("diversity_penalty", 0.0),
                    ("min_length", 0), ("min_new_tokens", None), ("num_return_sequences", 1),
                    ("exponential_decay_length_penalty", None), ("suppress_tokens", None),
                    ("begin_suppress_tokens", None), ("forced_bos_token_id", None))
_VOCAB_WEIGHTS = ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                  "lm_head.weight")
_IGNORED_WEIGHTS = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight",
                    "final_logits_bias")


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: no {path.name} ({what})")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MarianExportError(f"{path} is corrupt: {err}") from None
    if not isinstance(value, dict):
        raise MarianExportError(f"{path} is not a JSON object")
    return value


def read_config(path: Path) -> dict[str, Any]:
    config = read_json(path / "config.json", "not a Hugging Face model directory")
    if config.get("model_type") != "marian":
        raise MarianExportError(f"{path}: model_type is {config.get('model_type')!r}, expected 'marian'")
    return config


def read_weights(path: Path) -> dict[str, Tensor]:
    """The state dict of a directory: safetensors (one file or shards), else pytorch_model.bin."""
    from safetensors.torch import load_file

    single, index, legacy = path / "model.safetensors", path / "model.safetensors.index.json", path / "pytorch_model.bin"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        state: dict[str, Tensor] = {}
        for shard in sorted(set(read_json(index, "shard index")["weight_map"].values())):
            state.update(load_file(str(path / shard)))
        return state
    if legacy.is_file():
        try:  # weights_only: tensors and containers, never arbitrary pickled code
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is one line
            raise MarianExportError(f"{legacy} cannot be read as plain tensors: {str(err).splitlines()[0]}") from None
        if not isinstance(state, dict):
            raise MarianExportError(f"{legacy} does not hold a state dict")
        return state
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")


def _eos(config: dict[str, Any]) -> int:
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    if eos is None:
        raise MarianExportError("config.json has no eos_token_id")
    return int(eos)


def read_marian_special_ids(path: str | Path) -> dict[str, int]:
    """pad_id, bos_id (the decoder start token) and eos_id of a Marian directory."""
    config = read_config(Path(path))
    return {"pad_id": int(config["pad_token_id"]), "bos_id": int(config["decoder_start_token_id"]),
            "eos_id": _eos(config)}


def config_from_marian(config: dict[str, Any]) -> TransformerConfig:
    """attnlab config for a Marian config.json dict (raises MarianExportError naming what attnlab lacks)."""
    def same(a: str, b: str) -> Any:
        if config.get(a) != config.get(b):
            raise MarianExportError(f"config.json: attnlab needs {a} == {b}, got {config.get(a)} and {config.get(b)}")
        return config[a]

    activation = config.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise MarianExportError(f"config.json: activation_function {activation!r} is not supported "
                                f"(attnlab computes {', '.join(ACTIVATIONS)})")
    for key, value, meaning in FIXED:
        if key in config and config[key] is not None and config[key] != value:
            raise MarianExportError(f"config.json: {key}={config[key]!r} ({meaning}) is not supported; attnlab "
                                    f"computes {key}={value!r}")
    vocab = int(config["vocab_size"])
    added = int(bool(config.get(PAD_ROW_KEY)))  # the <pad> row attnlab's export appended (attnlab.export.hf)
    enc_layers, dec_layers = int(config["encoder_layers"]), int(config["decoder_layers"])
    return TransformerConfig(
        src_vocab_size=vocab - added,
        tgt_vocab_size=int(config.get("decoder_vocab_size") or vocab) - added,
        d_model=int(config["d_model"]),
        n_heads=int(same("encoder_attention_heads", "decoder_attention_heads")),
        n_layers=enc_layers,
        n_decoder_layers=dec_layers if dec_layers != enc_layers else None,
        d_ff=int(same("encoder_ffn_dim", "decoder_ffn_dim")),
        dropout=float(config.get("dropout", 0.1)),
        attn_dropout=float(config.get("attention_dropout", 0.0)),
        ffn_dropout=float(config.get("activation_dropout", 0.0)),
        activation=ACTIVATIONS[activation],
        norm_first=False,
        layer_norm_eps=MARIAN_LAYER_NORM_EPS,
        positional="sinusoidal",
        max_len=int(config.get("max_position_embeddings", 1024)),
        share_embeddings=bool(config.get("share_encoder_decoder_embeddings", True)),
        tie_output=bool(config.get("tie_word_embeddings", True)),
        scale_embedding=bool(config.get("scale_embedding", False)),
        bias=True,
        output_bias=True,
        pad_id=int(config["pad_token_id"]),
    )


def generation_defaults(path: str | Path) -> dict[str, Any]:
    """How transformers' generate() decodes this model, from generation_config.json (else config.json):
    decoder_start_id, eos_id, max_length (generated tokens + the start, as transformers counts),
    num_beams, length_penalty, early_stopping, banned_ids (bad_words_ids of one token), forced_eos,
    renormalize (log-softmax again after banning)."""
    path = Path(path)
    config = read_config(path)
    gen_file = path / "generation_config.json"
    gen = read_json(gen_file, "generation settings") if gen_file.is_file() else config
    for key, value in GENERATION_FIXED:
        if gen.get(key, value) not in (value, None) and not (value is None and gen.get(key) in ([], 0)):
            raise MarianExportError(f"{gen_file.name if gen_file.is_file() else 'config.json'}: {key}="
                                    f"{gen[key]!r} is not supported by attnlab's decoders")
    banned = []
    for words in gen.get("bad_words_ids") or []:
        if len(words) != 1:
            raise MarianExportError(f"bad_words_ids entry {words} is not supported: only single tokens are banned")
        banned.append(int(words[0]))
    eos = _eos(gen) if gen.get("eos_token_id") is not None else _eos(config)
    forced = gen.get("forced_eos_token_id", config.get("forced_eos_token_id"))
    forced = forced[0] if isinstance(forced, list) else forced
    if forced is not None and int(forced) != eos:
        raise MarianExportError(f"forced_eos_token_id {forced} differs from eos_token_id {eos}: not supported")
    early = gen.get("early_stopping", False)
    if early not in (False, True):
        raise MarianExportError(f"early_stopping={early!r} is not supported (true or false)")
    start = gen.get("decoder_start_token_id", config.get("decoder_start_token_id"))
    return {
        "decoder_start_id": int(start if start is not None else config["pad_token_id"]),
        "eos_id": eos,
        "max_length": int(gen.get("max_length") or config.get("max_length") or 20),
        "num_beams": int(gen.get("num_beams") or 1),
        "length_penalty": float(gen.get("length_penalty", 1.0)),
        "early_stopping": bool(early),
        "banned_ids": banned,
        "forced_eos": forced is not None,
        "renormalize": bool(gen.get("renormalize_logits", False)),
    }


def _first(state: dict[str, Tensor], names: list[str], what: str, path: Path) -> Tensor:
    for name in names:
        if name in state:
            return state[name]
    raise MarianExportError(f"{path}: no {what} in the weights (looked for {', '.join(names)})")


def load_marian(path: str | Path) -> Transformer:
    """An attnlab Transformer (eval mode) computing what MarianMTModel.from_pretrained(path) computes.
    Needs safetensors (or torch) only, not transformers."""
    path = Path(path)
    config = read_config(path)
    cfg = config_from_marian(config)
    state = {k: v.float() for k, v in read_weights(path).items()}
    if config.get(PAD_ROW_KEY):  # drop the appended <pad> row (never a token: attnlab.export.hf)
        state = {k: v[..., :-1] if k == "final_logits_bias" else v[:-1] if k in _VOCAB_WEIGHTS else v
                 for k, v in state.items()}
    src_emb = _first(state, ["model.encoder.embed_tokens.weight", "model.shared.weight"], "source embeddings", path)
    tgt_names = ["model.decoder.embed_tokens.weight"] + (["model.shared.weight"] if cfg.share_embeddings else [])
    tgt_emb = src_emb if cfg.share_embeddings else _first(state, tgt_names, "target embeddings", path)
    head = state.get("lm_head.weight", tgt_emb if cfg.tie_output else None)
    if head is None:
        raise MarianExportError(f"{path}: no lm_head.weight and tie_word_embeddings is false")
    if cfg.tie_output and not torch.equal(head, tgt_emb):
        cfg = dataclasses.replace(cfg, tie_output=False)
    start = config.get("decoder_start_token_id")
    if start is not None and 0 <= int(start) < cfg.tgt_vocab_size and not tgt_emb[int(start)].any():
        cfg = dataclasses.replace(cfg, zero_start_id=int(start))  # a zero start embedding stays zero if trained on
    bias = state.get("final_logits_bias", torch.zeros(1, cfg.tgt_vocab_size)).reshape(-1)

    known = {p.hf for p in layer_pieces(cfg)} | set(_IGNORED_WEIGHTS) | set(_VOCAB_WEIGHTS)
    unknown = sorted(set(state) - known)
    if unknown:
        raise MarianExportError(f"{path}: weights attnlab does not compute: {', '.join(unknown[:3])}"
                                + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""))

    inv = torch.argsort(marian_permutation(cfg.d_model))
    model = Transformer(cfg)
    # written into the model's own tensors one piece at a time (no second copy of the model), and every
    # parameter must be written: one left out would keep its random initialisation
    params = model.state_dict()  # detached views of the parameters and buffers
    written: set[str] = set()
    permuted: dict[int, Tensor] = {}  # a tied matrix is permuted once
    with torch.no_grad():
        for p in layer_pieces(cfg):
            t = _permute(_first(state, [p.hf], p.hf, path), p.kind, inv)
            (params[p.ours][p.rows[0]:p.rows[1]] if p.rows is not None else params[p.ours]).copy_(t)
            written.add(p.ours)
        for name, matrix in (("input_embedding.embedding.weight", src_emb), ("output_embedding.embedding.weight", tgt_emb),
                             ("output_projection.weight", head)):
            if id(matrix) not in permuted:
                permuted[id(matrix)] = matrix[:, inv]
            params[name].copy_(permuted[id(matrix)])
        params["output_projection.bias"].copy_(bias)
        written.update(("input_embedding.embedding.weight", "output_embedding.embedding.weight",
                        "output_projection.weight", "output_projection.bias"))
    missing = sorted(set(dict(model.named_parameters(remove_duplicate=False))) - written)
    if missing:
        raise MarianExportError(f"{path}: attnlab parameters not read from the weights: {', '.join(missing[:3])}")
    return model.eval()
