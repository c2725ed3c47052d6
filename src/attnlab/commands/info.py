"""attnlab info: what this machine gives attnlab — torch and its thread settings, the CPU's vector
instructions, the GPUs, and which C kernels are in use and why (building them on first use).

Place in the layering: commands (the top; reads attnlab.layers' kernel status and attnlab.bench's
machine description)."""
from __future__ import annotations

import argparse
import json
import os
import shutil

import torch

_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATTNLAB_KERNELS", "ATTNLAB_CACHE_DIR", "CC",
        "ATTNLAB_MALLOC_TUNING")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="torch, threads, CPU flags and which C kernels are in use", description=__doc__)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def collect() -> dict:
    from attnlab import __version__
    from attnlab.bench.common import machine
    from attnlab.layers import cpu_kernels, decode_kernel, dropout, packed_attention  # noqa: F401 (registers them)

    kernels = {}
    for k in cpu_kernels.ALL:
        in_use, why = k.status()
        kernels[k.source.name] = {"what": k.what, "in_use": in_use, "why": why}
    return {
        "attnlab": __version__,
        **machine(),
        "interop_threads": torch.get_num_interop_threads(),
        "parallel": [line.strip() for line in torch.__config__.parallel_info().splitlines()[1:6] if line.strip()],
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "compiler": shutil.which(os.environ.get("CC", "cc")),
        "kernel_cache": str(cpu_kernels.cache_dir()),
        "kernels": kernels,
        "env": {name: os.environ[name] for name in _ENV if name in os.environ},
    }


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "kernels":
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        print(f"{key:<{width}}  {value}")
    print("kernels:")
    for name, k in info["kernels"].items():
        mark = "in use" if k["in_use"] else "NOT in use, PyTorch's slower operations instead"
        print(f"  {name:<22} {k['what']}: {mark}" + ("" if k["in_use"] else f" ({k['why']})"))
    return 0
