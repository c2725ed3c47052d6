"""Export an attnlab Transformer as a Hugging Face Marian model, and load one back.

    export_marian(model, out_dir, tokenizer, model_card)   # -> config.json, model.safetensors, README.md
    MarianMTModel.from_pretrained(out_dir)                  # transformers: same logits, same greedy output
    load_marian(out_dir)                                    # -> attnlab Transformer, identical logits
                                                            #    (attnlab.export.marian_import)

Marian (transformers.MarianMTModel) is the paper's post-norm encoder-decoder with sinusoidal
positions, so the weights map one to one, with two differences handled here:

1. Projections: attnlab stacks W^Q, W^K, W^V in one `in_proj` (3 d_model, d_model); Marian keeps
   q_proj, k_proj, v_proj. The export splits the matrix, the import stacks it again.
2. The position table: the paper, and attnlab, interleave PE(pos, 2i) = sin, PE(pos, 2i+1) = cos;
   Marian puts every sine in the first half of the features and every cosine in the second
   (MarianSinusoidalPositionalEmbedding; the table is rebuilt when Marian loads, never saved).
   Every operation of the network is equivariant to a permutation of the d_model features of the
   residual stream: embeddings, LayerNorm (its mean and variance do not care about the order), and
   each Linear reading from or writing to the residual stream. So the export permutes the hidden
   dimension with `marian_permutation`, feature m of Marian = feature perm[m] of attnlab, which
   carries our interleaved table exactly onto Marian's layout. Attention's inner head dimensions
   (rows of W^Q/W^K/W^V, columns of W^O) and the FFN's d_ff dimension are not touched.

Refused with a clear error (Marian has no equivalent): pre-norm models, learned or no positions,
a LayerNorm epsilon other than 1e-5. Models without biases are exported with zero biases.

CTranslate2 (`ct2-transformers-converter`) reads a Marian directory with Marian's conventions: the
last vocabulary row is <pad>, which it drops from the embeddings and the output layer, and the decoder
starts from a zero embedding. attnlab's <pad> is id 0, so the export appends one row after the last
token (config.json: attnlab_marian_pad_row): zero embedding, logit bias MASKED_LOGIT so that its
probability is exactly 0 in transformers (attnlab's softmax has no such entry), banned in
generation_config.json; `load_marian` removes it again. A model whose <s> embedding row is zero
(TransformerConfig.zero_start_id, every Transformer attnlab trains now) then gives attnlab's tokens in
CTranslate2; for one with a learned <s>, `ctranslate2_note` says why it would not.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab.config import TransformerConfig
from attnlab.export.card import save_tokenizer, write_model_card
from attnlab.models.transformer import Transformer

MARIAN_LAYER_NORM_EPS = 1e-5  # Marian's nn.LayerNorm(d_model): the default epsilon, not configurable
# attnlab's tokenizers fix <pad>=0, <s>=1, </s>=2, <unk>=3 (attnlab.data.tokenizer)
DEFAULT_BOS_ID, DEFAULT_EOS_ID = 1, 2
_POSITION_KEYS = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")
# the logit bias of the added <pad> row: exp(MASKED_LOGIT - max) is exactly 0 in float32 (and float16 holds it)
MASKED_LOGIT = -1e4
PAD_ROW_KEY = "attnlab_marian_pad_row"  # config.json: the last vocabulary row was added by this export


class MarianExportError(ValueError):
    """The model cannot be expressed as a Marian model (or the directory is not one attnlab can load)."""


def marian_permutation(d_model: int) -> Tensor:
    """perm (d_model,) with Marian feature m = attnlab feature perm[m]: [0, 2, 4, ..., 1, 3, 5, ...].

    attnlab's table has sin in the even features and cos in the odd ones; Marian's has the
    ceil(d/2) sines first, then the cosines, with the same frequencies in the same order.
    """
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


# ---- the name mapping ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Piece:
    """One Marian tensor and where it lives in attnlab's state dict."""

    ours: str  # attnlab state_dict key
    hf: str  # Marian state_dict key
    kind: str  # "cols": permute dim 1 (reads the residual stream); "rows": permute dim 0 (writes it); "none"
    rows: tuple[int, int] | None = None  # slice of `ours` rows (W^Q / W^K / W^V inside in_proj)


def _attention_pieces(ours: str, hf: str, d: int) -> list[_Piece]:
    pieces = []
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        rows = (i * d, (i + 1) * d)
        pieces.append(_Piece(f"{ours}.in_proj.weight", f"{hf}.{name}.weight", "cols", rows))
        pieces.append(_Piece(f"{ours}.in_proj.bias", f"{hf}.{name}.bias", "none", rows))
    pieces.append(_Piece(f"{ours}.out_proj.weight", f"{hf}.out_proj.weight", "rows"))
    pieces.append(_Piece(f"{ours}.out_proj.bias", f"{hf}.out_proj.bias", "rows"))
    return pieces


def _norm_pieces(ours: str, hf: str) -> list[_Piece]:
    return [_Piece(f"{ours}.weight", f"{hf}.weight", "rows"), _Piece(f"{ours}.bias", f"{hf}.bias", "rows")]


def _ffn_pieces(ours: str, hf: str) -> list[_Piece]:
    return [
        _Piece(f"{ours}.linear1.weight", f"{hf}.fc1.weight", "cols"),
        _Piece(f"{ours}.linear1.bias", f"{hf}.fc1.bias", "none"),
        _Piece(f"{ours}.linear2.weight", f"{hf}.fc2.weight", "rows"),
        _Piece(f"{ours}.linear2.bias", f"{hf}.fc2.bias", "rows"),
    ]


def layer_pieces(cfg: TransformerConfig) -> list[_Piece]:
    """Every encoder/decoder layer tensor: attnlab name -> Marian name (embeddings are handled apart)."""
    d, pieces = cfg.d_model, []
    for i in range(cfg.encoder_layers):
        o, h = f"encoder.layers.{i}", f"model.encoder.layers.{i}"
        pieces += _attention_pieces(f"{o}.self_attn", f"{h}.self_attn", d)
        pieces += _norm_pieces(f"{o}.add_norm1.norm", f"{h}.self_attn_layer_norm")
        pieces += _ffn_pieces(f"{o}.ffn", h)
        pieces += _norm_pieces(f"{o}.add_norm2.norm", f"{h}.final_layer_norm")
    for i in range(cfg.decoder_layers):
        o, h = f"decoder.layers.{i}", f"model.decoder.layers.{i}"
        pieces += _attention_pieces(f"{o}.self_attn", f"{h}.self_attn", d)
        pieces += _norm_pieces(f"{o}.add_norm1.norm", f"{h}.self_attn_layer_norm")
        pieces += _attention_pieces(f"{o}.cross_attn", f"{h}.encoder_attn", d)
        pieces += _norm_pieces(f"{o}.add_norm2.norm", f"{h}.encoder_attn_layer_norm")
        pieces += _ffn_pieces(f"{o}.ffn", h)
        pieces += _norm_pieces(f"{o}.add_norm3.norm", f"{h}.final_layer_norm")
    return pieces


def _permute(t: Tensor, kind: str, perm: Tensor) -> Tensor:
    if kind == "cols":
        return t[:, perm]
    if kind == "rows":
        return t[perm]
    return t


# ---- attnlab -> Marian -----------------------------------------------------------------------
def check_marian_compatible(cfg: TransformerConfig) -> None:
    """Raise MarianExportError naming the first setting Marian cannot express."""
    if getattr(cfg, "arch", "transformer") != "transformer":
        raise MarianExportError(f"only the encoder-decoder Transformer can be exported to Marian, not {cfg.arch!r}")
    if cfg.norm_first:
        raise MarianExportError(
            "cannot export a pre-norm model (norm_first=True) to Marian: MarianMTModel is post-norm only "
            "(LayerNorm(x + Sublayer(x))) and has no final encoder/decoder LayerNorm; use --format onnx")
    if cfg.positional != "sinusoidal":
        raise MarianExportError(
            f"cannot export positional={cfg.positional!r} to Marian: MarianMTModel always adds fixed sinusoidal "
            "positions (rebuilt on load, never read from the weights); use --format onnx")
    if abs(cfg.layer_norm_eps - MARIAN_LAYER_NORM_EPS) > 1e-12:
        raise MarianExportError(
            f"cannot export layer_norm_eps={cfg.layer_norm_eps} to Marian: its LayerNorms use eps=1e-5")


def adds_pad_row(cfg: TransformerConfig) -> bool:
    """Whether the export appends a <pad> row: unless <pad> is the last id already (a Marian model read in)."""
    return not cfg.pad_id == cfg.src_vocab_size - 1 == cfg.tgt_vocab_size - 1


def _with_pad_row(t: Tensor, value: float = 0.0) -> Tensor:
    """t (V, ...) -> (V + 1, ...), the new last row filled with `value`."""
    return torch.cat([t, torch.full_like(t[:1], value)])


def marian_state_dict(model: Transformer) -> dict[str, Tensor]:
    """attnlab weights under Marian's names, hidden dimension permuted (float32, positions left out),
    with the <pad> row appended when `adds_pad_row`."""
    cfg = model.cfg
    check_marian_compatible(cfg)
    perm = marian_permutation(cfg.d_model)
    ours = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {}
    for p in layer_pieces(cfg):
        if p.ours not in ours:  # bias=False: Marian always has biases, zero ones are the same function
            size = (p.rows[1] - p.rows[0]) if p.rows else (cfg.d_ff if p.ours.endswith("linear1.bias") else cfg.d_model)
            out[p.hf] = torch.zeros(size)
            continue
        t = ours[p.ours]
        if p.rows is not None:
            t = t[p.rows[0]:p.rows[1]]
        out[p.hf] = _permute(t, p.kind, perm).contiguous()
    add = _with_pad_row if adds_pad_row(cfg) else (lambda t, value=0.0: t)
    src_emb = add(ours["input_embedding.embedding.weight"][:, perm]).contiguous()
    tgt_emb = src_emb if cfg.share_embeddings else add(ours["output_embedding.embedding.weight"][:, perm]).contiguous()
    out["model.encoder.embed_tokens.weight"] = src_emb
    out["model.decoder.embed_tokens.weight"] = tgt_emb
    if cfg.share_embeddings:
        out["model.shared.weight"] = src_emb
    out["lm_head.weight"] = tgt_emb if cfg.tie_output else add(ours["output_projection.weight"][:, perm]).contiguous()
    bias = ours.get("output_projection.bias")  # Marian's final_logits_bias (a model loaded from opus-mt)
    out["final_logits_bias"] = add(torch.zeros(cfg.tgt_vocab_size) if bias is None else bias, MASKED_LOGIT)[None]
    return out


def marian_config_dict(cfg: TransformerConfig, bos_id: int, eos_id: int) -> dict[str, Any]:
    """MarianConfig keyword arguments for an attnlab config."""
    check_marian_compatible(cfg)
    extra = int(adds_pad_row(cfg))
    return dict(
        vocab_size=cfg.src_vocab_size + extra,
        decoder_vocab_size=cfg.tgt_vocab_size + extra,
        share_encoder_decoder_embeddings=cfg.share_embeddings,
        tie_word_embeddings=cfg.tie_output,
        d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.n_heads,
        decoder_attention_heads=cfg.n_heads,
        encoder_ffn_dim=cfg.d_ff,
        decoder_ffn_dim=cfg.d_ff,
        activation_function=cfg.activation,
        scale_embedding=cfg.scale_embedding,
        max_position_embeddings=cfg.max_len,
        dropout=cfg.dropout,
        attention_dropout=cfg.attn_dropout,
        activation_dropout=cfg.dropout if cfg.ffn_dropout is None else cfg.ffn_dropout,
        pad_token_id=cfg.pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        decoder_start_token_id=bos_id,  # attnlab starts every target with <s>, Marian's hub models with <pad>
        forced_eos_token_id=eos_id,
        is_encoder_decoder=True,
        **({PAD_ROW_KEY: True} if extra else {}),
    )


def special_ids(tokenizer: Any, bos_id: int | None, eos_id: int | None) -> tuple[int, int]:
    """BOS and EOS ids: the arguments, else the (target) tokenizer's, else attnlab's fixed 1 and 2."""
    side = getattr(tokenizer, "tgt", tokenizer)  # a TokenizerPair or a single tokenizer
    if bos_id is None:
        bos_id = getattr(side, "bos_id", DEFAULT_BOS_ID)
    if eos_id is None:
        eos_id = getattr(side, "eos_id", DEFAULT_EOS_ID)
    return int(bos_id), int(eos_id)


def _usage(out_dir: Path, bos_id: int, eos_id: int, tokenizer_files: list[str]) -> str:
    if "tokenizer.json" in tokenizer_files or "src_tokenizer.json" in tokenizer_files:
        src_file, tgt_file = (("tokenizer.json",) * 2 if "tokenizer.json" in tokenizer_files
                              else ("src_tokenizer.json", "tgt_tokenizer.json"))
        imports = "import torch\nfrom tokenizers import Tokenizer\nfrom transformers import MarianMTModel\n"
        tok = (f"src_tok = Tokenizer.from_file(f\"{{d}}/{src_file}\")\n"
               f"tgt_tok = Tokenizer.from_file(f\"{{d}}/{tgt_file}\")\n"
               f"src = torch.tensor([src_tok.encode(\"a sentence\").ids + [{eos_id}]])  # sources end with </s>\n")
        detok = "print(tgt_tok.decode(out[0].tolist()))\n"
    else:
        imports = "import torch\nfrom transformers import MarianMTModel\n"
        tok = f"src = torch.tensor([[...source ids..., {eos_id}]])  # attnlab sources end with </s>\n"
        detok = ""
    return (
        "```python\n" + imports + f"d = \"{out_dir.name}\"\n"
        "model = MarianMTModel.from_pretrained(d).eval()\n" + tok +
        "out = model.generate(src, attention_mask=src != model.config.pad_token_id, num_beams=4,\n"
        f"                     decoder_start_token_id={bos_id}, max_new_tokens=128)\n" + detok + "```\n\n"
        "Back into attnlab: `attnlab.export.load_marian(d)` (or `attnlab translate --model DIR`)."
    )


def export_marian(
    model: Transformer,
    out_dir: str | Path,
    tokenizer: Any = None,
    model_card: dict[str, Any] | None = None,
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
) -> Path:
    """Write `out_dir` so that `transformers.MarianMTModel.from_pretrained(out_dir)` computes the same
    function as `model`: config.json, generation_config.json, model.safetensors, README.md (model
    card), and the tokenizer files when `tokenizer` (anything with `save(directory)`, e.g.
    attnlab.data.TokenizerPair) is given. BOS/EOS ids come from the arguments, else the tokenizer,
    else attnlab's fixed ids 1 and 2. The intended CLI: `attnlab export --model RUN --format hf --out DIR`.
    """
    try:
        from transformers import MarianConfig, MarianMTModel
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("export to Hugging Face needs transformers: pip install 'attnlab[export]'") from e
    if not isinstance(model, Transformer):
        raise MarianExportError(f"only attnlab's Transformer can be exported to Marian, got {type(model).__name__}")
    cfg = model.cfg
    check_marian_compatible(cfg)
    bos_id, eos_id = special_ids(tokenizer, bos_id, eos_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    state = marian_state_dict(model)
    hf = MarianMTModel(MarianConfig(**marian_config_dict(cfg, bos_id, eos_id))).eval()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(_POSITION_KEYS):
        raise RuntimeError(f"Marian name mapping is out of date: missing {sorted(set(missing) - set(_POSITION_KEYS))},"
                           f" unexpected {sorted(unexpected)}")
    gen = hf.generation_config
    gen.decoder_start_token_id, gen.bos_token_id, gen.eos_token_id = bos_id, bos_id, eos_id
    gen.pad_token_id, gen.forced_eos_token_id, gen.max_length = cfg.pad_id, eos_id, cfg.max_len
    if adds_pad_row(cfg):  # never generated (its probability is 0 already: MASKED_LOGIT)
        gen.bad_words_ids = [[cfg.tgt_vocab_size]]
    hf.save_pretrained(out_dir)

    tokenizer_files = save_tokenizer(tokenizer, out_dir, cfg.max_len) if tokenizer is not None else []
    ct2 = ctranslate2_note(model, tokenizer, bos_id)
    write_model_card(
        out_dir, cfg, "hf", {"pad": cfg.pad_id, "bos / decoder_start": bos_id, "eos": eos_id},
        _usage(out_dir, bos_id, eos_id, tokenizer_files), model_card,
        notes=[
            "Weights are attnlab's with the d_model features permuted (sines first, then cosines) so that "
            "Marian's non-interleaved sinusoidal table is exactly the paper's interleaved one; the function "
            "computed is unchanged.",
            f"Generation starts from <s> (decoder_start_token_id={bos_id}), not from <pad> as in OPUS-MT models.",
            "forced_eos_token_id makes generate() end a hypothesis cut at max_length with </s>; "
            "attnlab's own decoder does not (pass forced_eos_token_id=None to match it exactly).",
            f"Marian's position table has max_position_embeddings={cfg.max_len} rows: longer sources or "
            "outputs fail in transformers (attnlab's sinusoids extend without limit).",
        ] + ([f"The last vocabulary row (id {cfg.tgt_vocab_size}) is Marian's <pad> slot, added for CTranslate2: "
              "zero embedding, logit bias -1e4, never generated; it is not a token of the tokenizer."]
             if adds_pad_row(cfg) else [])
        + [ct2 or f"CTranslate2 gives attnlab's tokens: `ct2-transformers-converter --model {out_dir.name} "
                  f"--output_dir {out_dir.name}-ct2`, then `ctranslate2.Translator` on source tokens ending with "
                  "</s> (the <s> embedding is zero, so its zero start embedding is attnlab's start)."],
    )
    return out_dir


def ctranslate2_note(model: Transformer, tokenizer: Any, bos_id: int) -> str | None:
    """None when CTranslate2's converter (ct2-transformers-converter) turns the export into a model that
    gives attnlab's tokens; else one line saying why it would not."""
    if model.output_embedding.weight[bos_id].any():
        return ("CTranslate2's converter would not give attnlab's tokens: this model starts decoding from a "
                f"learned <s> embedding (id {bos_id}), CTranslate2's Marian loader from a zero vector (models "
                "trained since attnlab holds <s> at zero, TransformerConfig.zero_start_id, convert exactly).")
    if tokenizer is None or not getattr(tokenizer, "joint", True):
        return ("CTranslate2's converter cannot read this export: it needs one tokenizer.json for source and "
                "target (a joint vocabulary); " + ("none was exported." if tokenizer is None
                                                    else "this model has separate vocabularies."))
    return None
