"""Training throughput: attnlab vs a plain torch.nn.Transformer training loop, same batches, same process.

Both train the same translator (embeddings x sqrt(d), sinusoids, post-norm encoder-decoder, tied output,
dropout 0.1 on the embedding sums, the sub-layer outputs and the feed-forward hidden units (none on the
attention weights, as in the paper), label smoothing 0.1, Adam(0.9, 0.98, 1e-9), warm-up, clipping at
1.0) on identical batches of 64 sentence pairs with Multi30k-like lengths, in the same order, the two
alternating step by step. Reported: real (non-pad) target tokens per second, forward + backward +
optimizer step, median over repeats, the median ratio of back-to-back steps on the same batch, and the
model FLOP utilisation against the matmul peak of the same dtype measured between the rounds.
With `--device cuda` both models and the batches live on the GPU, every step ends in a synchronisation,
and the memory reported is torch.cuda.max_memory_allocated per configuration instead of the peak RSS.

    attnlab bench train --size small --out benchmarks/results/train_small.json
    attnlab bench train --size base --batches 4 --out benchmarks/results/train_base.json
    attnlab bench train --configs ref-fp32,ref-fp32-compile,attnlab-fp32,attnlab-fp32-compile   # torch.compile
    attnlab bench train --device cuda --size base --out benchmarks/results/train_base_cuda.json

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time

import torch

from attnlab.bench.common import (SIZES, ReferenceTranslator, bench_device, device_info, label_smoothed_ce, matmul_peak,
                                   peak_rss_mib, reset_peak_rss, synchronizer, synthetic_pairs, write_report)

from attnlab import Transformer, TransformerConfig
from attnlab.data.batching import Batch, collate
from attnlab.training.config import TrainConfig
from attnlab.training.loop import Trainer
from attnlab.training.schedule import inverse_sqrt_schedule


def training_flops(batches: list[Batch], d: int, layers: int, d_ff: int, vocab: int) -> float:
    """Useful matmul FLOPs of forward + backward (3x forward) over the real tokens of `batches`."""
    total = 0.0
    for b in batches:
        s_len = (b.src != 0).sum(1).double()
        t_len = (b.tgt_out != 0).sum(1).double()
        enc = layers * (2 * (4 * d * d + 2 * d * d_ff) + 4 * s_len * d) * s_len  # per sentence
        dec = layers * (2 * (6 * d * d + 2 * d * d_ff) + 4 * t_len * d / 2 + 4 * s_len * d) * t_len
        cross_kv = layers * 2 * 2 * d * d * s_len
        out = 2 * d * vocab * t_len
        total += float((enc + dec + cross_kv + out).sum())
    return 3 * total


def make_batches(n_batches: int, batch_size: int, vocab: int, seed: int) -> list[Batch]:
    pairs = synthetic_pairs(n_batches * batch_size, vocab, seed)
    return [collate(pairs[i:i + batch_size], 0) for i in range(0, len(pairs), batch_size)]


def reference_step_fn(model: ReferenceTranslator, amp: str, warmup: int, d_model: int, device: torch.device):
    opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    sched = inverse_sqrt_schedule(opt, d_model, warmup, 1.0)

    def step(batch: Batch) -> float:
        model.train()
        ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else
               torch.autocast(device.type, enabled=False))
        with ctx:
            logits = model(batch.src, batch.tgt_in)
        loss = label_smoothed_ce(logits, batch.tgt_out) / batch.n_tokens
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return float(loss.detach())

    return step


def attnlab_step_fn(model: Transformer, amp: str, warmup: int, pairs_for_sampler, device: torch.device):
    cfg = TrainConfig(amp=amp, warmup_steps=warmup, clip_norm=1.0, label_smoothing=0.1)
    trainer = Trainer(model, pairs_for_sampler, None, cfg, tempfile.mkdtemp(prefix="attnlab-bench-"), device=device,
                      progress=False)

    def step(batch: Batch) -> float:
        return trainer.train_step([batch])["loss"]

    return step


def make_step(name: str, size: dict, batches: list[Batch], device: torch.device = torch.device("cpu")):
    """name: FAMILY-AMP[-compile], e.g. ref-fp32, attnlab-bf16, ref-fp32-compile (torch.compile, dynamic shapes).
    The model is built on `device` (the batches must be there too)."""
    parts = name.split("-")
    family, amp, extra = parts[0], (parts[1] if len(parts) > 1 else ""), parts[2:]
    if family not in ("ref", "attnlab") or amp not in ("fp32", "bf16") or extra not in ([], ["compile"]):
        raise ValueError(f"unknown configuration {name!r}: expected (ref|attnlab)-(fp32|bf16)[-compile]")
    d, h, n, d_ff, vocab = size["d_model"], size["n_heads"], size["n_layers"], size["d_ff"], size["vocab"]
    torch.manual_seed(0)
    if family == "ref":
        model = ReferenceTranslator(d, h, n, d_ff, vocab).to(device)
        return reference_step_fn(torch.compile(model, dynamic=True) if extra else model, amp, 4000, d, device)
    cfg = TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=d, n_heads=h, n_layers=n,
                            d_ff=d_ff, dropout=0.1, share_embeddings=True)
    model = Transformer(cfg).to(device)
    return attnlab_step_fn(torch.compile(model, dynamic=True) if extra else model, "none" if amp == "fp32" else amp,
                           4000, [(b.src[0].tolist(), b.tgt_in[0].tolist()) for b in batches], device)


def memory_probe(args: argparse.Namespace) -> None:
    """Child process: a few training steps of one configuration, then the peak RSS (MiB) during them as JSON
    (the whole process: model, Adam state, activations, data; not what imports touched before)."""
    import json

    batches = make_batches(args.batches, args.batch_size, SIZES[args.size]["vocab"], seed=0)
    step = make_step(args.memory_probe, SIZES[args.size], batches)
    reset_peak_rss()
    for b in batches[:3]:
        step(b)
    print(json.dumps({"peak_rss_mib": round(peak_rss_mib(), 1)}))


def peak_rss(name: str, args: argparse.Namespace) -> float:
    import json
    import subprocess

    out = subprocess.run([sys.executable, "-m", "attnlab.bench.train", "--size", args.size, "--batches", str(args.batches),
                          "--batch-size", str(args.batch_size), "--memory-probe", name],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def peak_gpu_mib(name: str, size: dict, batches: list[Batch], device: torch.device) -> float:
    """In this process, once the timed configurations are freed: a fresh configuration, three training steps,
    then torch.cuda.max_memory_allocated (MiB): model, Adam state, activations, batches."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step = make_step(name, size, batches, device)
    for b in batches[:3]:
        step(b)
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="attnlab bench train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=8, help="distinct batches per timed round")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per configuration (median)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--configs", default="ref-fp32,ref-bf16,attnlab-fp32,attnlab-bf16",
                    help="comma list of (ref|attnlab)-(fp32|bf16)[-compile]")
    ap.add_argument("--skip-memory", action="store_true", help="do not measure peak memory per configuration")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--out", default=None)
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_probe:
        return memory_probe(args)
    device = bench_device(ap, args.device)
    sync = synchronizer(device) or (lambda: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    d, n, d_ff, vocab = size["d_model"], size["n_layers"], size["d_ff"], size["vocab"]
    batches = make_batches(args.batches, args.batch_size, vocab, seed=0)
    real_tokens = sum(b.n_tokens for b in batches)
    padded_tokens = sum(b.tgt_out.numel() for b in batches)
    flops = training_flops(batches, d, n, d_ff, vocab)
    batches = [b.to(device) for b in batches]

    steps = {name: make_step(name, size, batches, device) for name in args.configs.split(",")}
    for name, step in steps.items():  # warm-up: allocator, kernels, lazy init; torch.compile: every shape
        for b in (batches if name.endswith("-compile") else batches[:2]):
            step(b)
    sync()

    times: dict[str, list[float]] = {name: [] for name in steps}
    step_times: dict[str, list[float]] = {name: [] for name in steps}
    amps = {amp: {"fp32": torch.float32, "bf16": torch.bfloat16}[amp] for amp in {n.split("-")[1] for n in steps}}
    peak_samples: dict[str, list[float]] = {amp: [] for amp in amps}
    for _ in range(args.repeats):
        # alternate step by step, so that drift of the machine's speed (on shared machines, ±10-20% within
        # seconds) hits every configuration alike; a round's time is the sum of its steps
        spent = dict.fromkeys(steps, 0.0)
        for b in batches:
            for name, step in steps.items():
                t0 = time.perf_counter()
                step(b)
                sync()  # the reference's float(loss) waits for its step; attnlab's optimizer step may still run
                step_times[name].append(time.perf_counter() - t0)
                spent[name] += step_times[name][-1]
        for name in steps:
            times[name].append(spent[name])
        for dtype in amps:  # the MFU denominator, measured between the rounds, under the same drift
            peak_samples[dtype].append(matmul_peak(amps[dtype], device=device))

    peaks = {amp: statistics.median(samples) for amp, samples in peak_samples.items()}
    results = {}
    for name, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        amp = name.split("-")[1]
        results[name] = {"tokens_per_s": round(real_tokens / med, 1), "seconds_per_round": round(med, 4),
                         "rounds": [round(t, 4) for t in ts],
                         "tflops": round(flops / med / 1e12, 4), "mfu": round(flops / med / peaks[amp], 4)}
    del steps, step  # the timed models (the loop variable holds one too): each is measured alone below
    if not args.skip_memory:
        for name in results:
            if device.type == "cuda":
                results[name]["peak_gpu_allocated_mib"] = peak_gpu_mib(name, size, batches, device)
            else:
                results[name]["peak_rss_mib"] = peak_rss(name, args)
    base = results.get("ref-fp32", {}).get("tokens_per_s")
    ratios = {f"{name}_vs_ref-fp32": round(r["tokens_per_s"] / base, 3) for name, r in results.items() if base}
    if base:  # the same batch, back to back: the ratio least touched by the machine's drift
        ref_steps = step_times["ref-fp32"]
        ratios.update({f"{name}_vs_ref-fp32_median_of_step_pairs": round(statistics.median(
            r / a for r, a in zip(ref_steps, step_times[name])), 3) for name in results if name != "ref-fp32"})
    if "ref-bf16" in results:
        ratios.update({f"{name}_vs_ref-bf16": round(r["tokens_per_s"] / results["ref-bf16"]["tokens_per_s"], 3)
                       for name, r in results.items() if name.startswith("attnlab")})
    write_report(args.out, {
        "benchmark": "training throughput (real target tokens/s, forward+backward+Adam step)",
        "device": device_info(device),
        "size": {"name": args.size, **size}, "batch_size": args.batch_size, "batches_per_round": args.batches,
        "repeats": args.repeats, "real_target_tokens_per_round": real_tokens,
        "padded_target_tokens_per_round": padded_tokens,
        "matmul_peak_tflops": {k: round(v / 1e12, 4) for k, v in peaks.items()},
        "results": results, "ratios": ratios,
    })


if __name__ == "__main__":
    main()
