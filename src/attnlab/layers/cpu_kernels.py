"""attnlab's small C kernels for the CPU (`layers/*.c`): compiled once per machine, loaded with ctypes.

A kernel is compiled with the system's C compiler (`$CC`, else `cc`; `-O3 -march=native -fopenmp`)
the first time it is needed, in under a second, and kept in `$ATTNLAB_CACHE_DIR` (default
`~/.cache/attnlab`) under a name that depends on the source, the flags, the compiler and the CPU; the
library is written under a temporary name and renamed, so a half-written file is never loaded. The
kernels run on PyTorch's own OpenMP threads (its libgomp; a second OpenMP runtime would fight it, and
then the kernel is not used). Where a kernel cannot be had (no compiler, not Linux, a PyTorch without
OpenMP, `ATTNLAB_KERNELS=0`, a failing compile) `Kernels.get()` is None and the caller uses PyTorch's
operations, which compute the same functions more slowly. That is said once per process, loudly (a
RuntimeWarning naming the reason and the slower path), except when the user switched the kernels off;
`Kernels.status()` and `attnlab info` tell which kernels are in use and why.

The ctypes argument types are not written by hand: `c_signatures` reads them from the exported
(`attnlab_*`) declarations of the C source itself, so the two cannot drift apart.

Place in the layering: layers (imports only torch and the standard library).

Kernels: decode_step.c (the decoder step's attention and add & norm, attnlab.layers.decode_kernel),
dropout_kernel.c (dropout with a counter-based mask, attnlab.layers.dropout) and packed_attention.c
(attention on packed rows, forward and backward, attnlab.layers.packed_attention).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
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

# C parameter types -> ctypes; every pointer is passed as an address (tensor.data_ptr())
_C_TYPES = {"int64_t": ctypes.c_int64, "uint64_t": ctypes.c_uint64, "uint32_t": ctypes.c_uint32,
            "int": ctypes.c_int, "float": ctypes.c_float, "double": ctypes.c_double}
_EXPORTED = re.compile(r"^(void|int64_t|int|float|double)\s+(attnlab_\w+)\s*\(([^)]*)\)\s*\{", re.M)


def c_signatures(source: str) -> dict[str, tuple[list, object]]:
    """{name: (argtypes, restype)} of the exported functions (`attnlab_*`, not static) of a C source."""
    out = {}
    for ret, name, params in _EXPORTED.findall(source):
        argtypes = []
        for param in (p.strip() for p in params.split(",")):
            if "*" in param:
                argtypes.append(ctypes.c_void_p)
                continue
            words = param.replace("const ", "").split()
            if len(words) != 2 or words[0] not in _C_TYPES:
                raise ValueError(f"{name}: parameter {param!r} has no ctypes equivalent")
            argtypes.append(_C_TYPES[words[0]])
        out[name] = (argtypes, None if ret == "void" else _C_TYPES[ret])
    return out


_reported: set[str] = set()


def _report_once(reason: str, what: str) -> None:
    """One loud line per process and reason: the kernels are missing and PyTorch's slower path is used."""
    if reason in _reported:
        return
    _reported.add(reason)
    warnings.warn(f"the C kernels are not available ({reason}); the {what} and the others use "
                  "PyTorch's operations instead: same results, slower training and decoding on the CPU "
                  "(`attnlab info` says more; ATTNLAB_KERNELS=0 switches them off without this warning)",
                  RuntimeWarning, stacklevel=5)


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


ALL: list["Kernels"] = []  # every kernel source, for `attnlab info`


class Kernels:
    """The functions of one C source in layers/, loaded once per process: `get()` is a namespace of
    ctypes functions with the argument types read from the source (`c_signatures`), or None;
    `status()` says whether it is in use and why."""

    def __init__(self, source: str, what: str):
        self.source = Path(__file__).with_name(source)
        self.what = what
        self.signatures = c_signatures(self.source.read_text())
        self.state: dict = {}
        self._lock = threading.Lock()
        ALL.append(self)

    def get(self) -> SimpleNamespace | None:
        if "fns" not in self.state:
            with self._lock:
                if "fns" not in self.state:
                    self.state["reason"] = "in use"
                    self.state["fns"] = self._load()
        return self.state["fns"]

    def status(self) -> tuple[bool, str]:
        """(in use, why): loads the kernel (compiling it on first use) to find out."""
        fns = self.get()
        return fns is not None, self.state.get("reason", "")

    def _unavailable(self, reason: str, report: bool = True) -> None:
        self.state["reason"] = reason
        if report:
            _report_once(reason, self.what)

    def _load(self) -> SimpleNamespace | None:
        if os.environ.get("ATTNLAB_KERNELS", "1") == "0":
            return self._unavailable("switched off by ATTNLAB_KERNELS=0", report=False)
        if sys.platform != "linux":
            return self._unavailable(f"built only on Linux, this is {sys.platform}")
        if "OpenMP" not in torch.__config__.parallel_info():
            return self._unavailable("this PyTorch is built without OpenMP")
        compiler = shutil.which(os.environ.get("CC", "cc"))
        if compiler is None:
            return self._unavailable(f"no C compiler: {os.environ.get('CC', 'cc')!r} is not on PATH "
                                     "(install gcc, or set CC)")
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
            detail = getattr(e, "stderr", b"") or b""
            detail = detail.decode(errors="replace").strip().splitlines()[:1] if detail else []
            return self._unavailable(f"the {self.what} did not build: {e}" + (f": {detail[0]}" if detail else ""))
        if len(_gomp_runtimes()) > max(1, len(before)):  # a second OpenMP runtime: its threads would fight PyTorch's
            return self._unavailable("loading it brought a second OpenMP runtime beside PyTorch's")
        fns = SimpleNamespace()
        for name, (argtypes, restype) in self.signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, restype
            setattr(fns, name, fn)
        return fns
