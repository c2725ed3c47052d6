"""kill -9 in the middle of `attnlab train`, then --resume: every checkpoint verifies, and the losses after
the resume are those of a run that was never interrupted (dropout on, so the RNG state must come back)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from attnlab.cli import main
from attnlab.run_dir import load_run
from attnlab.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, read_checkpoint_state

STEPS, EVERY = 24, 3
ARGS = ["train", "--task", "copy", "--n-train", "400", "--max-steps", str(STEPS), "--no-progress", "--preset", "test",
        "--vocab-size", "60", "--set", "dropout=0.1", "--set", f"eval_every={EVERY}", "--set", "eval_bleu_sentences=0",
        "--set", "log_every=1", "--set", "keep_last=0", "--set", "max_tokens=300", "--set", "threads=1",
        "--set", "warmup_steps=10", "--set", "seed=5"]


def train_events(out, after_resume=False):
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    if after_resume:
        starts = [i for i, e in enumerate(events) if e["event"] == "resume"]
        events = events[starts[-1]:]
    return {e["step"]: e["loss"] for e in events if e["event"] == "train"}


@pytest.mark.slow  # > 40 s on 2 shared cores (pytest --durations)
def test_kill_9_then_resume_continues_exactly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "attnlab", *ARGS, "--out", str(killed)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        log = killed / "log.jsonl"  # kill once two steps past the second checkpoint are logged
        while not (log.is_file() and f'"step": {2 * EVERY + 2},' in log.read_text()):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"step {2 * EVERY + 2} not reached within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    before = train_events(killed)
    died_at = latest_checkpoint(killed)
    start = int(read_checkpoint_state(died_at)["step"])
    assert start < max(before) < STEPS  # it died in the middle, after steps the checkpoint does not hold

    # uninterrupted reference, in this process (same seed, threads, data)
    reference = tmp_path / "reference"
    assert main([*ARGS, "--out", str(reference)]) == 0
    expected = train_events(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))

    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = train_events(killed, after_resume=True)
    assert sorted(after) == list(range(start + 1, STEPS + 1))
    diffs = [abs(after[s] - expected[s]) for s in after]
    print(f"kill -9 after checkpoint {died_at.name} (log reached step {max(before)}); "
          f"steps {start + 1}..{STEPS} compared, max |loss difference| = {max(diffs):.3g}")
    assert max(diffs) == 0.0
    # the steps before the kill were identical too, and the final weights are
    for s in before:
        assert before[s] == expected[s]
    a, b = load_run(killed).model.state_dict(), load_run(reference).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # every checkpoint left behind verifies its sha256 and loads
    ckpts = list_checkpoints(killed)
    assert [int(c.name.split("-")[1]) for c in ckpts] == list(range(EVERY, STEPS + 1, EVERY))
    model = load_run(killed).model
    for ckpt in ckpts:
        assert load_checkpoint(ckpt, model, restore_rng=False)["step"] == int(ckpt.name.split("-")[1])
    assert not [p for p in (killed / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.parametrize("torn", [b'{"event": "train", "step": 9', b""])
def test_resume_cuts_a_torn_log_line(tmp_path, torn):
    out = tmp_path / "run"
    assert main([*ARGS[:5], "--max-steps", "4", *ARGS[7:], "--out", str(out)]) == 0
    with open(out / "log.jsonl", "ab") as f:
        f.write(torn)  # what kill -9 in the middle of a write leaves
    assert main([*ARGS[:5], "--max-steps", "6", *ARGS[7:], "--out", str(out), "--resume"]) == 0
    lines = (out / "log.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert sorted(train_events(out, after_resume=True)) == [5, 6]
