"""Warm-up schedule and label-smoothed loss (paper, sections 5.3 and 5.4)."""
import math

import pytest
import torch

from attnlab.training.loss import label_smoothed_nll
from attnlab.training.schedule import inverse_sqrt_lr, inverse_sqrt_schedule, peak_lr


def test_schedule_is_the_paper_formula():
    d, warmup = 512, 4000
    for step in (1, 100, 4000, 10000, 100000):
        expected = d**-0.5 * min(step**-0.5, step * warmup**-1.5)
        assert inverse_sqrt_lr(step, d, warmup) == pytest.approx(expected)
    assert peak_lr(512, 4000) == pytest.approx(512**-0.5 * 4000**-0.5)
    # rises linearly during warm-up, then decays as 1/sqrt(step)
    assert inverse_sqrt_lr(2000, d, warmup) == pytest.approx(inverse_sqrt_lr(4000, d, warmup) / 2)
    assert inverse_sqrt_lr(16000, d, warmup) == pytest.approx(inverse_sqrt_lr(4000, d, warmup) / 2)


def test_lambda_scheduler_follows_the_formula():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=123.0)
    sched = inverse_sqrt_schedule(opt, 256, 10, scale=2.0)
    seen = []
    for _ in range(30):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(inverse_sqrt_lr(1, 256, 10, 2.0))
    assert seen[9] == pytest.approx(peak_lr(256, 10, 2.0))
    assert max(seen) == pytest.approx(peak_lr(256, 10, 2.0))


def test_label_smoothed_loss_values():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    target = torch.tensor([[1, 2, 0], [3, 4, 4]])  # 0 = pad
    loss, nll = label_smoothed_nll(logits, target, pad_id=0, smoothing=0.1)
    logp = logits.log_softmax(-1)
    keep = target != 0
    expected_nll = -logp.gather(-1, target[..., None])[..., 0][keep].sum()
    uniform = -logp.mean(-1)[keep].sum()
    assert float(nll) == pytest.approx(float(expected_nll), rel=1e-5)
    assert float(loss) == pytest.approx(float(0.9 * expected_nll + 0.1 * uniform), rel=1e-5)
    plain, plain_nll = label_smoothed_nll(logits, target, pad_id=0, smoothing=0.0)
    assert float(plain) == pytest.approx(float(expected_nll), rel=1e-5)
    assert math.isfinite(float(plain_nll))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("block_bytes", [4 * 50 * 16, 8 << 20])  # 16-row blocks (several, a partial last one), or one
def test_projected_loss_equals_projection_then_loss(smoothing, block_bytes):
    """The output projection fused into the loss gives the same loss, NLL and gradients."""
    from attnlab.training.loss import projected_label_smoothed_nll

    torch.manual_seed(0)
    hidden = torch.randn(37, 8)
    weight = torch.randn(50, 8)
    target = torch.randint(0, 50, (37,))
    target[::5] = 0  # pads
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss1, nll1 = label_smoothed_nll(torch.nn.functional.linear(h1, w1), target, 0, smoothing)
    (loss1 * 0.3).backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss2, nll2 = projected_label_smoothed_nll(h2, w2, target, 0, smoothing, block_bytes=block_bytes)
    (loss2 * 0.3).backward()
    torch.testing.assert_close(loss2, loss1)
    torch.testing.assert_close(nll2, nll1)
    torch.testing.assert_close(h2.grad, h1.grad)
    torch.testing.assert_close(w2.grad, w1.grad)
    assert float(h2.grad[::5].abs().sum()) == 0.0  # pad rows get no gradient
    with torch.no_grad():  # no gradient wanted: loss only
        loss3, _ = projected_label_smoothed_nll(hidden, weight, target, 0, smoothing, block_bytes=block_bytes)
    torch.testing.assert_close(loss3, loss1.detach())


def test_projected_loss_backward_twice_is_refused_not_wrong():
    """Backward scales the gradients saved in forward in place: a second pass through a retained graph
    must fail loudly rather than scale them twice."""
    from attnlab.training.loss import projected_label_smoothed_nll

    torch.manual_seed(0)
    h, w = torch.randn(6, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
    loss, _ = projected_label_smoothed_nll(h, w, torch.randint(1, 50, (6,)), 0)
    (loss * 0.5).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_projected_loss_rejects_mismatched_shapes():
    from attnlab.training.loss import projected_label_smoothed_nll

    with pytest.raises(ValueError, match="expected hidden"):
        projected_label_smoothed_nll(torch.randn(4, 8), torch.randn(10, 6), torch.zeros(4, dtype=torch.long), 0)


def test_budget_schedule_warms_up_then_decays_to_zero_at_the_budget():
    from attnlab.training.schedule import budget_lr

    d, warmup, scale = 256, 10, 2.0
    peak = peak_lr(d, warmup, scale)
    assert budget_lr(5, 0.0, d, warmup, scale) == pytest.approx(peak / 2)  # linear warm-up
    assert budget_lr(10, 0.0, d, warmup, scale) == pytest.approx(peak)
    assert budget_lr(40, 0.25, d, warmup, scale) == pytest.approx(0.75 * peak)  # then linear in the budget used
    assert budget_lr(5, 0.5, d, warmup, scale) == pytest.approx(peak / 4)  # both at once
    assert budget_lr(80, 1.0, d, warmup, scale) == 0.0 and budget_lr(90, 1.3, d, warmup, scale) == 0.0


def test_budget_schedule_in_the_trainer_follows_the_steps_used_and_resumes(tmp_path):
    """With a step budget, the trainer's learning rate is budget_lr(step + 1, step / max_steps); a run resumed
    from its middle checkpoint goes on with the learning rates and losses of the run that was not interrupted."""
    import json
    import shutil

    from attnlab.cli import main
    from attnlab.run_dir import load_run
    from attnlab.training.schedule import budget_lr

    args = ["train", "--task", "copy", "--n-train", "200", "--max-steps", "12", "--no-progress", "--preset", "test",
            "--vocab-size", "60", "--set", "lr_schedule=budget", "--set", "eval_every=6", "--set",
            "eval_bleu_sentences=0", "--set", "log_every=1", "--set", "keep_last=0", "--set", "max_tokens=200",
            "--set", "threads=1", "--set", "warmup_steps=4", "--set", "lr_scale=3.0", "--set", "decode_tuning_sentences=0"]
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    events = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    lrs = {e["step"]: e["lr"] for e in events if e["event"] == "train"}
    d_model = load_run(full).model.cfg.d_model
    for step, lr in lrs.items():  # the rate for the step after `step`, with `step` of 12 steps used
        assert lr == pytest.approx(budget_lr(step + 1, step / 12, d_model, 4, 3.0)), step
    assert lrs[12] == 0.0 and max(lrs.values()) > 0.0

    # resume from the checkpoint at step 6: the schedule continues where it was
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for ckpt in (part / "checkpoints").iterdir():
        if ckpt.name.endswith("12"):
            shutil.rmtree(ckpt)
    assert main([*args, "--out", str(part), "--resume"]) == 0
    events = [json.loads(line) for line in (part / "log.jsonl").read_text().splitlines()]
    after = events[max(i for i, e in enumerate(events) if e["event"] == "resume"):]
    resumed = {e["step"]: (e["lr"], e["loss"]) for e in after if e["event"] == "train"}
    assert sorted(resumed) == list(range(7, 13))
    full_events = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    assert resumed == {e["step"]: (e["lr"], e["loss"]) for e in full_events if e["event"] == "train" and e["step"] > 6}
