"""Subword tokenizers: special ids, detokenised round trip, save/load, bad files, arbitrary Unicode."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.data.generated import make_generated_corpus
from attnlab.data.tokenizer import SubwordTokenizer, TokenizerPair

TEXTS = [s for pair in make_generated_corpus("dates", 2000, 0, 0, seed=1).train for s in pair] + [
    "Ein Mann (mit Hut) sagt: „Hallo!“ – und geht.", "A man in an orange hat, staring at something.",
]


@pytest.fixture(scope="module")
def tok():
    return SubwordTokenizer.train(TEXTS, vocab_size=300)


def test_special_ids(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert [tok.id_to_token(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert tok.vocab_size <= 300


def test_round_trip_is_detokenised_text(tok):
    for text in TEXTS[:200] + TEXTS[-2:]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode([tok.bos_id] + tok.encode("May 3, 1999") + [tok.eos_id, tok.pad_id]) == "May 3, 1999"
    assert tok.tokens("Hut,")[-1] == ","  # punctuation is split off words


def test_unknown_characters_never_crash(tok):
    ids = tok.encode("Ein 😀 Mann ❄")
    assert tok.unk_id in ids
    assert "Ein" in tok.decode(ids) and "Mann" in tok.decode(ids)
    assert tok.decode([10**6, -5, 3]) == ""  # out-of-range ids are dropped, not an exception


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_unicode_encodes_and_decodes(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert isinstance(tok.decode(ids), str)


seen_chars = sorted(set("".join(TEXTS[:200])) - {" "})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=seen_chars, min_size=1, max_size=8), min_size=1, max_size=6))
def test_round_trip_exact_on_seen_characters(tok, words):
    text = " ".join(words)
    assert tok.decode(tok.encode(text)) == text


def test_save_load_and_bad_files(tok, tmp_path):
    tok.save(tmp_path / "t.json")
    again = SubwordTokenizer.load(tmp_path / "t.json")
    assert again.encode(TEXTS[5]) == tok.encode(TEXTS[5])
    (tmp_path / "bad.json").write_text("{broken")
    with pytest.raises(ValueError, match="bad.json is corrupt"):
        SubwordTokenizer.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="not found"):
        SubwordTokenizer.load(tmp_path / "none.json")


def test_pair_joint_and_separate(tmp_path):
    pairs = make_generated_corpus("dates", 500, 0, 0, seed=2).train
    joint = TokenizerPair.train(pairs, vocab_size=200, joint=True)
    assert joint.src is joint.tgt
    joint.save(tmp_path / "j")
    assert (tmp_path / "j" / "tokenizer.json").is_file()
    sep = TokenizerPair.train(pairs, vocab_size=200, joint=False)
    sep.save(tmp_path / "s")
    loaded = TokenizerPair.load(tmp_path / "s")
    assert not loaded.joint and loaded.tgt.encode(pairs[0][1]) == sep.tgt.encode(pairs[0][1])
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        TokenizerPair.load(tmp_path)
    with pytest.raises(ValueError, match="empty corpus"):
        TokenizerPair.train([], 100)


def test_special_token_text_is_ordinary_text(tok):
    ids = tok.encode("May </s> 3 <pad> 1999 <s>")
    assert not set(ids) & {tok.pad_id, tok.bos_id, tok.eos_id}
