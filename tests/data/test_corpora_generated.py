"""Corpora readers and generated tasks."""
import gzip

import pytest

from attnlab.data.corpora import read_lines, read_parallel, read_tsv
from attnlab.data.generated import make_generated_corpus


def test_read_plain_and_gzip_keep_empty_lines(tmp_path):
    text = "eins\n\ndrei\r\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    assert read_lines(tmp_path / "a.txt") == ["eins", "", "drei"]
    assert read_lines(tmp_path / "a.txt.gz") == ["eins", "", "drei"]


def test_misaligned_files_name_both_counts(tmp_path):
    (tmp_path / "s").write_text("a\nb\n")
    (tmp_path / "t").write_text("a\n")
    with pytest.raises(ValueError, match="has 2 lines but .* has 1"):
        read_parallel(tmp_path / "s", tmp_path / "t")


def test_missing_and_binary_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_lines(tmp_path / "nope.txt")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_lines(tmp_path / "bin")


def test_tsv(tmp_path):
    (tmp_path / "p.tsv").write_text("Hallo\tHello\n\nWelt\tWorld\textra\n")
    assert read_tsv(tmp_path / "p.tsv") == [("Hallo", "Hello"), ("Welt", "World")]
    (tmp_path / "bad.tsv").write_text("only one column\n")
    with pytest.raises(ValueError, match="bad.tsv:1"):
        read_tsv(tmp_path / "bad.tsv")


@pytest.mark.parametrize("task", ["dates", "numbers", "copy", "reverse"])
def test_generated_tasks_are_deterministic_with_disjoint_splits(task):
    a = make_generated_corpus(task, 300, 50, 50, seed=3)
    b = make_generated_corpus(task, 300, 50, 50, seed=3)
    c = make_generated_corpus(task, 300, 50, 50, seed=4)
    assert a.train == b.train and a.test == b.test
    assert a.train != c.train
    assert (len(a.train), len(a.valid), len(a.test)) == (300, 50, 50)
    train_src = {s for s, _ in a.train}
    assert not train_src & {s for s, _ in a.test}
    assert not train_src & {s for s, _ in a.valid}


def test_generated_pairs_are_translations():
    dates = make_generated_corpus("dates", 200, 0, 0, seed=0).train
    # the same date in both languages: the year (4 digits) appears on both sides
    import re
    for src, tgt in dates:
        assert re.findall(r"\d{4}", src) == re.findall(r"\d{4}", tgt)
    assert any("März" in t for _, t in dates) or any("Mär" in t for _, t in dates)
    rev = make_generated_corpus("reverse", 20, 0, 0, seed=0).train
    assert all(t.split() == s.split()[::-1] for s, t in rev)
    nums = make_generated_corpus("numbers", 50, 0, 0, seed=0).train
    assert max(len(s.split()) for s, _ in nums) >= 8  # long inputs exist
