"""The binarized dataset: ids round-trip through .bin/.idx memmaps, the dtype fits the vocabulary, a batch from
the memmaps equals `collate`, and a truncated, changed or foreign dataset is a one-line error."""
import numpy as np
import pytest
import torch

from attnlab.cli import main
from attnlab.data.batching import collate
from attnlab.data.binarized import (
    BinarizedPairs,
    DatasetError,
    IndexedSentences,
    IndexedWriter,
    file_entry,
    ids_dtype,
    open_manifest,
    write_manifest,
)


def sentences(n, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(4, vocab, size=int(rng.integers(0, 30))) for _ in range(n)]


def write(prefix, sents, dtype, chunks=3):
    writer = IndexedWriter(prefix, dtype)
    for part in np.array_split(np.arange(len(sents)), chunks):  # appended a chunk at a time
        block = [sents[i] for i in part]
        writer.append(np.concatenate(block) if block else np.zeros(0, np.int64),
                      np.array([len(s) for s in block], np.int32))
    return writer.finish()


def make_dataset(tmp_path, n=200, vocab=1000, seed=0):
    src, tgt = sentences(n, vocab, seed), sentences(n, vocab, seed + 1)
    dtype = ids_dtype(vocab)
    write(tmp_path / "train.src", src, dtype)
    write(tmp_path / "train.tgt", tgt, dtype)
    files = {p.name: file_entry(p) for p in sorted(tmp_path.glob("train.*"))}
    write_manifest(tmp_path, {"format": 1, "tokenizer_sha256": "ab" * 32, "files": files, "splits": {}})
    return src, tgt


def test_ids_round_trip_through_the_memmap(tmp_path):
    sents = sentences(500, 30_000)
    info = write(tmp_path / "x", sents, ids_dtype(30_000))
    assert info == {"sentences": 500, "tokens": sum(len(s) for s in sents)}
    side = IndexedSentences(tmp_path / "x")
    assert isinstance(side.data, np.memmap) and side.data.dtype == np.uint16
    assert len(side) == 500 and side.lengths.tolist() == [len(s) for s in sents]
    for i in (0, 1, 257, 499):
        assert side.ids(i).tolist() == sents[i].tolist()
    assert (tmp_path / "x.bin").stat().st_size == 2 * info["tokens"]  # 2 bytes a token, nothing else
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_dtype_is_the_smallest_that_holds_the_vocabulary(tmp_path):
    assert ids_dtype(8000) == np.uint16 and ids_dtype(65_536) == np.uint16  # ids 0..65,535
    assert ids_dtype(65_537) == np.int32 and ids_dtype(250_000) == np.int32
    big = [np.array([65_535, 65_536, 249_999]), np.array([4])]
    write(tmp_path / "big", big, ids_dtype(250_000), chunks=1)
    side = IndexedSentences(tmp_path / "big")
    assert side.dtype == np.int32 and side.ids(0).tolist() == [65_535, 65_536, 249_999]
    with pytest.raises(ValueError, match="out of range for uint16"):
        IndexedWriter(tmp_path / "small", np.uint16).append(np.array([70_000]), np.array([1]))


def test_batch_from_the_memmaps_equals_collate(tmp_path):
    make_dataset(tmp_path)
    data = BinarizedPairs(tmp_path, "train")
    idx = np.array([5, 0, 199, 42, 42, 17])
    got = data.batch(idx, pad_id=0)
    want = collate([data[i] for i in idx.tolist()], pad_id=0)
    for name in ("src", "tgt_in", "tgt_out"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.n_tokens == want.n_tokens
    assert data[3][0][-1] == 2 and data[3][1][0] == 1 and data[3][1][-1] == 2  # EOS; BOS ... EOS
    src_len, tgt_len = data.example_lengths()
    assert src_len[3] == len(data[3][0]) and tgt_len[3] == len(data[3][1])


def test_a_truncated_bin_or_idx_is_a_one_line_error(tmp_path):
    make_dataset(tmp_path)
    bin_path = tmp_path / "train.tgt.bin"
    data = bin_path.read_bytes()
    bin_path.write_bytes(data[:-2])
    with pytest.raises(DatasetError, match="train.tgt.bin is .* bytes, the manifest says .*truncated"):
        open_manifest(tmp_path)
    with pytest.raises(DatasetError, match="train.tgt.bin is missing or truncated"):
        BinarizedPairs(tmp_path, "train")
    bin_path.write_bytes(data)
    idx_path = tmp_path / "train.src.idx"
    idx_path.write_bytes(idx_path.read_bytes()[:-4])
    with pytest.raises(DatasetError, match="train.src.idx is truncated or corrupt"):
        BinarizedPairs(tmp_path, "train")


def test_a_changed_byte_fails_verification_and_another_tokenizer_is_refused(tmp_path):
    make_dataset(tmp_path)
    assert open_manifest(tmp_path, "ab" * 32, verify=True)["tokenizer_sha256"] == "ab" * 32
    with pytest.raises(DatasetError, match="prepared with another tokenizer"):
        open_manifest(tmp_path, "cd" * 32)
    path = tmp_path / "train.src.bin"
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    open_manifest(tmp_path)  # same size: only the sha256 tells
    with pytest.raises(DatasetError, match="does not match its sha256"):
        open_manifest(tmp_path, verify=True)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DatasetError, match="no complete prepared dataset"):
        open_manifest(tmp_path)


def test_cli_reports_a_truncated_dataset_in_one_line(tmp_path, capsys):
    make_dataset(tmp_path)
    (tmp_path / "train.src.bin").write_bytes(b"\0\0")
    assert main(["prepare", "--verify", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truncated" in err and err.startswith("attnlab prepare: error:")
