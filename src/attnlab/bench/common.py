"""Shared pieces of the speed benchmarks: the reference model (a plain torch.nn.Transformer translator,
as people write it from the PyTorch tutorial), synthetic batches with Multi30k-like lengths, timing,
the matmul peak, peak RSS, the `--device` option, and the JSON report.

Every benchmark measures attnlab and its reference in the same process on the same inputs, alternating
between them, and reports medians and their ratio.

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAD, BOS, EOS = 0, 1, 2

# The reference shape: d_model 256, 4 heads, 3+3 layers, d_ff 1024, vocabulary 8000.
SIZES: dict[str, dict[str, int]] = {
    "small": dict(d_model=256, n_heads=4, n_layers=3, d_ff=1024, vocab=8000),
    "base": dict(d_model=512, n_heads=8, n_layers=6, d_ff=2048, vocab=8000),
    "tiny": dict(d_model=64, n_heads=4, n_layers=1, d_ff=128, vocab=500),  # smoke tests of the benchmarks
}


# ---- the reference: a plain torch.nn.Transformer translator ------------------------------------
class ReferenceTranslator(nn.Module):
    """Embeddings x sqrt(d) + sinusoids + dropout -> torch.nn.Transformer -> linear (tied), batch first.

    Dropout as in the paper (section 5.4) and attnlab's default: on the embedding sums, on every sub-layer
    output and inside the feed-forward network, not on the attention weights (nn.Transformer's `dropout`
    also drops attention weights; `attention_dropout` sets that apart, 0 by default, so that both systems
    train the same model. Measured on the `small` size it makes no difference to the reference's speed:
    0.99x).
    """

    def __init__(self, d_model: int, n_heads: int, n_layers: int, d_ff: int, vocab: int, dropout: float = 0.1,
                 attention_dropout: float = 0.0):
        super().__init__()
        self.d_model = d_model
        self.embed = nn.Embedding(vocab, d_model, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        self.transformer = nn.Transformer(d_model, n_heads, n_layers, n_layers, d_ff, dropout, batch_first=True)
        for module in self.transformer.modules():
            if isinstance(module, nn.MultiheadAttention):
                module.dropout = attention_dropout
        self.generator = nn.Linear(d_model, vocab, bias=False)
        self.generator.weight = self.embed.weight
        self.dropout = nn.Dropout(dropout)
        pos = torch.arange(1024)[:, None]
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(1024, d_model)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)

    def embed_tokens(self, x: Tensor, start: int = 0) -> Tensor:
        return self.dropout(self.embed(x) * math.sqrt(self.d_model) + self.pe[start:start + x.size(1)])

    def encode(self, src: Tensor) -> Tensor:
        return self.transformer.encoder(self.embed_tokens(src), src_key_padding_mask=src == PAD)

    def decode(self, memory: Tensor, src: Tensor, tgt: Tensor) -> Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.size(1), device=tgt.device, dtype=torch.bool)
        h = self.transformer.decoder(self.embed_tokens(tgt), memory, tgt_mask=causal, tgt_is_causal=True,
                                     tgt_key_padding_mask=tgt == PAD, memory_key_padding_mask=src == PAD)
        return self.generator(h)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        return self.decode(self.encode(src), src, tgt)


@torch.no_grad()
def reference_greedy(model: ReferenceTranslator, src: Tensor, max_len: int) -> Tensor:
    """The tutorial's greedy decoding: re-run the decoder over the whole prefix at every step (no cache)."""
    memory = model.encode(src)
    ys = torch.full((src.size(0), 1), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for _ in range(max_len - 1):
        nxt = model.decode(memory, src, ys)[:, -1].argmax(-1)
        nxt = nxt.masked_fill(done, PAD)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    return ys


# ---- data ------------------------------------------------------------------------------------
def synthetic_pairs(n: int, vocab: int, seed: int = 0, mean_len: float = 16.0, sd: float = 5.0,
                    min_len: int = 4, max_len: int = 48) -> list[tuple[list[int], list[int]]]:
    """(src + EOS, BOS + tgt + EOS) with Multi30k-like lengths (8k BPE: ~14-16 tokens, a long tail)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ls, lt = (int(min(max(round(float(torch.randn(1, generator=g)) * sd + mean_len), min_len), max_len))
                  for _ in range(2))
        src = torch.randint(3, vocab, (ls,), generator=g).tolist() + [EOS]
        tgt = [BOS] + torch.randint(3, vocab, (lt,), generator=g).tolist() + [EOS]
        out.append((src, tgt))
    return out


def multi30k_pairs(vocab: int, data_dir: str | None) -> list[tuple[list[int], list[int]]] | None:
    """Multi30k de-en train, tokenised with a joint BPE of `vocab` (None when the data is absent)."""
    from attnlab.data.batching import encode_pairs
    from attnlab.data.multi30k import load_multi30k
    from attnlab.data.tokenizer import TokenizerPair

    root = Path(data_dir or os.environ.get("ATTNLAB_DATA_DIR", "../shared/data")) / "multi30k"
    if not root.exists():
        return None
    corpus = load_multi30k("de", "en", data_dir=str(root))
    tok = TokenizerPair.train(corpus.train, vocab_size=vocab, joint=True)
    return encode_pairs(corpus.train, tok, max_len=256)


# ---- device, timing and machine ------------------------------------------------------------
def bench_device(ap: argparse.ArgumentParser, name: str) -> torch.device:
    """`--device` of a benchmark: cpu, cuda or cuda:N, else argparse's error (usage, one error line, exit 2)."""
    from attnlab.device import parse_device

    try:
        device = parse_device(name)
    except ValueError as err:
        ap.error(str(err))
    if device.type not in ("cpu", "cuda"):
        ap.error(f"--device {name}: the benchmarks run on cpu or cuda")
    return device


def synchronizer(device: torch.device) -> Callable[[], None] | None:
    """What makes the clock right after GPU work (kernels run asynchronously); None on the CPU."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"device": str(device)}
    props = torch.cuda.get_device_properties(device)
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}  # "highest": no TF32


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """One untimed warm-up call, then the median of `repeats` timed calls."""
    fn()
    return median_time(fn, repeats)[0]


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int,
                        sync: Callable[[], None] | None = None) -> dict[str, float]:
    """One untimed warm-up call of each, then `repeats` rounds that time every function once, in turn;
    the median per function. On a shared machine whose speed drifts by +-20% over seconds, alternating
    makes the drift hit every system alike instead of whichever happened to run in a slow minute.
    `sync` (GPU: common.synchronizer) runs after every call, inside the timing."""
    sync = sync or (lambda: None)
    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_peak(dtype: torch.dtype, n: int = 0, repeats: int = 10, device: str | torch.device = "cpu") -> float:
    """Measured FLOP/s of an n x n x n matmul in `dtype` on `device` (the MFU denominator); n: 1024 on the
    CPU, 8192 on a GPU (smaller ones do not fill it)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    sync = synchronizer(device) or (lambda: None)
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    sync()
    t, _ = median_time(lambda: (a @ b, sync()), repeats)
    return 2 * n**3 / t


def _status_mib(field: str) -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Linux: restart the peak-RSS high-water mark here, so that what imports and set-up touched does not
    hide the peak of the work measured next (writing 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mib() -> float:
    now = _status_mib("VmRSS")
    return now if now is not None else peak_rss_mib()


def peak_rss_mib() -> float:
    hwm = _status_mib("VmHWM")  # reset by reset_peak_rss()
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
              "amx_bf16", "amx_int8", "avx_vnni")


def cpu_flags() -> list[str]:
    """The CPU's vector instruction sets that matter for matmuls and the C kernels (from /proc/cpuinfo)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in SIMD_FLAGS if f in have]
    except OSError:
        pass
    return []


def machine() -> dict[str, Any]:
    from attnlab.training.amp import cpu_has_bf16

    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "bf16_matmul": cpu_has_bf16(), "torch": torch.__version__, "python": platform.python_version(),
            "os": platform.platform()}


def write_report(path: str | None, report: dict[str, Any]) -> None:
    report = {"command": " ".join([sys.executable, *sys.argv]), "machine": machine(), **report}
    text = json.dumps(report, indent=2)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


def label_smoothed_ce(logits: Tensor, target: Tensor, smoothing: float = 0.1) -> Tensor:
    """The reference loss: F.cross_entropy with label smoothing, summed over real tokens."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1), ignore_index=PAD,
                           label_smoothing=smoothing, reduction="sum")
