"""A published Marian (opus-mt-de-en shape) directory on a CPU: attnlab vs transformers' generate vs CTranslate2.

The directory is a stand-in written by transformers + sentencepiece (tests/export/marian_standin.py): the
opus-mt-de-en shape (d_model 512, 6+6 layers, 8 heads, FFN 2048, swish, vocabulary 58,101, sentencepiece
models trained on Multi30k), random weights. Random weights never choose </s> (its logit bias is -1e4
here), so every system decodes the same, realistic number of tokens: each batch of 32 sentences (sorted
by length, the same batches for every system) decodes as many target tokens as its longest source has.
CTranslate2 converts the very same directory with its own converter (ct2-transformers-converter).

Every (system, mode, precision) runs in a fresh process (its peak RSS is its own); systems alternate within
each round, the first one rotating. Speed is target tokens per second, the median over rounds.

    python benchmarks/bench_pretrained.py --out benchmarks/results/pretrained.json
    python benchmarks/bench_pretrained.py --quality /tmp/tiny-standin --sentences 500 \
        --out benchmarks/results/pretrained_int8_quality.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "export"))
sys.path.insert(0, str(REPO / "src"))

SYSTEMS = ("attnlab", "transformers", "ctranslate2")
BATCH = 32


def multi30k(name: str, data: Path) -> list[str]:
    with gzip.open(data / "multi30k" / "raw" / name, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def build(model_dir: Path, data: Path) -> None:
    import torch

    from marian_standin import write_marian_standin

    if (model_dir / "config.json").is_file():
        return
    write_marian_standin(model_dir, multi30k("train.de.gz", data), multi30k("train.en.gz", data), shape="opus-mt",
                         spm_vocab=8000, vocab_size=58101, eos_bias=-1e4, init_std=0.02)
    del torch


def convert(model_dir: Path, ct2_dir: Path) -> None:
    if not (ct2_dir / "model.bin").is_file():
        import ctranslate2

        ctranslate2.converters.TransformersConverter(str(model_dir)).convert(str(ct2_dir), force=True)


def batches(model_dir: Path, data: Path, n: int) -> list[list[list[int]]]:
    from attnlab.data.marian_tokenizer import MarianTokenizerPair

    tok = MarianTokenizerPair.load(model_dir)
    ids = [tok.src.encode(s) + [tok.src.eos_id] for s in multi30k("test_2016_flickr.de.gz", data)[:n]]
    ids.sort(key=len)
    return [ids[i:i + BATCH] for i in range(0, len(ids), BATCH)]


def child(args: argparse.Namespace) -> None:
    """Decode every batch once with one system; print seconds, tokens, peak RSS (MiB) as one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    model_dir, data = Path(args.model_dir), Path(args.data)
    work = batches(model_dir, data, args.sentences)
    beam, int8 = args.beam, args.precision == "int8"
    if args.system == "attnlab":
        from attnlab.translate import DecodeConfig, Translator

        tr = Translator.load(model_dir)
        if int8:
            tr.quantize_int8()

        def run(batch: list[list[int]], new: int) -> int:
            out = tr.translate_ids(batch, DecodeConfig(beam=beam, max_len_a=0, max_len_b=new, batch_tokens=10**9))
            return sum(len(o[0]) + 1 for o in out)  # + the forced </s>
    elif args.system == "transformers":
        from transformers import MarianMTModel

        hf = MarianMTModel.from_pretrained(model_dir).eval()
        if int8:
            from torch.ao.quantization import quantize_dynamic

            hf = quantize_dynamic(hf, {torch.nn.Linear}, dtype=torch.qint8)
        pad = hf.config.pad_token_id

        def run(batch: list[list[int]], new: int) -> int:
            width = max(map(len, batch))
            src = torch.tensor([b + [pad] * (width - len(b)) for b in batch])
            with torch.no_grad():
                out = hf.generate(input_ids=src, attention_mask=src != pad, num_beams=beam, max_length=new + 1)
            return int(((out[:, 1:] != pad)).sum())
    else:
        import ctranslate2

        from attnlab.data.marian_tokenizer import MarianTokenizerPair

        tok = MarianTokenizerPair.load(model_dir)
        ct2 = ctranslate2.Translator(str(args.ct2_dir), device="cpu", compute_type="int8" if int8 else "float32",
                                     inter_threads=1, intra_threads=args.threads)

        def run(batch: list[list[int]], new: int) -> int:
            pieces = [[tok.src.id_to_token(i) for i in b] for b in batch]
            out = ct2.translate_batch(pieces, beam_size=beam, max_decoding_length=new, min_decoding_length=0,
                                      length_penalty=1.0, max_batch_size=0)
            return sum(len(r.hypotheses[0]) for r in out)

    run(work[0][:2], 3)  # warm-up (allocations, oneDNN kernels)
    t0 = time.perf_counter()
    tokens = sum(run(b, max(map(len, b))) for b in work)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "tokens": tokens, "peak_rss_mib": round(rss, 1)}))


def int8_quality(model_dir: Path, n: int) -> dict:
    """BLEU of attnlab fp32 and int8 on a small stand-in trained on a copy task (random weights have no
    quality to lose): against the references (the copied text) and int8 against the fp32 outputs."""
    from marian_standin import generated_text, write_marian_standin

    from attnlab.metrics.bleu import corpus_scores
    from attnlab.translate import DecodeConfig, Translator

    if not (model_dir / "config.json").is_file():
        write_marian_standin(model_dir, generated_text(2000, 1), generated_text(2000, 2), train_steps=300)
    texts = generated_text(n, 21)
    fp32 = Translator.load(model_dir)
    out = {}
    for beam in (1, 4):
        cfg = DecodeConfig(beam=beam)
        a = fp32.translate(texts, cfg)
        b = Translator.load(model_dir).quantize_int8().translate(texts, cfg)
        out[f"beam{beam}"] = {"bleu_fp32_vs_ref": round(corpus_scores(a, texts)["bleu"], 2),
                              "bleu_int8_vs_ref": round(corpus_scores(b, texts)["bleu"], 2),
                              "bleu_int8_vs_fp32_outputs": round(corpus_scores(b, a)["bleu"], 2),
                              "identical_outputs": sum(x == y for x, y in zip(a, b))}
    return {"what": f"tiny Marian stand-in (d_model 32, 2+2 layers, swish) trained 300 steps on a copy task, "
                    f"{n} generated sentences", **out}


def cpu() -> dict:
    info = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and "model" not in info:
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags") and "flags" not in info:
                flags = line.split(":", 1)[1].split()
                info["flags"] = sorted(f for f in flags if f.startswith(("avx", "fma", "sse4", "amx", "f16c", "vnni"))
                                       or "vnni" in f)
    except OSError:
        pass
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default="/tmp/attnlab-opus-mt-de-en-standin")
    p.add_argument("--ct2-dir", default=None)
    p.add_argument("--data", default=os.environ.get("ATTNLAB_DATA_DIR", str(REPO.parent / "shared" / "data")))
    p.add_argument("--sentences", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--configs", default="greedy-fp32,greedy-int8,beam4-fp32,beam4-int8")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--out", default=None)
    p.add_argument("--quality", default=None, metavar="DIR",
                   help="instead: int8 vs fp32 BLEU on a small trained stand-in (built in DIR when absent)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.ct2_dir = args.ct2_dir or args.model_dir + "-ct2"
    if args.quality:
        quality = int8_quality(Path(args.quality), args.sentences)
        print(json.dumps(quality, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(quality, indent=2) + "\n")
        return None
    if args.child:
        args.system, mode, args.precision = args.child.split(":")
        args.beam = 1 if mode == "greedy" else int(mode.removeprefix("beam"))
        return child(args)

    args.load_at_start = os.getloadavg()[0]
    build(Path(args.model_dir), Path(args.data))
    convert(Path(args.model_dir), Path(args.ct2_dir))
    systems = args.systems.split(",")
    results: dict[str, dict[str, list]] = {}
    for r in range(args.rounds):
        for config in args.configs.split(","):
            order = systems[r % len(systems):] + systems[: r % len(systems)]
            for system in order:
                mode, precision = config.split("-")
                cmd = [sys.executable, __file__, "--child", f"{system}:{mode}:{precision}", "--model-dir",
                       args.model_dir, "--ct2-dir", args.ct2_dir, "--data", args.data, "--sentences",
                       str(args.sentences), "--threads", str(args.threads)]
                line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                got = json.loads(line)
                print(config, system, got, flush=True)
                results.setdefault(config, {}).setdefault(system, []).append(got)
                report(args, results)  # after every run: a partial JSON survives an interrupted benchmark


def report(args: argparse.Namespace, results: dict[str, dict[str, list]]) -> None:
    out: dict[str, Any] = {"what": "opus-mt-de-en-shaped Marian directory (random weights, forced lengths), "
                            f"{args.sentences} Multi30k test2016 German sentences, batches of {BATCH}",
                           "threads": args.threads, "rounds": args.rounds, "cpu": cpu(),
                           "load_average_1min_at_start": args.load_at_start,
                           "load_average_1min_now": os.getloadavg()[0],
                           "results": {}}
    for config, by_system in results.items():
        entry = {}
        for system, runs in by_system.items():
            speed = statistics.median(x["tokens"] / x["seconds"] for x in runs)
            entry[system] = {"target_tokens_per_s": round(speed, 1), "tokens": runs[0]["tokens"],
                             "seconds": [round(x["seconds"], 2) for x in runs],
                             "peak_rss_mib": max(x["peak_rss_mib"] for x in runs)}
        if "attnlab" in entry:
            for other in ("transformers", "ctranslate2"):
                if other in entry:
                    entry[f"attnlab_vs_{other}"] = round(entry["attnlab"]["target_tokens_per_s"]
                                                         / entry[other]["target_tokens_per_s"], 3)
        out["results"][config] = entry
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
