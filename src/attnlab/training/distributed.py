"""Several processes with PyTorch's own stack: torchrun starts them, this module joins them.

`torchrun --nproc-per-node N -m attnlab train ...` sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in every process (on every machine with --nnodes / --rdzv-endpoint). `process_group()`
reads them, picks the backend (NCCL on GPUs, one GPU per LOCAL_RANK; gloo on CPUs), and destroys the
group at the end. Without WORLD_SIZE > 1 it does nothing, so one code path serves both.

Decisions that touch the run directory are made on rank 0 and sent to the others (`on_rank0`), so no
two processes race to write the same file and every rank fails together, not one rank hanging in a
collective while another has exited.

Place in the layering: training; imports only from data and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from attnlab.device import parse_device

T = TypeVar("T")


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def pick_device(name: str | None, local_rank: int = 0, world: int = 1) -> torch.device:
    """--device as given; under torchrun a CUDA device is cuda:LOCAL_RANK (one GPU per process)."""
    device = parse_device(name)
    if world > 1 and device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"--device {name}: under torchrun each process uses GPU LOCAL_RANK; pass --device cuda")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible; "
                             "use --nproc-per-node <= the number of GPUs")
        device = torch.device("cuda", local_rank)
    return device


@contextlib.contextmanager
def process_group(device_name: str | None, timeout_s: float | None = None) -> Iterator[torch.device]:
    """Join torchrun's process group (if any) for the duration of the block; yields this rank's device.

    The collective timeout is ATTNLAB_DIST_TIMEOUT seconds (default 1800): a rank that dies makes the
    others fail after that long instead of waiting forever."""
    world = env_world_size()
    if world <= 1 or dist.is_initialized():
        yield pick_device(device_name)
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timeout_s if timeout_s is not None else float(os.environ.get("ATTNLAB_DIST_TIMEOUT", "1800"))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
    try:
        yield device
    finally:
        dist.destroy_process_group()


def on_rank0(fn: Callable[[], T]) -> T:
    """Run fn on rank 0 only and return its result (or raise its exception) on every rank."""
    if world_size() == 1:
        return fn()
    box: list[Any] = [None]
    if rank() == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def agree(error: BaseException | None) -> None:
    """Collective: if any rank hit an error, raise on every rank (the failing rank's own error there)."""
    if world_size() == 1:
        if error is not None:
            raise error
        return
    flags: list[Any] = [None] * world_size()
    dist.all_gather_object(flags, None if error is None else f"rank {rank()}: {error}")
    if error is not None:
        raise error
    first = next((f for f in flags if f is not None), None)
    if first is not None:
        raise RuntimeError(f"another process failed ({first})")


def gather_rng_states(device: torch.device) -> list[dict[str, torch.Tensor]] | None:
    """Every rank's RNG state (CPU, and CUDA when used), collected on rank 0 (None elsewhere)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if world_size() == 1:
        return [state]
    out: list[Any] = [None] * world_size() if rank() == 0 else None  # type: ignore[assignment]
    dist.gather_object(state, out, dst=0)
    return out

