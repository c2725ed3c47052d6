"""The training loop: Adam + warm-up, label smoothing, clipping, accumulation, autocast, validation
(loss, perplexity, BLEU), best-model tracking, early stopping, a time budget, checkpoints and exact resume.

Works on one process or under torchrun (DistributedDataParallel; gloo on CPU, NCCL on GPU): batches
are sharded by the sampler, gradients of accumulated batches are synchronised once (`no_sync`), and
rank 0 alone logs, validates and writes checkpoints.

Place in the layering: training; imports only from data and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from attnlab.data.batching import Batch, TokenBatchSampler, collate
from attnlab.metrics.bleu import corpus_scores, perplexity
from attnlab.training.amp import autocast, resolve_amp
from attnlab.training.checkpoint import (
    average_checkpoints,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    save_weights,
    unwrap,
)
from attnlab.training.config import TrainConfig
from attnlab.training.distributed import agree, gather_rng_states, is_main_process, on_rank0
from attnlab.training.loss import label_smoothed_nll, projected_label_smoothed_nll
from attnlab.training.memory import keep_freed_memory
from attnlab.training.schedule import BudgetSchedule, inverse_sqrt_schedule
from attnlab.training.validation import (  # noqa: F401 (ValidationSet: part of this module's API)
    ValidationSet, append_log, repair_log, score_of, source_length, validation_scores)

Example = tuple[Any, list[int]]  # (source ids or image, target ids BOS ... EOS)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message names the step."""


def _fused_if_supported(device: torch.device) -> dict[str, bool]:
    # the fused Adam kernel is ~5x faster than the per-tensor loop on CPU and on CUDA
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


class _WithAux(nn.Module):
    """What DDP wraps for a model with `forward_with_aux`, so the auxiliary loss goes through DDP's forward
    (calling the bare model under DDP would skip its gradient bookkeeping)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, src: Any, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.module.forward_with_aux(src, tgt)


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        train: Sequence[Example] | Any,  # a list of examples, or a BinarizedPairs
        valid: ValidationSet | None,
        cfg: TrainConfig,
        run_dir: str | Path,
        device: str | torch.device = "cpu",
        translate_fn: Callable[[nn.Module, Sequence[Any], int], list[str]] | None = None,
        collate_fn: Callable[[list[Example], int], Batch] = collate,
        d_model: int | None = None,
        progress: bool = True,
        score_fn: Callable[[list[str], list[Any]], dict[str, Any]] | None = None,
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        self.run_dir = Path(run_dir)
        self.train_data = train
        self.valid = valid
        self.translate_fn = translate_fn
        self.collate_fn = collate_fn
        self.score_fn = score_fn or corpus_scores  # (hypotheses, references) -> {"bleu": ..., ...}
        self.progress = progress and is_main_process()
        self.amp = resolve_amp(cfg.amp, self.device)
        self.pad_id = unwrap(model).pad_id
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1

        model.to(self.device)
        self.model = model
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults on the activation buffers of every step (training/memory.py)
        self.has_aux = hasattr(model, "forward_with_aux")
        # the model can return the logits of chosen target positions only (attnlab.layers.packing)
        self.packed = bool(getattr(model, "trains_packed", False)) and not self.has_aux
        # on the CPU in fp32, the output projection runs inside the loss, a block of rows at a time
        projection = getattr(model, "output_projection", None)
        self.projected_loss = (self.packed and self.amp == "none" and self.device.type == "cpu"
                               and type(projection) is nn.Linear and projection.bias is None)
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                _WithAux(model) if self.has_aux else model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        d_model = d_model or getattr(getattr(unwrap(model), "cfg", None), "d_model", 512)
        self.optimizer = torch.optim.Adam(
            unwrap(model).parameters(), lr=1.0, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay, **_fused_if_supported(self.device),
        )
        self.time_used = 0.0  # the time budget's used fraction at the last check (rank 0's, on every process)
        self.scheduler: Any = (BudgetSchedule(self.optimizer, self.budget_used, d_model, cfg.warmup_steps,
                                              cfg.lr_scale) if cfg.budget_schedule()
                               else inverse_sqrt_schedule(self.optimizer, d_model, cfg.warmup_steps, cfg.lr_scale))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        if hasattr(train, "example_lengths"):  # a binarized dataset (data/binarized.py): numpy lengths, memmapped ids
            src_len, tgt_len = train.example_lengths()
        else:
            src_len = [self._length(ex[0]) for ex in train]
            tgt_len = [len(ex[1]) for ex in train]
        self.sampler = TokenBatchSampler(src_len, tgt_len, cfg.max_tokens, shuffle=True, seed=cfg.seed,
                                         num_replicas=self.world, rank=self.rank)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: float | None = None
        self.bad_evals = 0
        self.elapsed = 0.0  # seconds of training before this process (resume)
        self.history: list[dict[str, Any]] = []

    _length = staticmethod(source_length)

    # ---- state -----------------------------------------------------------------------------
    def trainer_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "best": self.best,
                "bad_evals": self.bad_evals, "elapsed": self.elapsed_seconds(), "amp": self.amp}

    def resume(self) -> bool:
        """Load the newest checkpoint (chosen by rank 0; every rank reads it, so on several machines the
        run directory must be shared). Weights, optimizer, schedule, position in the epoch, RNG per rank."""
        ckpt = on_rank0(lambda: latest_checkpoint(self.run_dir))
        if ckpt is None:
            return False
        error, state = None, {}
        try:
            state = load_checkpoint(ckpt, unwrap(self.model), self.optimizer, self.scheduler,
                                    rank=self.rank, device=self.device)
        except Exception as err:  # noqa: BLE001 - every rank must learn of it, or the others hang
            error = err
        agree(error)
        if not state.get("rng_restored", True):  # more processes than the run that saved it
            torch.manual_seed(self.cfg.seed + self.rank + 1_000_003 * int(state["step"]))
        self._repair_log()
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.best = state.get("best")
        self.bad_evals = int(state.get("bad_evals", 0))
        self.elapsed = float(state.get("elapsed", 0.0))
        self._log({"event": "resume", "step": self.step, "checkpoint": ckpt.name})
        return True

    def elapsed_seconds(self) -> float:
        return self.elapsed + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0)

    def _repair_log(self) -> None:
        if is_main_process():
            repair_log(self.run_dir / "log.jsonl")

    def _log(self, record: dict[str, Any]) -> None:
        if is_main_process():
            self.history.append(record)
            append_log(self.run_dir / "log.jsonl", record)

    def _train_batch(self, idx: Any) -> Batch:
        if hasattr(self.train_data, "batch"):  # gathered straight from the memmaps
            return self.train_data.batch(idx, self.pad_id).to(self.device)
        return self.collate_fn([self.train_data[i] for i in idx.tolist()], self.pad_id).to(self.device)

    # ---- one optimizer step ----------------------------------------------------------------
    def _forward_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with autocast(self.amp, self.device):
            target = batch.tgt_out
            if self.projected_loss:  # decoder states of the real target tokens, (N, d_model)
                keep = target != self.pad_id
                hidden = self.model(batch.src, batch.tgt_in, positions=keep, return_hidden=True)
                weight = unwrap(self.model).output_projection.weight
                loss, nll = projected_label_smoothed_nll(hidden, weight, target[keep], self.pad_id,
                                                         self.cfg.label_smoothing)
                return loss, nll, batch.n_tokens
            if self.packed:  # logits of the real target tokens only, (N, V): no work spent on padding
                keep = target != self.pad_id
                logits, aux, target = self.model(batch.src, batch.tgt_in, positions=keep), None, target[keep]
            else:
                if self.world > 1:  # through DDP's forward (a _WithAux around models with an auxiliary loss)
                    out = self.model(batch.src, batch.tgt_in)
                else:
                    out = self.model.forward_with_aux(batch.src, batch.tgt_in) if self.has_aux else \
                        self.model(batch.src, batch.tgt_in)
                logits, aux = out if self.has_aux else (out, None)
        loss, nll = label_smoothed_nll(logits, target, self.pad_id, self.cfg.label_smoothing)
        if aux is not None:
            loss = loss + aux.float()
        return loss, nll, batch.n_tokens

    def train_step(self, batches: list[Batch]) -> dict[str, float]:
        self.model.train()
        n_tokens = sum(int(b.n_tokens) for b in batches)
        if self.world > 1:  # normalise by the global token count so DDP equals one big batch
            t = torch.tensor([n_tokens], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            n_tokens = int(t.item())
        total_loss = total_nll = 0.0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            ctx = self.model.no_sync() if (self.world > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                loss, nll, _ = self._forward_loss(batch)
                # DDP averages gradients over ranks; multiply back so the sum over all tokens is used
                self.scaler.scale(loss * self.world / max(n_tokens, 1)).backward()
            total_loss += float(loss.detach())
            total_nll += float(nll)
        local_tokens = sum(int(b.n_tokens) for b in batches)
        sums = torch.tensor([total_loss, total_nll], dtype=torch.float64, device=self.device)
        if self.world > 1:  # the global loss, and every rank sees a NaN on any rank (no rank trains on alone)
            dist.all_reduce(sums)
        total_loss, total_nll = float(sums[0]), float(sums[1])
        if not math.isfinite(total_loss):
            self._fail(f"loss became {total_loss}")
        if self.cfg.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(unwrap(self.model).parameters(), self.cfg.clip_norm))
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():  # fp16: the scaler skips the step
                self._fail(f"gradient norm became {grad_norm}")
        else:
            grad_norm = float("nan")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": total_loss / max(n_tokens, 1), "nll": total_nll / max(n_tokens, 1),
                "tokens": local_tokens, "grad_norm": grad_norm}

    def _fail(self, what: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        last = latest_checkpoint(self.run_dir)
        kept = f"; the last good checkpoint is {last}" if last else "; no checkpoint was saved yet"
        raise TrainingError(f"{what} at step {self.step + 1}; stopped without updating the weights{kept} "
                            "(try a lower lr_scale, amp=none, or check the data)")

    # ---- validation ------------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """Validation loss, perplexity and BLEU. It draws no random numbers from the training stream (its RNG
        is forked), so a run validated at different steps, or resumed, trains on the same dropout masks."""
        if self.valid is None:
            return {}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            return self._validate()

    def _validate(self) -> dict[str, Any]:
        model = unwrap(self.model)
        model.eval()
        try:
            return validation_scores(model, self.valid, self.cfg, self.device, self.pad_id, self.amp, self.collate_fn,
                                     self.translate_fn, self.score_fn)
        finally:
            model.train()

    def _score(self, result: dict[str, Any]) -> float:
        return score_of(result)

    def _evaluate_and_save(self) -> bool:
        """Validate, keep the best weights, checkpoint (on rank 0; every rank's RNG state goes into it).
        Returns True, on every rank, when early stopping triggers; a failure to save is raised on every rank."""
        rng_states = gather_rng_states(self.device)
        return on_rank0(lambda: self._evaluate_and_save_rank0(rng_states))

    def _evaluate_and_save_rank0(self, rng_states: list[dict[str, torch.Tensor]] | None) -> bool:
        result = self.validate()
        improved = False
        if result:
            score = self._score(result)
            improved = self.best is None or score > self.best
            if improved:
                self.best = score
                self.bad_evals = 0
            else:
                self.bad_evals += 1
        if improved or not result:
            save_weights(unwrap(self.model), self.run_dir / "model.safetensors", {"step": str(self.step)})
        save_checkpoint(self.run_dir, self.step, unwrap(self.model), self.optimizer, self.scheduler,
                        self.trainer_state(), self.cfg.keep_last, rng_states=rng_states)
        self._log({"event": "valid", "step": self.step, "epoch": self.epoch,
                   "minutes": round(self.elapsed_seconds() / 60, 2), "best": self.best, **result})
        if self.progress and result:
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if k != "valid_sample"}
            tqdm.write(f"step {self.step}: {shown} | {result.get('valid_sample', '')[:80]}")
        return bool(self.cfg.patience and self.bad_evals >= self.cfg.patience)

    # ---- the loop ----------------------------------------------------------------------------
    def budget_used(self, steps: int | None = None) -> float:
        """The used fraction of the budget (the largest over steps, epochs and minutes) after `steps` optimizer
        steps (default: those taken); what the budget schedule decays by."""
        cfg = self.cfg
        steps = self.step if steps is None else steps
        fractions = [self.time_used]
        if cfg.max_steps:
            fractions.append(steps / cfg.max_steps)
        if cfg.max_epochs:
            fractions.append((self.epoch + self.batch_in_epoch / max(len(self.sampler), 1)) / cfg.max_epochs)
        return max(fractions)

    def _out_of_budget(self) -> bool:
        """Whether a budget is spent. The time used is rank 0's, so that every rank stops, and schedules its
        learning rate, alike."""
        cfg = self.cfg
        if cfg.max_minutes:
            used = self.elapsed_seconds() / (cfg.max_minutes * 60)
            if self.world > 1:  # every rank must agree, or collectives hang
                flag = torch.tensor([used], dtype=torch.float64, device=self.device)
                dist.broadcast(flag, 0)
                used = float(flag.item())
            self.time_used = used
        return self.budget_used() >= 1.0

    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if resume:
            self.resume()
        else:
            torch.manual_seed(cfg.seed + self.rank)  # each rank its own dropout masks
        self._t0 = time.perf_counter()
        total = cfg.max_steps or (cfg.max_epochs * len(self.sampler) // cfg.accum_steps if cfg.max_epochs else None)
        import sys
        interactive = sys.stderr.isatty()
        bar = tqdm(total=total, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True,
                   mininterval=0.5 if interactive else 30.0)
        window_tokens, window_t0, stats = 0, time.perf_counter(), {}
        last_eval_step = self.step
        stopped = "budget"
        while not self._out_of_budget():
            self.sampler.set_epoch(self.epoch)
            n_batches = len(self.sampler)  # this rank's batches of the epoch, in the order fixed by (seed, epoch)
            pending: list[Batch] = []
            while self.batch_in_epoch < n_batches:
                pending.append(self._train_batch(self.sampler.batch(self.batch_in_epoch)))
                self.batch_in_epoch += 1
                if len(pending) < cfg.accum_steps and self.batch_in_epoch < n_batches:
                    continue
                stats = self.train_step(pending)
                pending = []
                window_tokens += stats["tokens"]
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == 1:
                    now = time.perf_counter()
                    tok_s = window_tokens * self.world / max(now - window_t0, 1e-9)
                    window_tokens, window_t0 = 0, now
                    lr = self.scheduler.get_last_lr()[0]
                    postfix = dict(loss=f"{stats['loss']:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}", ep=self.epoch,
                                   min=f"{self.elapsed_seconds() / 60:.1f}")
                    if cfg.max_minutes:  # the time budget's ETA (tqdm shows its own when steps are the budget)
                        postfix["left"] = f"{max(cfg.max_minutes - self.elapsed_seconds() / 60, 0):.1f}m"
                    bar.set_postfix(**postfix)
                    self._log({"event": "train", "step": self.step, "epoch": self.epoch, "loss": stats["loss"],
                               "ppl": perplexity(stats["nll"], 1), "lr": lr, "tokens_per_s": tok_s,
                               "grad_norm": stats["grad_norm"], "minutes": round(self.elapsed_seconds() / 60, 3)})
                if self.step % cfg.eval_every == 0:
                    last_eval_step = self.step
                    if self._evaluate_and_save():
                        stopped = "early_stopping"
                        break
                if self._out_of_budget():
                    break
            if stopped == "early_stopping":
                break
            if self.batch_in_epoch >= n_batches:
                self.epoch += 1
                self.batch_in_epoch = 0
        bar.close()
        if self.step != last_eval_step:
            self._evaluate_and_save()
        if cfg.average_last > 1 and is_main_process():
            self._average(cfg.average_last)
        summary = {"steps": self.step, "epochs": self.epoch, "minutes": round(self.elapsed_seconds() / 60, 2),
                   "best": self.best, "stopped": stopped, "amp": self.amp}
        self._log({"event": "end", **summary})
        return summary

    def _average(self, k: int) -> None:
        paths = list_checkpoints(self.run_dir)[-k:]
        if len(paths) < 2:
            return
        model = unwrap(self.model)
        backup = {n: t.detach().clone() for n, t in model.state_dict().items()}
        average_checkpoints(paths, model)
        result = self.validate()
        score = self._score(result) if result else None
        if score is not None and self.best is not None and score <= self.best:
            model.load_state_dict(backup)  # averaging did not help: keep the best single model
            self._log({"event": "average", "checkpoints": [p.name for p in paths], "kept": False, **result})
            return
        save_weights(model, self.run_dir / "model.safetensors", {"averaged": str(len(paths))})
        self.best = score if score is not None else self.best
        self._log({"event": "average", "checkpoints": [p.name for p in paths], "kept": True, **result})
