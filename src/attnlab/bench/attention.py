"""Attention scaling: time of one attention call (forward, and forward + backward) as the sequence length
doubles, for the fused kernel (F.scaled_dot_product_attention, what attnlab uses by default) and the naive
softmax(Q K^T / sqrt(d_k)) V that materialises the (T x T) score matrix. Also the extra memory of each
(the naive path holds B x H x T x T scores and weights for the backward). Causal self-attention,
B x H x T x d_k with B * T fixed (a constant token budget per batch), fp32.

    attnlab bench attention --out benchmarks/results/attention_scaling.json

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F

from attnlab.bench.common import median_seconds, write_report

from attnlab.layers.attention import scaled_dot_product_attention


def naive(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def fused(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attnlab_path(q, k, v, mask):
    return scaled_dot_product_attention(q, k, v, mask)[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="attnlab bench attention", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="64,128,256,512,1024")
    ap.add_argument("--tokens", type=int, default=8192, help="B x T, constant across lengths")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for t in [int(x) for x in args.lengths.split(",")]:
        b = max(1, args.tokens // t)
        q, k, v = (torch.randn(b, args.heads, t, args.head_dim, requires_grad=True) for _ in range(3))
        grad = torch.randn(b, args.heads, t, args.head_dim)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        row = {"T": t, "B": b, "score_matrix_mib": round(b * args.heads * t * t * 4 / 2**20, 1)}
        for name, fn in (("fused", fused), ("naive", naive), ("attnlab", attnlab_path)):
            with torch.no_grad():
                row[f"{name}_forward_ms"] = round(1e3 * median_seconds(lambda: fn(q, k, v, mask), args.repeats), 2)
            row[f"{name}_train_ms"] = round(1e3 * median_seconds(lambda: fn(q, k, v, mask).backward(grad), args.repeats), 2)
        row["naive_over_fused_forward"] = round(row["naive_forward_ms"] / row["fused_forward_ms"], 2)
        row["naive_over_fused_train"] = round(row["naive_train_ms"] / row["fused_train_ms"], 2)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # progress; stdout is the report
    write_report(args.out, {
        "benchmark": "causal self-attention time per call as T doubles (B x T constant), fused vs naive, fp32",
        "tokens_per_batch": args.tokens, "heads": args.heads, "head_dim": args.head_dim, "repeats": args.repeats,
        "rows": rows,
        "note": "attnlab = attnlab.layers.attention.scaled_dot_product_attention: the fused kernel, except when "
                "training on short keys (<= 48) on a CPU, where the explicit path is the faster one",
    })


if __name__ == "__main__":
    main()
