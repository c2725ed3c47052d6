"""DistributedDataParallel on CPU (gloo): 2 processes after k steps hold the weights of one process that
saw the same global batch; accumulation with no_sync equals syncing every micro-batch, with half the
all-reduces; `torchrun -m attnlab train` runs with rank 0 alone writing."""
import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from attnlab import Transformer, TransformerConfig
from attnlab.training.checkpoint import latest_checkpoint
from attnlab.training.config import TrainConfig
from attnlab.training.loop import Trainer

K_STEPS, ACCUM, WORLD = 3, 2, 2
TIMEOUT_S = 120  # a hang fails the test instead of blocking CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def examples(n: int = 48) -> list:
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        s, t = torch.randint(3, 12, (2,), generator=g).tolist()
        out.append((torch.randint(4, 30, (s,), generator=g).tolist() + [2],
                    [1] + torch.randint(4, 30, (t,), generator=g).tolist() + [2]))
    return out


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16, n_heads=2, n_layers=1,
                                         d_ff=32, dropout=0.0, pad_id=0))


def train_cfg(accum: int) -> TrainConfig:
    # max_tokens 40: ~24 batches of 2-3 examples; K_STEPS * ACCUM * WORLD = 12 of them, all in epoch 0.
    # adam_eps 1e-3: the key projection's bias has a gradient that is 0 in exact arithmetic (softmax ignores
    # a constant added to every score); with the paper's eps 1e-9 Adam would blow its rounding noise up to
    # full-size steps of arbitrary sign, different in every summation order.
    return TrainConfig(max_tokens=40, accum_steps=accum, warmup_steps=2, lr_scale=1.0, max_steps=K_STEPS, adam_eps=1e-3,
                       eval_every=1000, label_smoothing=0.1, amp="none", log_every=1, threads=1)


def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from attnlab.training.distributed import process_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    with process_group("cpu", timeout_s=60) as device:
        result = {}
        for variant in ("no_sync", "sync_every_batch"):
            trainer = Trainer(tiny_model(), examples(), None, train_cfg(ACCUM), f"{out_dir}/{variant}", device,
                              progress=False)
            calls = [0]

            def counting_hook(state, bucket, calls=calls):
                calls[0] += 1
                return allreduce_hook(None, bucket)

            trainer.model.register_comm_hook(None, counting_hook)
            if variant == "sync_every_batch":
                trainer.model.no_sync = contextlib.nullcontext  # every backward all-reduces
            trainer.fit()
            save_file({k: v.detach().clone() for k, v in trainer.model.module.state_dict().items()},
                      f"{out_dir}/{variant}-rank{rank}.safetensors")
            result[variant] = {"allreduce_calls": calls[0], "log": [h["loss"] for h in trainer.history
                                                                    if h.get("event") == "train"]}
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(out))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"DDP workers hung for {TIMEOUT_S}s"
    assert [p.exitcode for p in procs] == [0, 0]
    return out


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    trainer = Trainer(tiny_model(), examples(), None, train_cfg(ACCUM * WORLD), out, "cpu", progress=False)
    trainer.fit()
    return trainer


def test_ddp_weights_equal_one_process_over_the_same_global_batch(ddp_run, single_run):
    ref = single_run.model.state_dict()
    initial = tiny_model().state_dict()
    rank0 = load_file(ddp_run / "no_sync-rank0.safetensors")
    rank1 = load_file(ddp_run / "no_sync-rank1.safetensors")
    saved = load_file(ddp_run / "no_sync" / "model.safetensors")  # written by rank 0 at the end
    worst = 0.0
    for name, value in ref.items():
        assert torch.equal(rank0[name], rank1[name]), name  # the replicas never drift apart
        worst = max(worst, float((rank0[name] - value).abs().max()))
        torch.testing.assert_close(rank0[name], value, rtol=0, atol=1e-5)
    print(f"DDP vs single process: max |dw| = {worst:.3g}")
    assert worst < 1e-5
    moved = max(float((ref[n] - initial[n]).abs().max()) for n in ref)
    assert moved > 1e-3  # training changed the weights: the comparison is not vacuous
    for name, value in saved.items():
        assert torch.equal(value, rank0[name])
    # the logged loss is the global one: equal to the single process's at every step
    ranks = [json.loads((ddp_run / f"rank{r}.json").read_text()) for r in range(WORLD)]
    single = [h["loss"] for h in single_run.history if h.get("event") == "train"]
    assert len(single) == K_STEPS
    for r in ranks:
        assert r["no_sync"]["log"] == [] or r["no_sync"]["log"] == pytest.approx(single, rel=1e-6)
    assert ranks[0]["no_sync"]["log"] == pytest.approx(single, rel=1e-6)


def test_no_sync_accumulation_equals_syncing_every_batch_with_fewer_allreduces(ddp_run):
    a = load_file(ddp_run / "no_sync-rank0.safetensors")
    b = load_file(ddp_run / "sync_every_batch-rank0.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    counts = json.loads((ddp_run / "rank0.json").read_text())
    buckets = counts["no_sync"]["allreduce_calls"] // K_STEPS
    assert buckets >= 1 and counts["no_sync"]["allreduce_calls"] == K_STEPS * buckets
    assert counts["sync_every_batch"]["allreduce_calls"] == ACCUM * K_STEPS * buckets


def test_rank0_alone_logs_and_checkpoints_with_every_ranks_rng(ddp_run):
    run = ddp_run / "no_sync"
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "train"]
    assert steps == list(range(1, K_STEPS + 1))  # one line per step: only rank 0 wrote
    ckpt = latest_checkpoint(run)
    assert ckpt.name == f"step-{K_STEPS:07d}"
    extra = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert len(extra["rng"]) == WORLD
    assert not torch.equal(extra["rng"][0]["cpu"], extra["rng"][1]["cpu"])  # each rank its own dropout masks


@pytest.mark.slow  # > 40 s on 2 shared cores (pytest --durations)
def test_torchrun_cli_trains_on_cpu_with_gloo(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "attnlab", "train", "--task", "copy", "--n-train", "200",
           "--out", str(out), "--max-steps", "4", "--no-progress", "--set", "eval_every=2",
           "--set", "eval_bleu_sentences=8", "--set", "log_every=1", "--set", "threads=1", "--set", "max_tokens=600"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATTNLAB_DIST_TIMEOUT": "60"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stderr[proc.stderr.index("{"):proc.stderr.rindex("}") + 1])
    assert summary["steps"] == 4
    assert proc.stderr.count('"steps": 4') == 1  # rank 0 alone reports
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 4]
    assert [e["step"] for e in events if e["event"] == "valid"] == [2, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["LATEST", "step-0000002", "step-0000004"]
