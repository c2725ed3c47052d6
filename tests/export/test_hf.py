"""attnlab -> Hugging Face Marian: same logits, same greedy output, and back again exactly."""
from __future__ import annotations

import json

import pytest
import torch

from required import require_module

transformers = require_module("transformers")

from attnlab.decoding import greedy  # noqa: E402
from attnlab.export import MarianExportError, export_marian, load_marian, read_marian_special_ids  # noqa: E402
from attnlab.export.hf import MASKED_LOGIT, PAD_ROW_KEY, marian_permutation  # noqa: E402
from attnlab.layers.embedding import sinusoidal_table  # noqa: E402

from export_helpers import BOS, CONFIGS, EOS, PAD, make_batch, make_model, trained_model  # noqa: E402

MAX_NEW = 8


@pytest.fixture(scope="module", params=CONFIGS, ids=[c[0] for c in CONFIGS])
def exported(request, tmp_path_factory):
    """(attnlab model, src, tgt, eos id, export dir, Marian model) for one configuration."""
    name, _ = request.param
    model = trained_model(name)
    src, tgt = make_batch(model)
    eos = EOS
    out = tmp_path_factory.mktemp(name)
    export_marian(model, out, model_card={"data": "reversal task", "bleu": 0.0, "command": "pytest"},
                  bos_id=BOS, eos_id=eos)
    hf = transformers.MarianMTModel.from_pretrained(out).eval()
    return model, src, tgt, eos, out, hf


def test_position_tables_agree_after_permutation():
    """The reason for the permutation: our interleaved table, permuted, is Marian's table."""
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    for d in (32, 6):
        marian = MarianSinusoidalPositionalEmbedding(50, d).create_weight()
        ours = sinusoidal_table(50, d)[:, marian_permutation(d)]
        torch.testing.assert_close(ours, marian, atol=1e-6, rtol=0)


def test_logits_match_marian(exported):
    model, src, tgt, _, _, hf = exported
    with torch.no_grad():
        ours = model(src, tgt)
        theirs = hf(input_ids=src, attention_mask=src != PAD, decoder_input_ids=tgt).logits
    vocab = model.cfg.tgt_vocab_size
    assert theirs.shape == (*ours.shape[:2], vocab + 1)  # + Marian's <pad> row, for CTranslate2
    assert theirs[..., vocab].eq(MASKED_LOGIT).all()  # zero embedding, bias MASKED_LOGIT: probability 0
    diff = (ours - theirs[..., :vocab]).abs().max().item()
    assert diff < 1e-5, f"max |logit difference| {diff:.2e}"
    # so the log-probabilities (what beam search adds up) are attnlab's too
    diff = (ours.log_softmax(-1) - theirs.log_softmax(-1)[..., :vocab]).abs().max().item()
    assert diff < 1e-5, f"max |log-probability difference| {diff:.2e}"


def test_generate_equals_attnlab_greedy(exported):
    model, src, _, eos, _, hf = exported
    ours = greedy(model, src, MAX_NEW, BOS, eos)
    with torch.no_grad():
        # forced_eos_token_id=None: attnlab's greedy does not force </s> at the length limit
        theirs = hf.generate(src, attention_mask=src != PAD, num_beams=1, do_sample=False,
                             decoder_start_token_id=BOS, max_new_tokens=MAX_NEW, forced_eos_token_id=None)
    assert theirs[:, 0].eq(BOS).all()
    assert theirs[:, 1:].tolist() == ours.tolist()
    # the test is only worth something if rows end at different steps and the output varies
    assert (ours == eos).any() and len(set(ours.flatten().tolist())) > 3, ours


def test_round_trip_is_exact(exported):
    model, src, tgt, eos, out, _ = exported
    loaded = load_marian(out)
    assert loaded.cfg.share_embeddings == model.cfg.share_embeddings
    assert loaded.cfg.tie_output == model.cfg.tie_output
    assert loaded.cfg.decoder_layers == model.cfg.decoder_layers
    assert loaded.cfg.zero_start_id == model.cfg.zero_start_id  # read back from the zero <s> row
    if model.cfg.share_embeddings:
        assert loaded.input_embedding is loaded.output_embedding
    if model.cfg.tie_output:
        assert loaded.output_projection.weight is loaded.output_embedding.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(src, tgt), model(src, tgt), atol=0, rtol=0)
    assert read_marian_special_ids(out) == {"pad_id": PAD, "bos_id": BOS, "eos_id": eos}


def test_config_and_model_card(exported):
    model, _, _, eos, out, _ = exported
    config = json.loads((out / "config.json").read_text())
    cfg = model.cfg
    assert config["model_type"] == "marian"
    assert config["decoder_start_token_id"] == BOS and config["eos_token_id"] == eos
    assert config["share_encoder_decoder_embeddings"] == cfg.share_embeddings
    assert config["tie_word_embeddings"] == cfg.tie_output
    assert (config["vocab_size"], config["decoder_vocab_size"]) == (cfg.src_vocab_size + 1, cfg.tgt_vocab_size + 1)
    assert config[PAD_ROW_KEY] is True
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["bad_words_ids"] == [[cfg.tgt_vocab_size]]
    assert config["activation_function"] == cfg.activation
    assert config["scale_embedding"] == cfg.scale_embedding
    card = (out / "README.md").read_text()
    assert "| Training data | reversal task |" in card
    assert "| BLEU | 0.0 |" in card and "| Training time | not recorded |" in card
    assert "MarianMTModel.from_pretrained" in card


class _Tokenizer:
    """Stands in for attnlab.data.TokenizerPair: save(directory) writes tokenizer.json."""

    def save(self, directory):
        from tokenizers import Tokenizer, models

        vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "a", "b"])}
        Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(directory / "tokenizer.json"))


def test_tokenizer_files_and_card_without_facts(tmp_path):
    model = make_model(share_embeddings=True)
    export_marian(model, tmp_path, tokenizer=_Tokenizer())
    assert (tmp_path / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == "</s>"
    card = (tmp_path / "README.md").read_text()
    assert card.count("not recorded") == 4 and "tokenizer.json" in card


@pytest.mark.parametrize("overrides, words", [
    (dict(norm_first=True), "pre-norm"),
    (dict(positional="learned"), "positional='learned'"),
    (dict(layer_norm_eps=1e-6), "layer_norm_eps"),
])
def test_refuses_what_marian_cannot_express(tmp_path, overrides, words):
    with pytest.raises(MarianExportError, match=words):
        export_marian(make_model(**overrides), tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_model_without_biases_exports_zero_biases(tmp_path):
    model = make_model(bias=False, n_layers=1)
    src, tgt = make_batch(model)
    export_marian(model, tmp_path)
    hf = transformers.MarianMTModel.from_pretrained(tmp_path).eval()
    assert hf.model.encoder.layers[0].fc1.bias.abs().max() == 0
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=src != PAD, decoder_input_ids=tgt).logits
        diff = (model(src, tgt) - theirs[..., :-1]).abs().max()
    assert diff < 1e-5
