"""Published Marian (opus-mt) directories in attnlab: token-identical to transformers.

The directories are stand-ins written by transformers and sentencepiece alone (tests/export/marian_standin.py):
swish, scale_embedding, a non-zero final_logits_bias, pad = decoder start = the last id, bad_words_ids.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

from marian_standin import generated_text, write_marian_standin  # noqa: E402

from attnlab.data.marian_tokenizer import MarianTokenizerPair  # noqa: E402
from attnlab.export.marian_import import MarianExportError, load_marian  # noqa: E402
from attnlab.hub import HubError, resolve_model  # noqa: E402
from attnlab.translate import DecodeConfig, Translator  # noqa: E402

MAX_LENGTH = 60  # transformers' max_length: the decoder start + up to 59 generated tokens

ODD = ["", " ", "   leading and trailing   ", "\t tab\tand\nnewline", "a </s> b", "<unk>x<pad>y</s>",
       ">>fra<< hallo welt", ">>de<<", "a >>fra<< b", ">>x<", "Ω≈ç√∫ ☃ 😀😀 你好世界 ﷽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\u200b\u200d\ufeff zero width",
       "é vs e\u0301 (NFC/NFD)", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "ß straße STRASSE", "x" * 3000,
       " ".join(generated_text(300, 7)), "..., !!! ??? ;;; ---", "1234567890 3.14 1,000", "\x00\x01 control"]


@pytest.fixture(scope="module")
def hf_model(standin):
    return transformers.MarianMTModel.from_pretrained(standin).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(standin):
    return transformers.MarianTokenizer.from_pretrained(standin)


@pytest.fixture(scope="module")
def translator(standin) -> Translator:
    return Translator.load(standin)


def _strip(row: torch.Tensor, eos: int, pad: int) -> list[int]:
    out = []
    for t in row.tolist()[1:]:  # the decoder start first
        if t == eos:
            break
        if t != pad:
            out.append(t)
    return out


def _sentences(n: int) -> list[str]:
    return generated_text(n, 9)


def test_tokenizer_is_marian_tokenizer(standin, hf_tokenizer):
    ours = MarianTokenizerPair.load(standin)
    texts = generated_text(1000, 3) + ODD
    assert len(texts) >= 1000
    for text in texts:
        assert ours.src.encode(text) + [ours.src.eos_id] == hf_tokenizer(text)["input_ids"], repr(text[:60])
    assert any(ours.src.unk_id in ours.src.encode(t) for t in ODD)  # unknown pieces did occur
    assert ours.src.tokens(">>fra<< hallo")[0] == ">>fra<<"
    rng = random.Random(0)
    for _ in range(500):
        ids = [rng.randrange(ours.tgt.vocab_size) for _ in range(rng.randint(0, 30))]
        want = hf_tokenizer.decode(ids, skip_special_tokens=True, use_source_tokenizer=False)
        assert ours.tgt.decode(ids) == want, ids
    assert ours.tgt.bos_id == ours.tgt.pad_id == ours.tgt.vocab_size - 1  # Marian starts from pad


def test_greedy_token_identical_and_logits(standin, hf_model, hf_tokenizer, translator):
    texts = _sentences(200)
    enc = hf_tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = hf_model.generate(**enc, num_beams=1, max_length=MAX_LENGTH, output_logits=True,
                                return_dict_in_generate=True)
    pad, eos = hf_model.config.pad_token_id, hf_model.config.eos_token_id
    want = [_strip(row, eos, pad) for row in out.sequences]
    got = translator.translate_ids([hf_tokenizer(t)["input_ids"] for t in texts],
                                   DecodeConfig(beam=1, max_len_a=0, max_len_b=MAX_LENGTH - 1))
    assert [g[0] for g in got] == want
    lengths = [len(w) for w in want]
    assert min(lengths) < 20 and max(lengths) > 5 and sum(n < MAX_LENGTH - 2 for n in lengths) > 150  # EOS ends most

    # per-step logits of attnlab's cached (lean) decoder step along transformers' own outputs
    model = translator.model
    src = enc["input_ids"]
    worst = 0.0
    with torch.no_grad():
        state = model.init_decode(src, max_len=MAX_LENGTH)
        for step, hf_logits in enumerate(out.logits):
            logits, state, _ = model.decode_step(out.sequences[:, : step + 1], state)
            worst = max(worst, float((logits - hf_logits).abs().max()))
    assert worst < 1e-4


def test_beam_matches_generate(standin, hf_model, hf_tokenizer, translator):
    texts = _sentences(200)
    enc = hf_tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = hf_model.generate(**enc, max_length=MAX_LENGTH)  # the model's defaults: num_beams 4, lp 1.0
    assert hf_model.generation_config.num_beams == 4
    pad, eos = hf_model.config.pad_token_id, hf_model.config.eos_token_id
    want = [_strip(row, eos, pad) for row in out]
    got = translator.translate_ids([hf_tokenizer(t)["input_ids"] for t in texts],
                                   DecodeConfig(max_len_a=0, max_len_b=MAX_LENGTH - 1))  # beam, lp: the model's
    same = sum(g[0] == w for g, w in zip(got, want))
    assert same >= 0.95 * len(texts), f"{same}/{len(texts)} identical"


def test_text_through_the_cli(standin, hf_model, hf_tokenizer, capsys):
    from attnlab.cli import main

    texts = _sentences(3)
    enc = hf_tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = hf_model.generate(**enc, num_beams=1, max_length=512)
    want = hf_tokenizer.batch_decode(out, skip_special_tokens=True, use_source_tokenizer=False)
    args = ["translate", "--model", str(standin), "--beam", "1", "--max-len-a", "0", "--max-len-b", "1000"]
    for t in texts:
        args += ["--text", t]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == want


def test_pytorch_model_bin_and_separate_vocabularies(tmp_path):
    """opus-mt-tc-big's layout (separate vocabularies, no shared embeddings), weights as pytorch_model.bin only."""
    out = write_marian_standin(tmp_path / "tc", generated_text(500, 4), generated_text(500, 5), spm_vocab=200,
                               separate_vocabs=True, weights="bin", activation="gelu")
    assert not (out / "model.safetensors").exists() and (out / "target_vocab.json").is_file()
    hf = transformers.MarianMTModel.from_pretrained(out).eval()
    ours = load_marian(out)
    assert not ours.cfg.share_embeddings and ours.cfg.activation == "gelu"
    tok = transformers.MarianTokenizer.from_pretrained(out)
    pair = MarianTokenizerPair.load(out)
    texts = generated_text(50, 6)
    for t in texts:
        assert pair.src.encode(t) + [pair.src.eos_id] == tok(t)["input_ids"]
    enc = tok(texts, return_tensors="pt", padding=True)
    tgt = torch.randint(0, hf.config.decoder_vocab_size - 1, (len(texts), 7))
    tgt[:, 0] = hf.config.decoder_start_token_id
    with torch.no_grad():
        want = hf(**enc, decoder_input_ids=tgt).logits
        got = ours(enc["input_ids"], tgt)
    assert float((got - want).abs().max()) < 1e-4


@pytest.mark.parametrize("key, value, named", [
    ("activation_function", "gelu_new", "activation_function 'gelu_new'"),
    ("normalize_before", True, "normalize_before=True"),
    ("static_position_embeddings", False, "static_position_embeddings=False"),
])
def test_unsupported_config_is_one_line(standin, tmp_path, key, value, named):
    copy = tmp_path / "m"
    shutil.copytree(standin, copy)
    config = json.loads((copy / "config.json").read_text())
    config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(MarianExportError, match=named) as err:
        load_marian(copy)
    assert "\n" not in str(err.value)


def test_hub_name_from_local_cache(standin, tmp_path, monkeypatch):
    """The published cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}, read offline."""
    repo = tmp_path / "hub" / "models--Helsinki-NLP--opus-mt-xx-yy"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(standin, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model("Helsinki-NLP/opus-mt-xx-yy") == repo / "snapshots" / commit
    tr = Translator.load("Helsinki-NLP/opus-mt-xx-yy")
    assert tr.translate(["ein mann"], beam=1) == Translator.load(standin).translate(["ein mann"], beam=1)
    with pytest.raises(HubError, match="not in the Hugging Face cache") as err:
        resolve_model("Helsinki-NLP/opus-mt-not-there")
    assert "\n" not in str(err.value)


def test_attention_evaluate_serve_export(standin, tmp_path, capsys):
    """The other commands take the published directory too; an hf export of it loads back the same."""
    from fastapi.testclient import TestClient

    from attnlab.cli import main
    from attnlab.serve import create_app

    text = _sentences(1)[0]
    assert main(["attention", "--model", str(standin), "--text", text, "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 1000
    (tmp_path / "src.txt").write_text("\n".join(_sentences(5)) + "\n")
    assert main(["evaluate", "--model", str(standin), "--src", str(tmp_path / "src.txt"), "--ref",
                 str(tmp_path / "src.txt"), "--json"]) == 0
    capsys.readouterr()
    with TestClient(create_app(str(standin))) as client:
        got = client.post("/translate", json={"text": [text, ""], "beam": 1, "attention": True}).json()
    want = Translator.load(standin).translate([text, ""], beam=1)
    assert got["translations"] == want and got["attention"][0]["source_tokens"][-1] == "</s>"
    assert main(["export", "--model", str(standin), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    again = Translator.load(tmp_path / "hf")
    assert again.generation == Translator.load(standin).generation
    assert again.translate(_sentences(20)) == Translator.load(standin).translate(_sentences(20))


@pytest.mark.slow
@pytest.mark.parametrize("shape, separate", [("opus-mt", False), ("tc-big", True)])
def test_published_shapes(tmp_path, shape, separate):
    """The opus-mt-de-en shape (512, 6+6, 8 heads, FFN 2048, vocabulary 58,101) and an opus-mt-tc-big-like one
    (1024, 6+6, 16 heads, FFN 4096, separate vocabularies), random weights: logits and greedy tokens."""
    out = write_marian_standin(tmp_path / shape, generated_text(3000, 1), generated_text(3000, 2), shape=shape,
                               spm_vocab=1000, vocab_size=58101 if shape == "opus-mt" else 32000,
                               separate_vocabs=separate, init_std=0.02)
    hf = transformers.MarianMTModel.from_pretrained(out).eval()
    tok = transformers.MarianTokenizer.from_pretrained(out)
    translator = Translator.load(out)
    texts = generated_text(8, 3)
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = hf.generate(**enc, num_beams=1, max_length=16, output_logits=True, return_dict_in_generate=True)
    pad, eos = hf.config.pad_token_id, hf.config.eos_token_id
    got = translator.translate_ids([tok(t)["input_ids"] for t in texts], DecodeConfig(beam=1, max_len_a=0, max_len_b=15))
    assert [g[0] for g in got] == [_strip(row, eos, pad) for row in want.sequences]
    with torch.no_grad():
        state = translator.model.init_decode(enc["input_ids"], max_len=16)
        for step, hf_logits in enumerate(want.logits):
            logits, state, _ = translator.model.decode_step(want.sequences[:, : step + 1], state)
            assert float((logits - hf_logits).abs().max()) < 1e-4
