"""`attnlab train` on files goes through a prepared, memory-mapped dataset (RUN/data): a run stopped in the
middle of an epoch and resumed continues with the next batch of the same epoch order (the same losses as
a run never stopped), and a dataset made with another tokenizer is refused in one line."""
import json
import random

import pytest

from attnlab.cli import main
from attnlab.data.binarized import open_manifest

WORDS = "a man woman dog rides runs on the bike street red blue fast small big".split()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    rng = random.Random(0)
    src = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10))) for _ in range(600)]
    (d / "train.src").write_text("".join(s + "\n" for s in src))
    (d / "train.tgt").write_text("".join(" ".join(reversed(s.split())) + "\n" for s in src))
    return d


def args(files, out, steps):
    return ["train", "--task", "files", "--train-src", str(files / "train.src"), "--train-tgt", str(files / "train.tgt"),
            "--out", str(out), "--max-steps", str(steps), "--no-progress", "--preset", "test", "--vocab-size", "60",
            "--workers", "1", "--set", "dropout=0.1", "--set", "eval_every=4", "--set", "eval_bleu_sentences=0",
            "--set", "log_every=1", "--set", "max_tokens=150", "--set", "threads=1", "--set", "seed=3"]


def train_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_mid_epoch_resume_continues_with_the_same_batches(files, tmp_path):
    assert main(args(files, tmp_path / "whole", 10)) == 0
    assert main(args(files, tmp_path / "split", 4)) == 0
    assert main(args(files, tmp_path / "split", 10) + ["--resume"]) == 0
    whole = {e["step"]: (e["loss"], e["epoch"]) for e in train_log(tmp_path / "whole") if e["event"] == "train"}
    split = {e["step"]: (e["loss"], e["epoch"]) for e in train_log(tmp_path / "split") if e["event"] == "train"}
    assert sorted(whole) == sorted(split) == list(range(1, 11))
    assert all(epoch == 0 for _, epoch in whole.values())  # the resume fell in the middle of epoch 0
    assert split == whole  # bit-identical losses: the same batches, in the same order, with the same dropout
    manifest = open_manifest(tmp_path / "whole" / "data", verify=True)
    assert manifest["splits"]["train"]["pairs"] == 570 and manifest["dtype"] == "uint16"
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["task"]["data_bin"] == str((tmp_path / "whole" / "data").resolve())


def test_a_dataset_of_another_tokenizer_is_refused(files, tmp_path, capsys):
    assert main(args(files, tmp_path / "a", 1)) == 0
    other = tmp_path / "other"  # the same text, another tokenizer (another vocabulary)
    assert main(["prepare", "--train-src", str(files / "train.src"), "--train-tgt", str(files / "train.tgt"),
                 "--out", str(other), "--vocab-size", "70", "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "a"), "--resume", "--data-bin", str(other), "--max-steps", "2",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "prepared with another tokenizer" in err
