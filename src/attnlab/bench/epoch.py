"""End-to-end epoch time on Multi30k de-en: attnlab's training pipeline vs a plain torch.nn.Transformer loop.

Both see the same sentences, tokenised with one joint 8k BPE, and train the same model (attnlab.bench.common sizes) in fp32 with the same hyper-parameters, and about the same number of sentences per
step. The plain loop is what the tutorials write: a DataLoader with shuffle=True and batches of 64
sentences padded to their longest. attnlab batches by token count with length bucketing (little
padding) and trains on the real tokens only. Timed: data loading + collation + forward + backward +
optimizer step, for `--fraction` of an epoch (then scaled to a whole epoch), with padding waste.

    attnlab bench epoch --fraction 0.1 --out benchmarks/results/epoch_multi30k.json

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from attnlab.bench.train import reference_step_fn
from attnlab.bench.common import SIZES, ReferenceTranslator, multi30k_pairs, write_report

from attnlab import Transformer, TransformerConfig
from attnlab.data.batching import TokenBatchSampler, collate
from attnlab.training.config import TrainConfig
from attnlab.training.loop import Trainer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="attnlab bench epoch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="folder holding multi30k/ (default: $ATTNLAB_DATA_DIR)")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of the 29,000 training pairs timed")
    ap.add_argument("--batch-size", type=int, default=64, help="sentences per batch of the plain loop")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = SIZES[args.size]
    pairs = multi30k_pairs(s["vocab"], args.data_dir)
    if pairs is None:
        sys.exit("Multi30k not found: pass --data-dir (the folder holding multi30k/) or set ATTNLAB_DATA_DIR")
    full = len(pairs)
    random.Random(0).shuffle(pairs)
    pairs = pairs[: max(args.batch_size, int(full * args.fraction))]
    lengths = [max(len(a), len(b)) for a, b in pairs]
    # attnlab's token budget: the plain loop's sentences per batch times the median length
    max_tokens = args.batch_size * int(statistics.median(lengths))

    def run_reference() -> dict:
        torch.manual_seed(0)
        model = ReferenceTranslator(s["d_model"], s["n_heads"], s["n_layers"], s["d_ff"], s["vocab"])
        step = reference_step_fn(model, "fp32", 4000, s["d_model"])
        loader = DataLoader(pairs, batch_size=args.batch_size, shuffle=True, collate_fn=lambda ex: collate(ex, 0),
                            generator=torch.Generator().manual_seed(0))
        real = padded = steps = 0
        t0 = time.perf_counter()
        for batch in loader:
            step(batch)
            real += batch.n_tokens
            padded += batch.tgt_out.numel()
            steps += 1
        return {"seconds": time.perf_counter() - t0, "steps": steps, "real_tgt_tokens": real, "padded_tgt_tokens": padded}

    def run_attnlab() -> dict:
        torch.manual_seed(0)
        cfg = TransformerConfig(src_vocab_size=s["vocab"], tgt_vocab_size=s["vocab"], d_model=s["d_model"],
                                n_heads=s["n_heads"], n_layers=s["n_layers"], d_ff=s["d_ff"], dropout=0.1,
                                share_embeddings=True)
        trainer = Trainer(Transformer(cfg), pairs, None, TrainConfig(amp="none", warmup_steps=4000, max_tokens=max_tokens),
                          tempfile.mkdtemp(prefix="attnlab-epoch-"), progress=False)
        sampler = TokenBatchSampler([len(a) for a, _ in pairs], [len(b) for _, b in pairs], max_tokens, shuffle=True)
        real = padded = steps = 0
        t0 = time.perf_counter()
        for idx in sampler:
            batch = collate([pairs[i] for i in idx], 0)
            trainer.train_step([batch])
            real += batch.n_tokens
            padded += batch.tgt_out.numel()
            steps += 1
        return {"seconds": time.perf_counter() - t0, "steps": steps, "real_tgt_tokens": real, "padded_tgt_tokens": padded}

    results = {"plain_nn_transformer_loop": run_reference(), "attnlab": run_attnlab()}
    scale = full / len(pairs)
    for r in results.values():
        r["padding_waste"] = round(1 - r["real_tgt_tokens"] / r["padded_tgt_tokens"], 3)
        r["tokens_per_s"] = round(r["real_tgt_tokens"] / r["seconds"], 1)
        r["epoch_minutes_extrapolated"] = round(r["seconds"] * scale / 60, 2)
        r["seconds"] = round(r["seconds"], 2)
    write_report(args.out, {
        "benchmark": "Multi30k de-en training epoch, end to end (data loading, padding, fp32 training)",
        "size": {"name": args.size, **s}, "sentences_timed": len(pairs), "sentences_per_epoch": full,
        "plain_loop_batch_sentences": args.batch_size, "attnlab_max_tokens": max_tokens,
        "results": results,
        "speedup": round(results["plain_nn_transformer_loop"]["seconds"] / results["attnlab"]["seconds"], 3),
    })


if __name__ == "__main__":
    main()
