"""attnlab attention: draw where the model looks, as a heatmap PNG.

Cross-attention (source tokens x target tokens) by default; `--kind encoder` or `decoder` draws
self-attention. Choose `--layer` and `--head`, or average (the default: last layer, mean of heads).

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse

import torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention", help="draw an attention heatmap", description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True, help="source sentence")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--kind", choices=["cross", "encoder", "decoder"], default="cross")
    p.add_argument("--layer", default="last", help="layer index (0-based), 'last', or 'mean'")
    p.add_argument("--head", default="mean", help="head index (0-based) or 'mean'")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def _index(flag: str, value: str, words: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--{flag} must be an index (0, 1, ...) or {words}, got {value!r}") from None


def select(maps: torch.Tensor, layer: str, head: str) -> tuple[torch.Tensor, str]:
    """maps (L, B=1, H, T, S) -> (T, S) and a label."""
    n_layers, _, n_heads = maps.shape[:3]
    if layer == "mean":
        m, ltxt = maps.mean(0), "mean of layers"
    else:
        li = n_layers - 1 if layer == "last" else _index("layer", layer, "'last' or 'mean'")
        if not 0 <= li < n_layers:
            raise ValueError(f"--layer {layer}: the model has {n_layers} layers (0..{n_layers - 1})")
        m, ltxt = maps[li], f"layer {li}"
    m = m[0]
    if head == "mean":
        return m.mean(0), f"{ltxt}, mean of {n_heads} heads"
    hi = _index("head", head, "'mean'")
    if not 0 <= hi < n_heads:
        raise ValueError(f"--head {head}: the model has {n_heads} heads (0..{n_heads - 1})")
    return m[hi], f"{ltxt}, head {hi}"


def run(args: argparse.Namespace) -> int:
    from attnlab.device import parse_device
    from attnlab.models.registry import require
    from attnlab.translate import DecodeConfig, Translator, source_ids
    from attnlab.viz.attention import plot_attention

    if not args.text.strip():
        raise ValueError("--text is empty")
    if not args.out.strip():
        raise ValueError("--out is empty; name the PNG file to write")
    tr = Translator.load(args.model, parse_device(args.device))
    require(tr.meta.get("arch", "transformer"), "attention_maps")
    tok_src, tok_tgt = tr.tokenizers.src, tr.tokenizers.tgt
    out_ids = tr.translate_ids([source_ids(tr.tokenizers, args.text)[:256]], DecodeConfig(beam=args.beam))[0][0]
    src = torch.tensor([source_ids(tr.tokenizers, args.text)[:256]], device=tr.device)
    tgt_in = torch.tensor([[tr.bos_id] + out_ids], device=tr.device)
    maps = tr.model.attention_maps(src, tgt_in)
    src_tokens = [tok_src.id_to_token(i) for i in src[0].tolist()]
    out_tokens = [tok_tgt.id_to_token(i) for i in out_ids] + ["</s>"]
    in_tokens = ["<s>"] + [tok_tgt.id_to_token(i) for i in out_ids]
    if args.kind == "cross":
        w, label = select(maps["cross"], args.layer, args.head)
        rows, cols, xl, yl = out_tokens, src_tokens, "source", "output"
    elif args.kind == "encoder":
        if "encoder" not in maps:
            raise ValueError("this model has no encoder self-attention")
        w, label = select(maps["encoder"], args.layer, args.head)
        rows, cols, xl, yl = src_tokens, src_tokens, "source (keys)", "source (queries)"
    else:
        if "decoder_self" not in maps:
            raise ValueError("this model has no decoder self-attention")
        w, label = select(maps["decoder_self"], args.layer, args.head)
        rows, cols, xl, yl = out_tokens, in_tokens, "target prefix (keys)", "output"
    translation = tok_tgt.decode(out_ids)
    path = plot_attention(w.float().cpu().numpy(), rows, cols, args.out,
                          title=f"{args.kind} attention, {label}\n{translation}", xlabel=xl, ylabel=yl)
    print(f"{translation}\nwrote {path}")
    return 0
