"""A model attnlab trains, exported with `export_marian` (`attnlab export --format hf`), converts with
CTranslate2's own converter (TransformersConverter = ct2-transformers-converter) and gives attnlab's tokens.

CTranslate2's Marian loader drops the last vocabulary row (Marian's <pad>: the export appends one) and
starts the decoder from a zero embedding: attnlab's <s> row, held at zero (TransformerConfig.zero_start_id).
A model with a learned <s> converts too, but decodes otherwise: the export says so (ctranslate2_note).
"""
from __future__ import annotations

import json

import pytest
import torch

from required import require_module

ctranslate2 = require_module("ctranslate2")
transformers = require_module("transformers")

from attnlab.decoding import beam_search, greedy  # noqa: E402
from attnlab.export import export_marian  # noqa: E402
from attnlab.export.hf import ctranslate2_note  # noqa: E402

from export_helpers import BOS, EOS, PAD, make_model, trained_model  # noqa: E402

N_SENTENCES, MAX_NEW = 120, 10
VOCAB = 31  # export_helpers.make_config
TOKENS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, VOCAB)]


class WordTokenizer:
    """Stands in for attnlab.data.TokenizerPair (joint): save(directory) writes tokenizer.json."""

    joint = True

    def save(self, directory):
        from tokenizers import Tokenizer, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOKENS)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.save(str(directory / "tokenizer.json"))


def sources() -> list[list[int]]:
    """N_SENTENCES token-id sources of 1-8 tokens, each ending with </s> (the reversal task's inputs)."""
    g = torch.Generator().manual_seed(11)
    lengths = torch.randint(2, 10, (N_SENTENCES,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (n - 1,), generator=g).tolist() + [EOS] for n in lengths]


def padded(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def until_eos(row: list[int]) -> list[int]:
    """attnlab's output as CTranslate2 returns it: the tokens before </s>."""
    return row[: row.index(EOS)] if EOS in row else row


def convert(model, out_dir):
    export_marian(model, out_dir / "hf", tokenizer=WordTokenizer(), bos_id=BOS, eos_id=EOS)
    ctranslate2.converters.TransformersConverter(str(out_dir / "hf")).convert(str(out_dir / "ct2"))
    return ctranslate2.Translator(str(out_dir / "ct2"), device="cpu", inter_threads=1, intra_threads=1)


def ct2_tokens(translator, src: list[list[int]], beam: int) -> list[list[int]]:
    # CTranslate2 counts </s> in max_decoding_length as attnlab's max_len does; length ** 1 as length_norm="power"
    results = translator.translate_batch([[TOKENS[i] for i in row] for row in src], beam_size=beam,
                                         max_decoding_length=MAX_NEW, min_decoding_length=0, length_penalty=1.0)
    return [[TOKENS.index(t) for t in r.hypotheses[0]] for r in results]


@pytest.fixture(scope="module")
def zero_start(tmp_path_factory):
    """A model trained 100 Adam steps to reverse its source, <s> held at zero, exported and converted."""
    model = make_model(seed=5, steps=100, share_embeddings=True, zero_start_id=BOS)
    return model, convert(model, tmp_path_factory.mktemp("zero-start"))


def test_start_row_stays_zero_through_training(zero_start):
    model, _ = zero_start
    weight = model.output_embedding.weight  # also the output projection (tied) and the source embedding (shared)
    assert weight[BOS].abs().max() == 0 and weight[EOS].abs().min() > 0
    assert ctranslate2_note(model, WordTokenizer(), BOS) is None


def test_ctranslate2_greedy_tokens_equal_attnlab(zero_start):
    model, translator = zero_start
    src = sources()
    ours = [until_eos(row) for row in greedy(model, padded(src), MAX_NEW, BOS, EOS).tolist()]
    assert ct2_tokens(translator, src, beam=1) == ours
    # worth something only if the outputs end at different steps and vary
    assert len({len(row) for row in ours}) > 4 and len({t for row in ours for t in row}) > 10


def test_ctranslate2_beam_tokens_equal_attnlab(zero_start):
    model, translator = zero_start
    src = sources()
    hyps = beam_search(model, padded(src), beam_size=4, max_len=MAX_NEW, bos_id=BOS, eos_id=EOS,
                       length_penalty_alpha=1.0, length_norm="power", early_stopping=True)
    ours = [until_eos(h[0].tokens) for h in hyps]
    same = sum(a == b for a, b in zip(ours, ct2_tokens(translator, src, beam=4)))
    # CTranslate2 ends a sentence's search by its own rule; greedy is identical (above)
    assert same >= 0.9 * N_SENTENCES, f"{same}/{N_SENTENCES} identical"


def test_learned_start_is_told_and_differs(tmp_path):
    """A model trained before zero_start_id (learned <s>): the export still converts, says in its card why
    CTranslate2's tokens are not attnlab's, and indeed they are not for some sentences."""
    model = trained_model("shared-tied")
    assert model.cfg.zero_start_id is None
    note = ctranslate2_note(model, WordTokenizer(), BOS)
    assert note is not None and "learned <s> embedding" in note
    translator = convert(model, tmp_path)
    assert note in (tmp_path / "hf" / "README.md").read_text()
    src = sources()
    ours = [until_eos(row) for row in greedy(model, padded(src), MAX_NEW, BOS, EOS).tolist()]
    assert sum(a != b for a, b in zip(ours, ct2_tokens(translator, src, beam=1))) > N_SENTENCES // 10


def test_separate_vocabularies_are_told(tmp_path):
    model = make_model(zero_start_id=BOS)

    class Separate(WordTokenizer):
        joint = False

    assert "separate vocabularies" in ctranslate2_note(model, Separate(), BOS)
    assert "none was exported" in ctranslate2_note(model, None, BOS)


def test_card_gives_the_ctranslate2_command(zero_start, tmp_path):
    model, _ = zero_start
    export_marian(model, tmp_path / "m", tokenizer=WordTokenizer(), bos_id=BOS, eos_id=EOS)
    assert "ct2-transformers-converter --model m --output_dir m-ct2" in (tmp_path / "m" / "README.md").read_text()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["decoder_start_token_id"] == BOS
