"""attnlab's small C kernels for the CPU (`layers/*.c`): compiled once per machine, loaded with ctypes.

A kernel is compiled with the system's C compiler (`$CC`, else `cc`; `-O3 -march=native -fopenmp`)
the first time it is needed, in under a second, and kept in `$ATTNLAB_CACHE_DIR` (default
`~/.cache/attnlab`) under a name that depends on the source, the flags, the compiler and the CPU; the
library is written under a temporary name and renamed, so a half-written file is never loaded. The
kernels run on PyTorch's own OpenMP threads (its libgomp; a second OpenMP runtime would fight it, and
then the kernel is not used). Where a kernel cannot be had (no compiler, not Linux, a PyTorch without
OpenMP, `ATTNLAB_KERNELS=0`, a failing compile) `Kernels.get()` is None and the caller uses PyTorch's
operations: nothing else changes.

Kernels: decode_step.c (the decoder step's attention and add & norm, attnlab.layers.decode_kernel),
dropout_kernel.c (dropout with a counter-based mask, attnlab.layers.dropout) and packed_attention.c
(attention on packed rows, forward and backward, attnlab.layers.packed_attention).
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
from types import SimpleNamespace

import torch

FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared"]


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


def _compile(compiler: str, source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)  # then renamed: never a half-written library
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, str(source), "-o", tmp, "-lm"], check=True, capture_output=True,
                       timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Kernels:
    """The functions of one C source in layers/, loaded once per process: `get()` is a namespace of
    ctypes functions with the argument types of `signatures` ({name: (argtypes, restype)}), or None."""

    def __init__(self, source: str, what: str, signatures: dict[str, tuple[list, object]]):
        self.source = Path(__file__).with_name(source)
        self.what, self.signatures = what, signatures
        self.state: dict = {}
        self._lock = threading.Lock()

    def get(self) -> SimpleNamespace | None:
        if "fns" not in self.state:
            with self._lock:
                if "fns" not in self.state:
                    self.state["fns"] = self._load()
        return self.state["fns"]

    def _load(self) -> SimpleNamespace | None:
        if os.environ.get("ATTNLAB_KERNELS", "1") == "0":
            return None
        if sys.platform != "linux" or "OpenMP" not in torch.__config__.parallel_info():
            return None
        compiler = shutil.which(os.environ.get("CC", "cc"))
        if compiler is None:
            return None
        headers = b"".join(h.read_bytes() for h in sorted(self.source.parent.glob("*.h")))  # what sources include
        key = hashlib.sha256(self.source.read_bytes() + headers + " ".join(FLAGS).encode() + compiler.encode()
                             + _cpu_identity().encode() + platform.machine().encode()).hexdigest()[:16]
        path = cache_dir() / f"{self.source.stem}-{key}.so"
        try:
            if not path.exists():
                _compile(compiler, self.source, path)
            before = _gomp_runtimes()
            lib = ctypes.CDLL(str(path))
        except (OSError, subprocess.SubprocessError) as e:
            warnings.warn(f"attnlab: the {self.what} is not available ({e}); using PyTorch's kernels",
                          RuntimeWarning, stacklevel=4)
            return None
        if len(_gomp_runtimes()) > max(1, len(before)):  # a second OpenMP runtime: its threads would fight PyTorch's
            return None
        fns = SimpleNamespace()
        for name, (argtypes, restype) in self.signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, restype
            setattr(fns, name, fn)
        return fns
