"""Checkpoints that survive a kill -9 and refuse to load anything foreign.

Layout of a run directory:
    RUN/config.json            what the model is: format tag, arch, model config, task, training config
    RUN/model.safetensors      the weights `attnlab translate --model RUN` uses (best so far)
    RUN/tokenizer.json         (or src_tokenizer.json + tgt_tokenizer.json)
    RUN/checkpoints/step-000100/{model.safetensors, optimizer.pt, state.json}
    RUN/checkpoints/LATEST     name of the newest complete checkpoint

Every file is written to a temporary name, fsync'ed, then renamed into place, so a crash leaves
either the old or the new version, never half a file. `state.json` records each file's sha256 and is
checked on load. Weights are safetensors; the optimizer state is loaded with `weights_only=True`,
so loading never unpickles code. Saved weights are those of the unwrapped model (no DDP or
torch.compile prefixes).

Place in the layering: training; imports only from data and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn

from attnlab.io import atomic_write, atomic_write_bytes, atomic_write_json, fsync_dir, sha256  # noqa: F401 (re-exported)

FORMAT = "attnlab"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint or model directory that cannot be written or read (message is one line)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _write_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    # safetensors reports write failures (disk full, ...) as SafetensorError; they become OSError here
    def write(tmp: str) -> None:
        try:
            st_save_model(unwrap(model), tmp, metadata={"format": FORMAT, **(metadata or {})})
        except SafetensorError as err:  # e.g. "... I/O error: No space left on device (os error 28) ..."
            code = re.search(r"\(os error (\d+)\)", str(err))
            if code:
                raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None
            raise OSError(str(err).strip().splitlines()[0] if str(err).strip() else "safetensors could not write") from None

    atomic_write(path, write)


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Atomically write the unwrapped model's weights as safetensors (tied weights stored once).
    On failure the previous file at `path` is untouched and a one-line CheckpointError says why."""
    path = Path(path)
    try:
        _write_weights(model, path, metadata)
    except OSError as err:
        kept = f"; the previous {path.name} is kept" if path.is_file() else ""
        raise CheckpointError(f"could not write {path}: {err.strerror or err}{kept}") from None


def load_weights(model: nn.Module, path: Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    try:
        missing, unexpected = st_load_model(unwrap(model), str(path), strict=False)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"weights file {path} is corrupt or not safetensors: {err}") from None
    except RuntimeError as err:  # shape mismatch
        first = str(err).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line), first[0] if first else "")
        raise CheckpointError(f"weights in {path} do not fit the model config: {detail}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {path} do not fit the model config: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    state: dict[str, Any],
    keep_last: int = 3,
    rng_states: list[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write RUN/checkpoints/step-NNNNNN atomically (temp dir, then rename) and point LATEST at it.

    rng_states: every rank's RNG state ({"cpu": ..., "cuda": ...} per rank, as gathered by
    attnlab.training.distributed); by default this process's CPU generator.

    On any OS error (disk full, no permission) the partial checkpoint is removed, the previous one
    is kept, and a one-line CheckpointError says what happened."""
    ckpt_root = Path(run_dir) / "checkpoints"
    name = f"step-{step:07d}"
    final = ckpt_root / name
    tmp: Path | None = None
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{name}."))
        _write_weights(model, tmp / "model.safetensors")
        extra = {
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "rng": rng_states if rng_states is not None else [{"cpu": torch.get_rng_state()}],
        }
        # serialised in memory and written with plain file I/O: torch.save's own writer reports a full
        # disk as "RuntimeError: enforce fail ... unexpected pos", this way it is OSError ENOSPC
        buf = io.BytesIO()
        torch.save(extra, buf)
        with open(tmp / "optimizer.pt", "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        files = {"model.safetensors": sha256(tmp / "model.safetensors"),
                 "optimizer.pt": hashlib.sha256(buf.getbuffer()).hexdigest()}
        del buf
        atomic_write_json(tmp / "state.json", {"format": FORMAT, "version": FORMAT_VERSION, "step": step,
                                               "files": files, **state})
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        tmp = None
        fsync_dir(ckpt_root)
        atomic_write_bytes(ckpt_root / "LATEST", (name + "\n").encode())
    except OSError as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        kept = f"; the previous checkpoint {previous.name} is kept" if previous else ""
        reason = err.strerror or str(err)
        raise CheckpointError(f"could not save checkpoint {name} in {ckpt_root}: {reason}{kept}") from None
    _prune(ckpt_root, keep_last)
    return final


def _prune(ckpt_root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints (0 = all) and remove what a kill -9 mid-save left behind."""
    for stale in ckpt_root.glob(".step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in [*ckpt_root.glob(".LATEST.*.tmp"), *ckpt_root.parent.glob(".model.safetensors.*.tmp")]:
        stale.unlink(missing_ok=True)
    if keep_last > 0:
        steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
        for old in steps[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in (Path(run_dir) / "checkpoints").glob("step-*") if p.is_dir())


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    pointer = root / "LATEST"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if candidate.is_dir():
            return candidate
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_checkpoint_state(ckpt: Path) -> dict[str, Any]:
    ckpt = Path(ckpt)
    state_file = ckpt / "state.json"
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {ckpt} is incomplete: no state.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: state.json unreadable ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt} is not an attnlab checkpoint (no '{FORMAT}' format tag)")
    files = state.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: state.json lists no sha256 for model.safetensors")
    for fname, digest in files.items():
        if not isinstance(fname, str) or Path(fname).name != fname or not isinstance(digest, str):
            raise CheckpointError(f"checkpoint {ckpt} is corrupt: state.json lists a bad file entry {fname!r}")
        path = ckpt / fname
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete: {fname} missing")
        if sha256(path) != digest:
            raise CheckpointError(f"checkpoint {ckpt} is corrupt: {fname} does not match its sha256")
    return state


def load_checkpoint(
    ckpt: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    rank: int = 0,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Verify, then load weights (+ optimizer, scheduler, RNG of this rank). Returns the trainer state dict,
    with "rng_restored" False when the checkpoint holds no RNG state for this rank (more processes than
    the run that saved it)."""
    state = read_checkpoint_state(ckpt)
    load_weights(model, Path(ckpt) / "model.safetensors")
    if optimizer is not None or scheduler is not None or restore_rng:
        try:
            extra = torch.load(Path(ckpt) / "optimizer.pt", map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is a corrupt file
            raise CheckpointError(f"checkpoint {ckpt}: optimizer.pt unreadable ({type(err).__name__})") from None
        if optimizer is not None and extra.get("optimizer"):
            optimizer.load_state_dict(extra["optimizer"])
        if scheduler is not None and extra.get("scheduler"):
            scheduler.load_state_dict(extra["scheduler"])
        if restore_rng:
            state["rng_restored"] = _restore_rng(extra, rank, device or torch.device("cpu"))
    return state


def _restore_rng(extra: dict[str, Any], rank: int, device: torch.device) -> bool:
    per_rank = extra.get("rng") or []
    if rank < len(per_rank):
        torch.set_rng_state(per_rank[rank]["cpu"])
        if "cuda" in per_rank[rank] and device.type == "cuda":
            torch.cuda.set_rng_state(per_rank[rank]["cuda"], device)
        return True
    if rank == 0 and "torch_rng" in extra:  # written before per-rank states were saved
        torch.set_rng_state(extra["torch_rng"])
        return True
    return False


def average_checkpoints(paths: list[Path], model: nn.Module) -> nn.Module:
    """Load the element-wise mean of several checkpoints' weights into `model` (paper, section 6.1)."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    target = unwrap(model)
    total: dict[str, torch.Tensor] | None = None
    for path in paths:
        read_checkpoint_state(path)
        load_weights(target, Path(path) / "model.safetensors")
        sd = {k: v.detach().float().clone() for k, v in target.state_dict().items()}
        total = sd if total is None else {k: total[k] + sd[k] for k in total}
    assert total is not None
    target.load_state_dict({k: (v / len(paths)).to(target.state_dict()[k].dtype) for k, v in total.items()})
    return model
