"""Preparation: streamed reading, a seeded reservoir sample, cleaning with counts, worker processes giving the
same bytes as one process, a cache that notices changed inputs, and a killed preparation that resumes."""
import hashlib
import json
import random

import pytest

from attnlab.data import prepare as prep
from attnlab.data.binarized import BinarizedPairs, open_manifest
from attnlab.data.corpora import split_lines
from attnlab.data.prepare import CorpusSources, PrepareConfig, prepare_dataset, read_texts
from attnlab.data.streams import PairSource, reservoir_sample, stream_lines
from attnlab.data.tokenizer import TokenizerPair

WORDS = "der die das ein eine Mann Frau Hund fährt läuft auf dem Fahrrad Straße rot blau schnell".split()


def corpus(n, seed=0):
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        k = rng.randint(2, 12)
        src = " ".join(rng.choice(WORDS) for _ in range(k))
        pairs.append((src, " ".join(reversed(src.split()))))
    return pairs


def write_files(tmp_path, pairs, name="train"):
    (tmp_path / f"{name}.de").write_text("".join(s + "\n" for s, _ in pairs))
    (tmp_path / f"{name}.en").write_text("".join(t + "\n" for _, t in pairs))
    return PairSource(str(tmp_path / f"{name}.de"), str(tmp_path / f"{name}.en"))


def digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())
            if p.suffix in (".bin", ".idx", ".txt")}


CFG = dict(vocab_size=120, tokenizer_sample=500, chunk_pairs=100, workers=1)


def test_stream_lines_split_as_read_lines(tmp_path):
    text = "a\r\nb\rc\u2028d\n\nlast without newline é" * 3
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    assert list(stream_lines(path, block_chars=4)) == split_lines(text)
    (tmp_path / "u.txt").write_bytes(b"ok\n\xff\n")
    with pytest.raises(ValueError, match="u.txt is not UTF-8 text"):
        list(stream_lines(tmp_path / "u.txt"))


def test_reservoir_sample_is_uniform_seeded_and_counts():
    sample, n = reservoir_sample(range(10_000), 100, seed=3)
    assert n == 10_000 and len(sample) == 100 and len({i for i, _ in sample}) == 100
    assert sample == reservoir_sample(range(10_000), 100, seed=3)[0]
    assert sample != reservoir_sample(range(10_000), 100, seed=4)[0]
    assert all(i == x for i, x in sample)
    # uniform: over many seeds, each tenth of the stream gets ~10% of the sample
    counts = [0] * 10
    for seed in range(200):
        for i, _ in reservoir_sample(range(2000), 20, seed)[0]:
            counts[i // 200] += 1
    assert all(abs(c / 4000 - 0.1) < 0.02 for c in counts), counts
    assert reservoir_sample(range(5), 10, 0) == ([(i, i) for i in range(5)], 5)


def test_cleaning_drops_and_counts_never_truncates(tmp_path):
    good = corpus(300)
    bad = [("", "leer"), ("  ", "x"), ("Mann", ""),  # empty sides
           ("Mann", " ".join(["Fahrrad"] * 20)),  # length ratio
           (" ".join(["Hund"] * 40), " ".join(["Hund"] * 40))]  # too long for max_len 30
    pairs = good[:100] + bad + good[100:]
    sources = CorpusSources(write_files(tmp_path, pairs), write_files(tmp_path, corpus(20, 1), "valid"))
    manifest = prepare_dataset(sources, tmp_path / "out", PrepareConfig(**CFG, max_len=30, max_ratio=3.0))
    train = manifest["splits"]["train"]
    assert train["read"] == 305 and train["pairs"] == 300
    assert train["dropped"] == {"empty": 3, "ratio": 1, "too_long": 1}
    data = BinarizedPairs(tmp_path / "out", "train")
    tok = TokenizerPair.load(tmp_path / "out")
    assert len(data) == 300
    for i in (0, 99, 100, 299):  # the kept pairs, whole and in order
        src, tgt = data[i]
        assert (tok.src.decode(src), tok.tgt.decode(tgt)) == good[i]
    assert read_texts(tmp_path / "out", "valid") == tuple(map(list, zip(*corpus(20, 1))))


def test_holdout_when_there_is_no_validation_source(tmp_path):
    pairs = corpus(400)
    manifest = prepare_dataset(CorpusSources(write_files(tmp_path, pairs)), tmp_path / "out", PrepareConfig(**CFG))
    assert manifest["splits"]["train"]["pairs"] == 380 and manifest["splits"]["valid"]["pairs"] == 20
    assert read_texts(tmp_path / "out", "valid") == tuple(map(list, zip(*pairs[380:])))


def test_worker_processes_give_the_same_bytes_and_the_cache_notices_changes(tmp_path):
    sources = CorpusSources(write_files(tmp_path, corpus(1000)))
    one = prepare_dataset(sources, tmp_path / "one", PrepareConfig(**CFG))
    two = prepare_dataset(sources, tmp_path / "two", PrepareConfig(**{**CFG, "workers": 2}))
    assert digests(tmp_path / "one") == digests(tmp_path / "two")
    assert one["tokenizer_sha256"] == two["tokenizer_sha256"]
    # up to date: nothing is redone (the files keep their modification times)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one").iterdir()}
    assert prepare_dataset(sources, tmp_path / "one", PrepareConfig(**CFG)) == one
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one").iterdir()}
    # a changed input file or setting makes a new dataset
    write_files(tmp_path, corpus(900))
    again = prepare_dataset(CorpusSources(write_files(tmp_path, corpus(900))), tmp_path / "one", PrepareConfig(**CFG))
    assert again["splits"]["train"]["pairs"] == 855


def test_a_killed_preparation_resumes_with_the_chunks_it_finished(tmp_path, monkeypatch):
    sources = CorpusSources(write_files(tmp_path, corpus(1000)))
    reference = prepare_dataset(sources, tmp_path / "ref", PrepareConfig(**CFG))

    real, calls = prep._encode_chunk, []

    def dies_after_three(*args):
        calls.append(args[1])
        if len(calls) > 3:
            raise KeyboardInterrupt  # as a kill in the middle of the fourth chunk
        return real(*args)

    monkeypatch.setattr(prep, "_encode_chunk", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(sources, tmp_path / "out", PrepareConfig(**CFG))
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(Exception, match="no complete prepared dataset"):
        open_manifest(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / ".work").glob("chunk-*.json")) == \
        ["chunk-000000.json", "chunk-000001.json", "chunk-000002.json"]

    calls.clear()
    monkeypatch.setattr(prep, "_encode_chunk", lambda *a: (calls.append(a[1]), real(*a))[1])
    resumed = prepare_dataset(sources, tmp_path / "out", PrepareConfig(**CFG))
    assert calls == [f"chunk-{k:06d}" for k in range(3, 10)] + ["valid"]  # the three finished chunks are kept
    assert digests(tmp_path / "out") == digests(tmp_path / "ref")
    assert resumed["splits"] == reference["splits"] and not (tmp_path / "out" / ".work").exists()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["tokenizer_sha256"] == \
        reference["tokenizer_sha256"]


def test_tokenizer_fingerprint_survives_save_and_load(tmp_path):
    tok = TokenizerPair.train(corpus(200), vocab_size=100)
    tok.save(tmp_path)
    assert TokenizerPair.load(tmp_path).fingerprint() == tok.fingerprint()
    other = TokenizerPair.train(corpus(200, seed=1), vocab_size=90)
    assert other.fingerprint() != tok.fingerprint()


def test_word_cached_encoder_gives_the_tokenizers_ids(multi30k_dir):
    from attnlab.data.prepare import WordCachedEncoder

    de = list(stream_lines(multi30k_dir / "raw" / "train.de.gz"))[:3000]
    joined = [" ".join(de[i:i + 3]) for i in range(0, 3000, 3)]  # longer sentences, as the benchmark's
    odd = ["", " ", "a  b", " lead", "trail ", "tab\there", "einer \tWasser", "nbsp\u00a0x", "\ufb01 ligature", "x\u3000y",
           "</s> <pad>", "a,b. c!", "e\u0301 combining", "\u2028 ls", "z\x85", "Ä Å ß", "😀 emoji"]
    tok = TokenizerPair.train([(s, s) for s in de], vocab_size=500).src
    texts = de[:1000] + odd + joined + odd
    encoder = WordCachedEncoder(tok, max_words=400)  # small: the cache is emptied on the way
    got = encoder.encode_batch(texts[:700]) + encoder.encode_batch(texts[700:])
    assert got == tok.encode_batch(texts)
    flat, lengths = encoder.encode_flat(odd)
    assert lengths.tolist() == [len(ids) for ids in tok.encode_batch(odd)] and lengths[0] == 0
