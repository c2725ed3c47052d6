"""The decoder step's attention on the CPU: a small C kernel (decode_attention.c), compiled once per
machine, that PyTorch's fused kernel is slow at.

At a decoding step each hypothesis has one query, and PyTorch's fused CPU attention spends most of
its time per (row, head) pair rather than per key, and reads the padding keys of the source as well.
The kernel reads each row's real keys once, all heads together, on PyTorch's own OpenMP threads.
Measured on a 2-core AMD EPYC (`small` model, 100 x 1 queries over 35 keys): 262 -> 98 us for the
encoder-decoder attention; a greedy decode of 100 sentences x 32 tokens 0.60 -> 0.51 s (benchmarks:
`attnlab bench decode`). The result is the same function in float32 (rounding differences, ~1e-7).

It is compiled with the system's C compiler (`$CC`, else `cc`) the first time a decode needs it, in
about a second, and kept in `$ATTNLAB_CACHE_DIR` (default `~/.cache/attnlab`) under a name that
depends on the source, the flags and the CPU. Where that cannot happen (no compiler, not Linux, a
PyTorch without GNU OpenMP, `ATTNLAB_KERNELS=0`), `kernel()` is None, `applies` is False and the caller
uses PyTorch's kernels: nothing else changes.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from attnlab.layers.dropout import cpu_fp32

SOURCE = Path(__file__).with_name("decode_attention.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared"]
_lock = threading.Lock()
_state: dict = {}


def cache_dir() -> Path:
    root = os.environ.get("ATTNLAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "attnlab")
    return Path(root) / "kernels"


def _cpu_identity() -> str:
    # -march=native code may not run on another CPU: a shared home directory must not mix them up
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


def _gomp_runtimes() -> set[str]:
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    return {line.split()[-1] for line in maps if os.path.basename(line.split()[-1]).startswith("libgomp")}


def _compile(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)  # then renamed: never a half-written library
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], check=True, capture_output=True,
                       timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> ctypes.CDLL | None:
    if os.environ.get("ATTNLAB_KERNELS", "1") == "0":
        return None
    if sys.platform != "linux" or "OpenMP" not in torch.__config__.parallel_info():
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + compiler.encode()
                         + _cpu_identity().encode() + platform.machine().encode()).hexdigest()[:16]
    path = cache_dir() / f"decode_attention-{key}.so"
    try:
        if not path.exists():
            _compile(compiler, path)
        before = _gomp_runtimes()
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"attnlab: the decoding attention kernel is not available ({e}); using PyTorch's kernels",
                      RuntimeWarning, stacklevel=3)
        return None
    if len(_gomp_runtimes()) > max(1, len(before)):  # a second OpenMP runtime: its threads would fight PyTorch's
        return None
    fn = lib.attnlab_decode_attention
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [p, i64, i64, i64, p, i64, i64, i64, p, i64, i64, i64, p, i64, p, i64, i64, i64, i64,
                   ctypes.c_float]
    fn.restype = None
    return fn


def kernel():
    """The compiled function, or None where it cannot be had (loaded once per process)."""
    if "fn" not in _state:
        with _lock:
            if "fn" not in _state:
                _state["fn"] = _load()
    return _state["fn"]


def applies(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """CPU float32 inference (`cpu_fp32`, nothing that wants gradients) on (B, H, T, D) queries and
    (B, H, S, D) keys/values with contiguous last dimensions: the kernel's case."""
    return (
        cpu_fp32(q)
        and k.dtype == v.dtype == torch.float32
        and q.dim() == k.dim() == v.dim() == 4
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        and kernel() is not None
    )


def decode_attention(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d_k)) v for q (B, H, T, D) and k, v (B, H, S, D), where row b attends to its
    first lengths[b] keys (all S when None); returns the heads concatenated, (B, T, H * D). Call only
    where `applies(q, k, v)`."""
    b, h, t, d = q.shape
    s = k.size(2)
    if k.shape != (b, h, s, d) or v.shape != (b, h, s, d):
        raise ValueError(f"decode_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit")
    if lengths is not None:
        if lengths.shape != (b,):
            raise ValueError(f"decode_attention: lengths must have shape ({b},), got {tuple(lengths.shape)}")
        lengths = lengths.to(torch.int64).contiguous()
    out = q.new_empty(b, t, h * d)
    kernel()(q.data_ptr(), q.stride(0), q.stride(1), q.stride(2),
             k.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
             v.data_ptr(), v.stride(0), v.stride(1), v.stride(2),
             None if lengths is None else lengths.data_ptr(), s,
             out.data_ptr(), b, h, t, d, d ** -0.5)
    return out
