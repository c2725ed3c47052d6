"""Training on millions of pairs: preparation speed and memory, training memory against corpus size, time to
the first step, and training speed from the memmaps against the in-memory path.

Corpora with WMT-like lengths are generated from Multi30k's training sentences (1-3 joined into one
pair, shuffled) under --work (never committed). Every measurement runs `python -m attnlab ...` in a child
process; peak RSS is the child's own (wait4), for preparation also the sum over its worker processes
(sampled every 0.1 s). Writes benchmarks/results/bench_data.json.

    python benchmarks/bench_data.py --sizes 100000,1000000,4500000 --raw-pairs 2000000
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def multi30k_sentences(data_dir: Path) -> tuple[list[str], list[str]]:
    raw = data_dir / "multi30k" / "raw"
    read = lambda p: gzip.open(p, "rt", encoding="utf-8").read().split("\n")[:-1]  # noqa: E731
    return read(raw / "train.de.gz"), read(raw / "train.en.gz")


def generate(path: Path, n: int, de: list[str], en: list[str], seed: int = 0) -> tuple[Path, Path]:
    """n pairs, each 1-3 random Multi30k pairs joined (WMT-like: ~25 words, a long tail), in random order."""
    src, tgt = path / "train.de", path / "train.en"
    if src.is_file() and tgt.is_file():
        return src, tgt
    path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    m = len(de)
    with open(f"{src}.tmp", "w") as fs, open(f"{tgt}.tmp", "w") as ft:
        for start in range(0, n, 100_000):
            block_s, block_t = [], []
            for _ in range(min(100_000, n - start)):
                idx = [rng.randrange(m) for _ in range(rng.randint(1, 3))]
                block_s.append(" ".join(de[i] for i in idx))
                block_t.append(" ".join(en[i] for i in idx))
            fs.write("\n".join(block_s) + "\n")
            ft.write("\n".join(block_t) + "\n")
    os.replace(f"{src}.tmp", src)
    os.replace(f"{tgt}.tmp", tgt)
    return src, tgt


def _tree_rss_kb(pid: int) -> int:
    """RSS of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def run(cmd: list[str], watch: Path | None = None, until_step: int | None = None) -> dict:
    """Run a child; its wall time, own peak RSS (wait4), peak RSS summed over its process tree, and with
    `watch` (a log.jsonl) the seconds until each logged training step."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    peak_tree, step_times, stop = [0], {}, threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak_tree[0] = max(peak_tree[0], _tree_rss_kb(proc.pid))
            if watch is not None and watch.is_file():
                for line in watch.read_text().splitlines():
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if e.get("event") == "train" and e["step"] not in step_times:
                        step_times[e["step"]] = time.perf_counter() - t0
            stop.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr.decode()[-1500:]}")
    return {"seconds": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "peak_rss_tree_mb": round(peak_tree[0] / 1024, 1), "step_seconds": step_times}


def prepare(src: Path, tgt: Path, out: Path, n: int, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    r = run([sys.executable, "-m", "attnlab", "prepare", "--train-src", str(src), "--train-tgt", str(tgt),
             "--out", str(out), "--workers", str(workers), "--no-progress"])
    manifest = json.loads((out / "manifest.json").read_text())
    return {"pairs": n, "seconds": r["seconds"], "pairs_per_s": round(n / r["seconds"]),
            "phases_seconds": manifest["seconds"], "kept": manifest["splits"]["train"]["pairs"],
            "dropped": manifest["splits"]["train"]["dropped"], "peak_rss_main_mb": r["peak_rss_mb"],
            "peak_rss_all_processes_mb": r["peak_rss_tree_mb"],
            "bin_mb": round(sum(p.stat().st_size for p in out.glob("*.bin")) / 2**20, 1)}


# max_tokens 1,500 (not the files default 4,096): steps 3x shorter on the shared 2-core machine; memory is about
# the corpus, which this does not change
MAX_TOKENS = 1500
TRAIN_SETS = ["--no-progress", "--set", "log_every=1", "--set", "eval_every=100000", "--set", "eval_bleu_sentences=0",
              "--set", "threads=2", "--set", f"max_tokens={MAX_TOKENS}"]


def train_prepared(data: Path, run_dir: Path, steps: int, preset: str) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    r = run([sys.executable, "-m", "attnlab", "train", "--data-bin", str(data), "--out", str(run_dir),
             "--max-steps", str(steps), "--preset", preset, *TRAIN_SETS], watch=run_dir / "log.jsonl")
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    rates = sorted(e["tokens_per_s"] for e in log if e["event"] == "train" and e["step"] > 10)
    return {"steps": steps, "preset": preset, "max_tokens": MAX_TOKENS, "peak_rss_mb": r["peak_rss_mb"],
            "first_step_s": round(r["step_seconds"].get(1, float("nan")), 2),
            "median_tokens_per_s_after_step_10": round(rates[len(rates) // 2]) if rates else None,
            "seconds": r["seconds"]}


def speed_vs_in_memory(data: Path, steps: int, rounds: int, preset: str) -> dict:
    """Training tokens/s from the memmaps vs the same examples as Python lists (the in-memory path), in
    this process, alternating rounds; both see the same batches (same lengths, same sampler)."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from attnlab.config import TRANSFORMER_PRESETS, TransformerConfig
    from attnlab.data.binarized import BinarizedPairs
    from attnlab.models.transformer import Transformer
    from attnlab.training.config import TrainConfig
    from attnlab.training.loop import Trainer

    torch.set_num_threads(2)
    memmap = BinarizedPairs(data, "train")
    in_memory = [memmap[i] for i in range(len(memmap))]
    vocab = json.loads((data / "manifest.json").read_text())["vocab_size"][0]
    cfg = TrainConfig(max_tokens=MAX_TOKENS, warmup_steps=4000, amp="none", threads=2)
    results: dict[str, list[float]] = {"memmap": [], "in_memory": []}
    for _ in range(rounds):
        for name, train in (("memmap", memmap), ("in_memory", in_memory)):
            torch.manual_seed(0)
            model = Transformer(TransformerConfig(**{**TRANSFORMER_PRESETS[preset], "src_vocab_size": vocab,
                                                     "tgt_vocab_size": vocab, "share_embeddings": True}))
            trainer = Trainer(model, train, None, cfg, Path("/tmp/attnlab_bench_unused"), "cpu", progress=False)
            trainer.sampler.set_epoch(0)
            tokens, seconds = 0, 0.0
            for k in range(min(steps, len(trainer.sampler))):
                t = time.perf_counter()
                stats = trainer.train_step([trainer._train_batch(trainer.sampler.batch(k))])
                if k >= 3:  # warm-up steps not counted
                    seconds += time.perf_counter() - t
                    tokens += stats["tokens"]
            results[name].append(tokens / seconds)
    med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    return {"steps_per_round": steps, "rounds": rounds, "preset": preset, "tokens_per_s": results,
            "median_tokens_per_s": {k: round(v) for k, v in med.items()},
            "memmap_over_in_memory": round(med["memmap"] / med["in_memory"], 3)}


def raw_to_step(src: Path, tgt: Path, run_dir: Path, step: int) -> dict:
    """`attnlab train --task files` from raw text (preparation included) to the given step, default model."""
    shutil.rmtree(run_dir, ignore_errors=True)
    r = run([sys.executable, "-m", "attnlab", "train", "--task", "files", "--train-src", str(src), "--train-tgt", str(tgt),
             "--out", str(run_dir), "--max-steps", str(step), *TRAIN_SETS[:-2]], watch=run_dir / "log.jsonl")
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    return {"step": step, "max_tokens": "the files default", "seconds_to_step": round(r["step_seconds"].get(step, float("nan")), 1),
            "first_step_s": round(r["step_seconds"].get(1, float("nan")), 1), "peak_rss_mb": r["peak_rss_mb"],
            "prepare_phases_seconds": manifest["seconds"], "preset": "small (the files default)"}


def tile_dataset(src: Path, out: Path, n: int) -> Path:
    """A prepared dataset of n training pairs made by repeating a smaller prepared one's pairs (a fresh
    permutation each round), with its tokenizer and validation split: what training memory is measured on
    when preparing the full corpus takes longer than the time at hand (training does not see the difference)."""
    sys.path.insert(0, str(REPO / "src"))
    import numpy as np

    from attnlab.data.binarized import IndexedSentences, IndexedWriter, file_entry, open_manifest, write_manifest

    if (out / "manifest.json").is_file():
        return out
    manifest = open_manifest(src)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for side in ("src", "tgt"):
        base = IndexedSentences(src / f"train.{side}")
        writer = IndexedWriter(out / f"train.{side}", base.dtype)
        done, rnd = 0, 0
        while done < n:
            take = min(len(base), n - done)
            order = np.random.default_rng(rnd).permutation(len(base))[:take]
            lengths = np.asarray(base.lengths)[order]
            starts = np.asarray(base.offsets[:-1])[order]
            idx = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
            writer.append(np.asarray(base.data)[idx], lengths)
            done, rnd = done + take, rnd + 1
        writer.finish()
    del rng
    for p in src.iterdir():
        if p.is_file() and not p.name.startswith("train.") and p.name != "manifest.json":
            shutil.copy2(p, out / p.name)
    manifest["files"] = {p.name: file_entry(p) for p in sorted(out.iterdir())
                         if p.suffix in (".bin", ".idx", ".txt") or p.name.startswith("tokenizer")}
    manifest["splits"]["train"] = {"pairs": n, "tiled_from": str(src)}
    write_manifest(out, manifest)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000,4500000")
    p.add_argument("--raw-pairs", type=int, default=2_000_000, help="0: skip the raw-text run")
    p.add_argument("--work", default="/tmp/attnlab_bench_data")
    p.add_argument("--data-dir", default=os.environ.get("ATTNLAB_DATA_DIR", str(REPO.parent / "shared" / "data")))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--speed-rounds", type=int, default=3)
    p.add_argument("--speed-steps", type=int, default=40)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_data.json"))
    p.add_argument("--tile", default="", help="SMALL:N: also train on a dataset of N pairs tiled from bin-SMALL "
                                             "(when preparing N pairs takes too long); only this, then exit")
    p.add_argument("--update", action="store_true", help="keep the other entries of an existing --out")
    p.add_argument("--speed-only", type=int, default=0, help="N: only the memmap vs in-memory speed on bin-N")
    args = p.parse_args()
    if args.speed_only:
        result = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        result["speed_vs_in_memory"] = speed_vs_in_memory(Path(args.work) / f"bin-{args.speed_only}", args.speed_steps,
                                                          args.speed_rounds, args.preset)
        print(result["speed_vs_in_memory"], flush=True)
        _write(args.out, result)
        return
    if args.tile:
        small, n = (int(x) for x in args.tile.split(":"))
        data = tile_dataset(Path(args.work) / f"bin-{small}", Path(args.work) / f"bin-tiled-{n}", n)
        result = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        entry = {"tiled_from": small, "train": train_prepared(data, Path(args.work) / f"run-tiled-{n}", args.steps,
                                                              args.preset)}
        result.setdefault("tiled", {})[str(n)] = entry
        print(n, entry, flush=True)
        _write(args.out, result)
        return
    work = Path(args.work)
    de, en = multi30k_sentences(Path(args.data_dir))
    result: dict = {"corpus": "Multi30k train sentences joined 1-3 per pair, shuffled", "sizes": {}}
    if args.update and Path(args.out).is_file():
        result = json.loads(Path(args.out).read_text())
    result["machine"] = _machine()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    for n in sizes:
        src, tgt = generate(work / f"raw-{n}", n, de, en)
        entry = {"prepare": prepare(src, tgt, work / f"bin-{n}", n, args.workers)}
        print(n, entry, flush=True)
        entry["train"] = train_prepared(work / f"bin-{n}", work / f"run-{n}", args.steps, args.preset)
        print(n, entry["train"], flush=True)
        result["sizes"][str(n)] = entry
        _write(args.out, result)
    if sizes:
        small, big = str(min(map(int, result["sizes"]))), str(max(map(int, result["sizes"])))
        result["train_peak_rss_ratio_largest_over_smallest"] = round(
            result["sizes"][big]["train"]["peak_rss_mb"] / result["sizes"][small]["train"]["peak_rss_mb"], 3)
        result["speed_vs_in_memory"] = speed_vs_in_memory(work / f"bin-{small}", args.speed_steps, args.speed_rounds,
                                                          args.preset)
        print(result["speed_vs_in_memory"], flush=True)
        _write(args.out, result)
    if args.raw_pairs:
        src, tgt = generate(work / f"raw-{args.raw_pairs}", args.raw_pairs, de, en)
        result["raw_text_to_step_20"] = {"pairs": args.raw_pairs, **raw_to_step(src, tgt, work / "run-raw", 20)}
        print(result["raw_text_to_step_20"], flush=True)
    result["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    _write(args.out, result)


def _machine() -> dict:
    """The CPU, its flags and the load when the run started (a loaded machine's times are not comparable)."""
    sys.path.insert(0, str(REPO / "src"))
    from attnlab.bench.common import cpu_flags

    return {"cpu": _cpu(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average_1min_at_start": os.getloadavg()[0]}


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _write(path: str, result: dict) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
