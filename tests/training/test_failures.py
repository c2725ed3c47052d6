"""Training that goes wrong stops with a one-line error naming the step, and leaves the run directory with
its last good checkpoint: NaN loss, NaN gradients, a full disk while saving."""

import pytest
import torch

from attnlab import Transformer, TransformerConfig
from attnlab.cli import main
from attnlab.run_dir import load_run
from attnlab.training.checkpoint import latest_checkpoint, load_checkpoint
from attnlab.training.config import TrainConfig
from attnlab.training.loop import Trainer, TrainingError


def make_trainer(tmp_path, **cfg):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(4, 20, (6,), generator=g).tolist() + [2], [1] + torch.randint(4, 20, (5,), generator=g).tolist() + [2])
            for _ in range(64)]
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, n_layers=1,
                                          d_ff=32, dropout=0.1, pad_id=0))
    values = dict(max_tokens=64, warmup_steps=4, max_steps=10, eval_every=2, log_every=1, amp="none", keep_last=0)
    values.update(cfg)
    return Trainer(model, data, None, TrainConfig(**values), tmp_path, "cpu", progress=False)


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.model.register_forward_hook(
        lambda module, args, out: out * float("nan") if module.training and trainer.step + 1 == 5 else out)
    with pytest.raises(TrainingError) as err:
        trainer.fit()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("loss became nan at step 5; stopped without updating the weights; "
                          f"the last good checkpoint is {tmp_path / 'checkpoints' / 'step-0000004'}")
    assert trainer.step == 4 and latest_checkpoint(tmp_path).name == "step-0000004"
    saved = make_trainer(tmp_path / "other").model
    load_checkpoint(latest_checkpoint(tmp_path), saved, restore_rng=False)
    for name, value in trainer.model.state_dict().items():  # the NaN step changed nothing
        assert torch.isfinite(value).all() and torch.equal(value, saved.state_dict()[name]), name


def test_nan_gradient_with_a_finite_loss_stops_too(tmp_path):
    trainer = make_trainer(tmp_path)
    weight = trainer.model.output_projection.weight
    weight.register_hook(lambda g: g * float("nan") if trainer.step + 1 == 3 else g)
    with pytest.raises(TrainingError, match=r"^gradient norm became nan at step 3; .*step-0000002"):
        trainer.fit()
    assert torch.isfinite(weight).all()


def test_exploding_learning_rate_is_a_one_line_cli_error(tmp_path, capsys):
    code = main(["train", "--task", "copy", "--n-train", "200", "--out", str(tmp_path / "run"), "--max-steps", "20",
                 "--no-progress", "--preset", "test", "--set", "lr_scale=1e30", "--set", "warmup_steps=1",
                 "--set", "clip_norm=0", "--set", "eval_bleu_sentences=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("attnlab train: error: loss became nan at step ")
    step = int(err[0].split("at step ")[1].split(";")[0])
    assert 1 < step <= 20


def test_disk_full_while_training_is_an_error_and_resume_continues(tmp_path, capsys, monkeypatch):
    import attnlab.training.checkpoint as ck

    out = tmp_path / "run"
    args = ["train", "--task", "copy", "--n-train", "200", "--out", str(out), "--no-progress", "--preset", "test",
            "--set", "eval_every=2", "--set", "eval_bleu_sentences=0", "--set", "keep_last=0"]
    real_write = ck._write_weights

    def fills_up(model, path, metadata=None):  # the disk fills up after the step-2 checkpoint
        if latest_checkpoint(out) is not None:
            raise OSError(28, "No space left on device")
        real_write(model, path, metadata)

    monkeypatch.setattr(ck, "_write_weights", fills_up)
    assert main(args + ["--max-steps", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "is kept" in err[0], err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["LATEST", "step-0000002"]
    load_run(out / "checkpoints" / "step-0000002")  # verified, loadable
    monkeypatch.undo()  # space freed
    assert main(args + ["--max-steps", "6", "--resume"]) == 0
    assert latest_checkpoint(out).name == "step-0000006"
    assert all(torch.isfinite(p).all() for p in load_run(out).model.parameters())
