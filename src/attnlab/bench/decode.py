"""Decoding speed: attnlab greedy / beam search vs Hugging Face MarianMTModel.generate with the same
weights, and vs the tutorial's nn.Transformer greedy loop without a cache. Same process, same inputs.

The attnlab model (randomly initialised) is exported to Marian with attnlab.export.hf, so both decode
the very same network; the JSON records whether their greedy outputs agree token for token. Random
weights never choose EOS, so every system decodes the full `--max-len` tokens: equal work.

Also measured: decoding memory against output length (peak RSS of a fresh process per length, KV
cache vs recomputation), and dynamic int8 quantisation, attnlab's and torch.ao's on Marian (speed only;
BLEU before/after is in benchmarks/multi30k_quality.py --int8).

With `--device cuda` every system decodes on the GPU and each timed call ends in a synchronisation; int8
(CPU kernels) is skipped and the memory curve is torch.cuda.max_memory_allocated in this process.

    attnlab bench decode --out benchmarks/results/decode_small.json
    attnlab bench decode --device cuda --out benchmarks/results/decode_small_cuda.json

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import torch

from attnlab.bench.common import (BOS, EOS, PAD, SIZES, ReferenceTranslator, bench_device, device_info,
                                   interleaved_medians, peak_rss_mib, reference_greedy, reset_peak_rss, rss_mib,
                                   synchronizer, synthetic_pairs, write_report)

from attnlab import Transformer, TransformerConfig
from attnlab.data.batching import pad_to_tensor
from attnlab.decoding import beam_search, greedy


def build(size: str, seed: int = 0) -> Transformer:
    s = SIZES[size]
    torch.manual_seed(seed)
    cfg = TransformerConfig(src_vocab_size=s["vocab"], tgt_vocab_size=s["vocab"], d_model=s["d_model"],
                            n_heads=s["n_heads"], n_layers=s["n_layers"], d_ff=s["d_ff"], dropout=0.1,
                            share_embeddings=True)
    return Transformer(cfg).eval()


def to_marian(model: Transformer, bos: int = BOS, eos: int = EOS):
    from transformers import MarianConfig, MarianMTModel

    from attnlab.export.hf import marian_config_dict, marian_state_dict

    hf = MarianMTModel(MarianConfig(**marian_config_dict(model.cfg, bos, eos)))
    missing, unexpected = hf.load_state_dict(marian_state_dict(model), strict=False)
    bad = [k for k in missing if "embed_positions" not in k]
    if bad or unexpected:
        raise RuntimeError(f"Marian weights do not fit: missing {bad}, unexpected {unexpected}")
    # Marian forces EOS at the length limit; attnlab does not: switch it off so both decode the same tokens
    hf.generation_config.forced_eos_token_id = None
    return hf.eval()


def marian_int8(hf):
    """Marian with torch.ao's dynamic int8 linear layers (per-tensor weights), the int8 counterpart."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(hf, {torch.nn.Linear}, dtype=torch.qint8, inplace=False).eval()


def sources(n: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return pad_to_tensor([s for s, _ in synthetic_pairs(n, vocab, seed)], PAD)


def memory_probe(args: argparse.Namespace) -> None:
    """Child process: decode once at --probe-len and print the RSS before and its peak during decoding (MiB)."""
    model = build(args.size)
    src = sources(args.batch, model.cfg.src_vocab_size)[: args.batch]
    torch.set_num_threads(1)
    with torch.no_grad():
        greedy(model, src[:1], max_len=2, bos_id=BOS, eos_id=EOS)  # load the kernels before measuring
    reset_peak_rss()
    before = rss_mib()
    with torch.no_grad():
        greedy(model, src, max_len=args.probe_len, bos_id=BOS, eos_id=EOS, use_cache=args.probe_cache == "cache")
    print(json.dumps({"before_mib": before, "peak_mib": peak_rss_mib()}))


def memory_curve(args: argparse.Namespace, lengths: list[int]) -> dict:
    curve = {}
    for mode in ("cache", "recompute"):
        rows = []
        for n in lengths:
            out = subprocess.run([sys.executable, "-m", "attnlab.bench.decode", "--size", args.size, "--batch", str(args.memory_batch),
                                  "--probe-len", str(n), "--probe-cache", mode], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"output_len": n, "decode_mib": round(r["peak_mib"] - r["before_mib"], 1),
                         "peak_rss_mib": round(r["peak_mib"], 1)})
        curve[mode] = rows
    return curve


def gpu_memory_curve(model: Transformer, src: torch.Tensor, lengths: list[int], bos: int, eos: int) -> dict:
    """In this process: torch.cuda.max_memory_allocated while decoding to each output length, with the KV
    cache and recomputing, over what was allocated before (the model, the sources)."""
    device = src.device
    curve = {}
    for mode in ("cache", "recompute"):
        rows = []
        for n in lengths:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            with torch.no_grad():
                greedy(model, src, max_len=n, bos_id=bos, eos_id=eos, use_cache=mode == "cache")
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            rows.append({"output_len": n, "decode_mib": round((peak - before) / 2**20, 1),
                         "peak_gpu_allocated_mib": round(peak / 2**20, 1)})
        curve[mode] = rows
    return curve


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="attnlab bench decode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-lengths", default="64,128,256,512")
    ap.add_argument("--memory-batch", type=int, default=8)
    ap.add_argument("--skip", default="", help="comma list of: hf, reference, memory, int8")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (on cuda: no int8, GPU memory)")
    ap.add_argument("--model", default=None, help="a trained run directory instead of random weights")
    ap.add_argument("--src", default=None, help="with --model: source sentences, one per line (.gz ok)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--probe-len", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--probe-cache", default="cache", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe_len:
        return memory_probe(args)
    skip = set(filter(None, args.skip.split(",")))
    device = bench_device(ap, args.device)
    skipped_on_gpu = {}
    if device.type == "cuda" and "int8" not in skip:
        skip.add("int8")
        skipped_on_gpu["int8"] = "dynamic int8 quantisation runs on the CPU only"
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model:  # a trained model on real sentences: outputs end at EOS, at different lengths
        from attnlab.data.corpora import read_lines
        from attnlab.translate import Translator, source_ids

        if not args.src:
            ap.error("--model needs --src FILE")
        translator = Translator.load(args.model, device)
        model, bos, eos = translator.model, translator.bos_id, translator.eos_id
        lines = [line for line in read_lines(args.src) if line.strip()][: args.batch]
        src = pad_to_tensor([source_ids(translator.tokenizers, line) for line in lines], model.pad_id)
        skip |= {"reference"}  # the tutorial model has other (random) weights: not the same work
    else:
        model, bos, eos = build(args.size).to(device), BOS, EOS
        src = sources(args.batch, model.cfg.src_vocab_size)
    src = src.to(device)
    n, t = src.size(0), args.max_len
    # every system is timed in alternating rounds (common.interleaved_medians), greedy ones together and
    # beam ones together, so that the machine's drift hits attnlab and its reference alike
    greedy_fns: dict[str, Any] = {"attnlab_greedy": lambda: greedy(model, src, max_len=t, bos_id=bos, eos_id=eos)}
    beam_fns: dict[str, Any] = {f"attnlab_beam{args.beam}": lambda: beam_search(
        model, src, beam_size=args.beam, max_len=t, bos_id=bos, eos_id=eos)}
    slow_fns: dict[str, Any] = {"attnlab_greedy_no_cache": lambda: greedy(
        model, src, max_len=t, bos_id=bos, eos_id=eos, use_cache=False)}
    agree = None
    if "hf" not in skip:
        hf = to_marian(model, bos, eos).to(device)
        attention_mask = src != model.pad_id
        with torch.no_grad():
            ours = greedy(model, src, max_len=t, bos_id=bos, eos_id=eos)
            theirs = hf.generate(input_ids=src, attention_mask=attention_mask, max_new_tokens=t, num_beams=1,
                                 do_sample=False)[:, 1:]
        width = min(ours.size(1), theirs.size(1))
        agree = float((ours[:, :width] == theirs[:, :width]).float().mean())

        def hf_generate(beams: int, system=hf):
            with torch.no_grad():
                system.generate(input_ids=src, attention_mask=attention_mask, max_new_tokens=t, num_beams=beams,
                            do_sample=False, length_penalty=0.6 if beams > 1 else 1.0, early_stopping=True)

        greedy_fns["hf_marian_greedy"] = lambda: hf_generate(1)
        beam_fns[f"hf_marian_beam{args.beam}"] = lambda: hf_generate(args.beam)
    if "reference" not in skip:
        s = SIZES[args.size]
        torch.manual_seed(0)
        ref = ReferenceTranslator(s["d_model"], s["n_heads"], s["n_layers"], s["d_ff"], s["vocab"]).to(device).eval()
        slow_fns["nn_transformer_greedy_no_cache"] = lambda: reference_greedy(ref, src, t + 1)
    if "int8" not in skip:  # dynamic int8 on both sides: attnlab's (attnlab.quantize), torch.ao's for Marian
        from attnlab.quantize import quantize_int8

        q = quantize_int8(model)
        greedy_fns["attnlab_int8_greedy"] = lambda: greedy(q, src, max_len=t, bos_id=bos, eos_id=eos)
        beam_fns[f"attnlab_int8_beam{args.beam}"] = lambda: beam_search(
            q, src, beam_size=args.beam, max_len=t, bos_id=bos, eos_id=eos)
        if "hf" not in skip:
            hf_q = marian_int8(hf)
            greedy_fns["hf_marian_int8_greedy"] = lambda: hf_generate(1, hf_q)
            beam_fns[f"hf_marian_int8_beam{args.beam}"] = lambda: hf_generate(args.beam, hf_q)
    runs: dict[str, float] = {}
    for fns in (greedy_fns, beam_fns, slow_fns):
        runs.update(interleaved_medians(fns, args.repeats, synchronizer(device)))

    results = {k: {"seconds": round(v, 4), "sentences_per_s": round(n / v, 1)} for k, v in runs.items()}
    ratios = {}
    beam = f"beam{args.beam}"
    for ours, theirs in (("attnlab_greedy", "hf_marian_greedy"), (f"attnlab_{beam}", f"hf_marian_{beam}"),
                         ("attnlab_greedy", "nn_transformer_greedy_no_cache"),
                         ("attnlab_greedy", "attnlab_greedy_no_cache"), ("attnlab_int8_greedy", "attnlab_greedy"),
                         ("attnlab_int8_greedy", "hf_marian_int8_greedy"), (f"attnlab_int8_{beam}", f"hf_marian_int8_{beam}"),
                         ("attnlab_int8_greedy", "hf_marian_greedy"), (f"attnlab_int8_{beam}", f"hf_marian_{beam}")):
        if ours in runs and theirs in runs:
            ratios[f"{ours}_vs_{theirs}"] = round(runs[theirs] / runs[ours], 3)
    what = (f"a trained model ({args.model}) on the first {n} sentences of {args.src}" if args.model else
            "randomly initialised weights: every system decodes max_len tokens")
    report = {"benchmark": f"decoding speed (sentences/s), {what}", "device": device_info(device),
              "size": ({k: model.cfg.to_dict()[k] for k in ("d_model", "n_heads", "n_layers", "d_ff", "tgt_vocab_size")}
                       if args.model else {"name": args.size, **SIZES[args.size]}), "batch": n, "max_len": t, "beam": args.beam,
              "repeats": args.repeats, "greedy_token_agreement_with_hf": agree, "results": results, "ratios": ratios}
    if skipped_on_gpu:
        report["skipped_on_gpu"] = skipped_on_gpu
    if "memory" not in skip:
        lengths = [int(x) for x in args.memory_lengths.split(",")]
        if device.type == "cuda":  # the RSS of a fresh process per length says nothing of the GPU's memory
            curve = gpu_memory_curve(model, sources(args.memory_batch, model.cfg.src_vocab_size).to(device),
                                     lengths, bos, eos)
            report["memory_vs_output_length"] = {
                "batch": args.memory_batch, "measure": "torch.cuda.max_memory_allocated in this process", **curve}
        else:
            report["memory_vs_output_length"] = {"batch": args.memory_batch, **memory_curve(args, lengths)}
    write_report(args.out, report)


if __name__ == "__main__":
    main()
