"""attnlab experiment length: three architectures, same data and budget, BLEU by source length."""
import json

from attnlab.cli import main
from attnlab.commands.experiment import bleu_by_length, length_buckets


def test_length_buckets_cover_all_lengths():
    buckets = length_buckets([1, 2, 3, 10, 25], 4)
    assert buckets[0][0] == 1 and buckets[-1][1] == 25
    assert all(b[0] == a[1] + 1 for a, b in zip(buckets, buckets[1:]))


def test_bleu_by_length_splits_by_source_words():
    good = "the cat sat on the mat today"
    rows = bleu_by_length(["a b", "a b c d e"], [good, "p q r s"], [good, "no match here at all"], [(1, 3), (4, 6)])
    assert [r["sentences"] for r in rows] == [1, 1]
    assert rows[0]["bleu"] == 100 and rows[1]["bleu"] == 0


def test_experiment_runs_every_architecture(tmp_path, capsys):
    code = main(["experiment", "length", "--task", "numbers", "--out", str(tmp_path), "--archs", "rnn,rnn-attn,transformer",
                 "--n-train", "300", "--minutes", "5", "--set", "max_steps=4", "--set", "eval_every=4",
                 "--set", "eval_bleu_sentences=10", "--buckets", "3"])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["archs"]) == {"rnn", "rnn-attn", "transformer"}
    for res in results["archs"].values():
        assert res["steps"] == 4 and res["by_length"] and sum(r["sentences"] for r in res["by_length"]) == 500
    assert (tmp_path / "bleu_by_length.png").read_bytes()[:4] == b"\x89PNG"
    assert "| source words |" in (tmp_path / "results.md").read_text()
