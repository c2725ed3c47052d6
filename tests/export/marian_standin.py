"""Stand-ins for published Hugging Face Marian (opus-mt) directories, written by transformers and
sentencepiece alone: attnlab never touches them (no internet here, so no hub download).

    write_marian_standin(out_dir, src_texts, tgt_texts, shape="tiny")

lays out what Helsinki-NLP/opus-mt-* repositories hold: source.spm / target.spm (sentencepiece unigram
models trained on the given text), vocab.json as the opus-mt conversion builds it (</s> = 0, <unk> = 1,
the pieces of both sentencepiece models, <pad> last; with separate vocabularies, as opus-mt-tc-big models,
a target_vocab.json too), tokenizer_config.json, config.json (MarianConfig with swish, scale_embedding,
pad = decoder start = the last id, plus the legacy keys the published files carry), generation_config.json
(num_beams 4, max_length 512, bad_words_ids [[pad]]), and the weights through
`MarianMTModel.save_pretrained` (model.safetensors; pytorch_model.bin with `weights="bin"`), random, with a
non-zero final_logits_bias.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

SHAPES = {
    # d_model, layers, heads, ffn
    "tiny": dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64),
    "opus-mt": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                    decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048),
    "tc-big": dict(d_model=1024, encoder_layers=6, decoder_layers=6, encoder_attention_heads=16,
                   decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096),
}
# keys of the published opus-mt config.json that MarianConfig no longer writes
LEGACY_KEYS = dict(add_bias_logits=False, add_final_layer_norm=False, normalize_before=False,
                   normalize_embedding=False, static_position_embeddings=True, classif_dropout=0.0,
                   gradient_checkpointing=False, extra_pos_embeddings=None, num_hidden_layers=None,
                   architectures=["MarianMTModel"])

SYLLABLES = ["ein", "der", "die", "das", "mann", "frau", "kind", "hund", "auf", "im", "mit", "ge", "ver", "schön",
             "grün", "straße", "läuft", "spielt", "über", "the", "a", "man", "wom", "an", "dog", "run", "ning",
             "play", "ing", "on", "in", "with", "green", "street", "is", "are", "und", "and", "ß", "é", "ñ"]


def generated_text(n: int, seed: int = 0) -> list[str]:
    """n sentences of made-up words with punctuation, accents and digits (for tiny fixtures and CI)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 14))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 999)))
        if rng.random() < 0.2:
            words[rng.randrange(len(words))] += ","
        lines.append(" ".join(words) + rng.choice([".", ".", "!", "?", ""]))
    return lines


def train_spm(texts: list[str], path: Path, vocab_size: int) -> Path:
    import sentencepiece as spm

    prefix = path.with_suffix("")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(prefix), vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=0.9995, hard_vocab_limit=False,
                                   minloglevel=2)
    Path(f"{prefix}.model").rename(path)
    Path(f"{prefix}.vocab").unlink()
    return path


def _pieces(path: Path) -> list[str]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    return [sp.IdToPiece(i) for i in range(sp.GetPieceSize())]


def marian_vocab(*spm_files: Path, size: int | None = None) -> dict[str, int]:
    """As the opus-mt conversion writes vocab.json: </s> 0, <unk> 1, the sentencepiece pieces, <pad> last;
    filled with unused pieces up to `size` entries (the opus-mt shape's 58,101) when given."""
    words = ["</s>", "<unk>"]
    seen = set(words) | {"<s>"}
    for f in spm_files:
        for piece in _pieces(f):
            if piece not in seen:
                seen.add(piece)
                words.append(piece)
    if size is not None:
        words += [f"▁unused{i}" for i in range(size - 1 - len(words))]
    words.append("<pad>")
    return {w: i for i, w in enumerate(words)}


def write_marian_standin(out_dir: str | Path, src_texts: list[str], tgt_texts: list[str], shape: str = "tiny", *,
                         spm_vocab: int = 300, vocab_size: int | None = None, separate_vocabs: bool = False,
                         activation: str = "swish", weights: str = "safetensors", eos_bias: float = 2.0,
                         init_std: float = 0.1, seed: int = 0, max_length: int = 512, num_beams: int = 4,
                         train_steps: int = 0) -> Path:
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src_spm = train_spm(src_texts, out / "source.spm", spm_vocab)
    tgt_spm = train_spm(tgt_texts, out / "target.spm", spm_vocab)
    if separate_vocabs:
        vocab, tgt_vocab = marian_vocab(src_spm, size=vocab_size), marian_vocab(tgt_spm, size=vocab_size)
        (out / "target_vocab.json").write_text(json.dumps(tgt_vocab, ensure_ascii=False, indent=2))
    else:
        vocab = tgt_vocab = marian_vocab(src_spm, tgt_spm, size=vocab_size)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "source_lang": None, "target_lang": None, "unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>",
        "model_max_length": 512, "sp_model_kwargs": {}, "separate_vocabs": separate_vocabs,
        "special_tokens_map_file": None, "tokenizer_class": "MarianTokenizer"}, indent=2))

    pad = len(vocab) - 1
    config = MarianConfig(
        vocab_size=len(vocab), decoder_vocab_size=len(tgt_vocab), **SHAPES[shape], activation_function=activation,
        scale_embedding=True, max_position_embeddings=512, pad_token_id=pad, decoder_start_token_id=pad,
        eos_token_id=0, bos_token_id=0, forced_eos_token_id=0, share_encoder_decoder_embeddings=not separate_vocabs,
        tie_word_embeddings=True, init_std=init_std, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    with torch.no_grad():  # published models have a non-zero logits bias; this one makes </s> come at times
        model.final_logits_bias.normal_(0.0, 0.5)
        model.final_logits_bias[0, 0] += eos_bias
    if train_steps:
        _train_copy(model, out, src_texts, train_steps, seed)
    with torch.no_grad():  # as in the published conversions: the start (pad) embedding is Marian's zero vector
        model.get_input_embeddings().weight[pad].zero_()
        model.get_decoder().embed_tokens.weight[pad].zero_()
    model.generation_config = GenerationConfig(
        bad_words_ids=[[pad]], bos_token_id=0, decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0,
        max_length=max_length, num_beams=num_beams, pad_token_id=pad)
    model.eval().save_pretrained(out)
    if weights == "bin":  # older opus-mt repositories hold only pytorch_model.bin
        torch.save(model.state_dict(), out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    config_file = out / "config.json"
    published = json.loads(config_file.read_text())
    legacy = dict(LEGACY_KEYS, extra_pos_embeddings=len(vocab), num_hidden_layers=SHAPES[shape]["encoder_layers"])
    published.update(legacy, bad_words_ids=[[pad]], max_length=max_length, num_beams=num_beams)
    config_file.write_text(json.dumps(published, indent=2))
    return out


def _train_copy(model, out: Path, texts: list[str], steps: int, seed: int) -> None:
    """A few hundred steps of a copy task (source text -> the same text through the target side), so that
    the stand-in ends its outputs with </s> at lengths that follow the source, as a real translator does
    (random weights repeat one token up to max_length)."""
    from transformers import MarianTokenizer

    tok = MarianTokenizer(str(out / "source.spm"), str(out / "target.spm"), str(out / "vocab.json"))
    rng = random.Random(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        batch = rng.sample(texts, 32)
        enc = tok(batch, text_target=batch, return_tensors="pt", padding=True, truncation=True, max_length=64)
        enc["labels"][enc["labels"] == tok.pad_token_id] = -100
        loss = model(**enc).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
