"""Gradient accumulation: N micro-batches give the update of one batch holding all their examples (the loss is
summed over real target tokens and divided by their total, not averaged per micro-batch)."""
import torch

from attnlab import Transformer, TransformerConfig
from attnlab.data.batching import collate
from attnlab.training.config import TrainConfig
from attnlab.training.loop import Trainer


def examples(n=24):
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):  # very different lengths, so the micro-batches hold very different token counts
        s, t = torch.randint(2, 20, (2,), generator=g).tolist()
        out.append((torch.randint(4, 40, (s,), generator=g).tolist() + [2],
                    [1] + torch.randint(4, 40, (t,), generator=g).tolist() + [2]))
    return out


def trainer(tmp_path, name):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, n_heads=4, n_layers=2,
                                          d_ff=64, dropout=0.0, pad_id=0))
    cfg = TrainConfig(max_tokens=10_000, accum_steps=3, amp="none", clip_norm=0.0, label_smoothing=0.1, threads=1)
    t = Trainer(model, examples(), None, cfg, tmp_path / name, "cpu", progress=False)
    # plain SGD with a constant rate: the update is the gradient itself, so any mis-normalisation shows
    # (Adam's first step is sign(gradient) and would hide a wrong scale)
    t.optimizer = torch.optim.SGD(t.model.parameters(), lr=1.0)
    t.scheduler = torch.optim.lr_scheduler.LambdaLR(t.optimizer, lambda step: 1.0)
    return t


def test_micro_batches_give_the_update_of_one_batch(tmp_path):
    data = examples()
    parts = [data[:3], data[3:13], data[13:]]  # 3 micro-batches of 3, 10 and 11 examples
    one, accumulated = trainer(tmp_path, "one"), trainer(tmp_path, "accum")
    before = {k: v.clone() for k, v in one.model.state_dict().items()}
    stats_one = one.train_step([collate(data)])
    stats_acc = accumulated.train_step([collate(p) for p in parts])
    assert abs(stats_one["loss"] - stats_acc["loss"]) < 1e-5
    assert stats_one["tokens"] == stats_acc["tokens"] == sum(len(t) - 1 for _, t in data)
    a, b = one.model.state_dict(), accumulated.model.state_dict()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float((a[k] - before[k]).abs().max()) for k in a)
    print(f"largest weight difference {worst:.2e}, largest update {moved:.2e}")
    assert moved > 1e-2  # the step did something
    assert worst < 1e-5  # and the same thing, to fp32 rounding
