"""attnlab's greedy and beam search against transformers' generate() on the same network, exported to Marian:
the same tokens for every one of 120 sentences of mixed lengths.

Beam search runs the same algorithm in both (fairseq's rule: the 2K best extensions, EOS among the top K
set aside, a sentence done at K finished hypotheses = generate's early_stopping=True). The length penalties
differ: attnlab's default is GNMT's ((5 + |Y|) / 6) ** alpha, generate's |Y| ** alpha; the search is compared
with length_norm="power" (generate's, as attnlab decodes published Marian models), and GNMT's formula is
checked by hand in tests/decoding.
"""
from __future__ import annotations

import pytest
import torch

from required import require_module

transformers = require_module("transformers")

from attnlab.decoding import beam_search, greedy  # noqa: E402
from attnlab.export import export_marian  # noqa: E402

from export_helpers import BOS, EOS, PAD, trained_model  # noqa: E402

N_SENTENCES, MAX_NEW = 120, 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = trained_model("shared-tied")
    out = tmp_path_factory.mktemp("generate")
    export_marian(model, out, model_card={"data": "reversal task", "bleu": 0.0, "command": "pytest"},
                  bos_id=BOS, eos_id=EOS)
    hf = transformers.MarianMTModel.from_pretrained(out).eval()
    g = torch.Generator().manual_seed(7)
    lengths = torch.randint(2, 9, (N_SENTENCES,), generator=g)
    src = torch.randint(3, model.cfg.src_vocab_size, (N_SENTENCES, int(lengths.max())), generator=g)
    for i, n in enumerate(lengths.tolist()):
        src[i, n - 1] = EOS
        src[i, n:] = PAD
    return model, hf, src


def generate(hf, src, beams, alpha=1.0):
    with torch.no_grad():
        out = hf.generate(src, attention_mask=src != PAD, num_beams=beams, do_sample=False, early_stopping=True,
                          length_penalty=alpha, decoder_start_token_id=BOS, max_new_tokens=MAX_NEW,
                          forced_eos_token_id=None)
    assert out[:, 0].eq(BOS).all()
    rows = []
    for row in out[:, 1:].tolist():  # up to EOS; generate pads after it
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows


def test_greedy_equals_generate_on_120_sentences(exported):
    model, hf, src = exported
    ours = [[t for t in row if t != PAD] for row in greedy(model, src, MAX_NEW, BOS, EOS).tolist()]
    theirs = generate(hf, src, beams=1)
    assert ours == theirs
    # worth something only if rows end at different steps (most of them with EOS) and the output varies
    lengths = {len(row) for row in ours}
    assert len(lengths) > 4 and sum(row[-1] == EOS for row in ours) > N_SENTENCES // 2, lengths


@pytest.mark.parametrize("beams,alpha", [(4, 0.6), (3, 2.0), (5, 0.0)])
def test_beam_search_equals_generate_on_120_sentences(exported, beams, alpha):
    model, hf, src = exported
    hyps = beam_search(model, src, beam_size=beams, max_len=MAX_NEW, bos_id=BOS, eos_id=EOS,
                       length_penalty_alpha=alpha, length_norm="power", early_stopping=True)  # generate's rules
    ours = [h[0].tokens for h in hyps]
    theirs = generate(hf, src, beams=beams, alpha=alpha)
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not differ, [(ours[i], theirs[i]) for i in differ[:5]]
    # the beams find other outputs than greedy for some sentences (else the test would not test a beam)
    greedy_rows = [[t for t in row if t != PAD] for row in greedy(model, src, MAX_NEW, BOS, EOS).tolist()]
    assert sum(a != b for a, b in zip(ours, greedy_rows)) >= 3
