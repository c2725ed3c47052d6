"""Arguments shared by several subcommands.

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse

from attnlab.translate import DecodeConfig, Translator


def add_decode_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--beam", type=int, default=None,
                   help="beam size (1 = greedy; default: the model's, a Marian model's num_beams, else 1)")
    g.add_argument("--length-penalty", type=float, default=None,
                   help="length penalty alpha for beam search: GNMT's for attnlab models (default 0.6); "
                        "score / length ** alpha for Marian models, as transformers (default: the model's)")
    g.add_argument("--max-len-a", type=float, default=1.5, help="max output length = a * source length + b")
    g.add_argument("--max-len-b", type=int, default=10)
    g.add_argument("--max-src-len", type=int, default=256, help="longer inputs are truncated with a warning")
    g.add_argument("--n-best", type=int, default=1, help="print the n best hypotheses (tab-separated)")
    g.add_argument("--batch-tokens", type=int, default=6000)
    g.add_argument("--amp", choices=["none", "bf16"], default="none", help="bf16 autocast for decoding")
    g.add_argument("--int8", action="store_true",
                   help="dynamic int8 quantisation of the linear layers (CPU only; speed and BLEU: benchmarks/)")
    g.add_argument("--device", default="cpu")


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    return DecodeConfig(beam=args.beam, length_penalty=args.length_penalty, max_len_a=args.max_len_a,
                        max_len_b=args.max_len_b, max_src_len=args.max_src_len, n_best=args.n_best,
                        batch_tokens=args.batch_tokens, amp=args.amp).validate()


def load_translator(args: argparse.Namespace) -> Translator:
    """The translator of --model on --device, int8-quantised with --int8 (the decoding commands' options)."""
    from attnlab.device import parse_device

    translator = Translator.load(args.model, parse_device(args.device))
    return translator.quantize_int8() if args.int8 else translator
