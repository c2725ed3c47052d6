"""Subword tokenization (BPE or unigram) through the Hugging Face `tokenizers` library.

Sentencepiece-style: NFKC normalisation, a Metaspace pre-tokenizer ("▁" marks a word start), so
`decode(encode(text))` gives detokenised text back without language-specific rules. Special ids are
fixed: <pad>=0, <s>=1 (BOS), </s>=2 (EOS), <unk>=3. Unknown characters become <unk>; nothing raises.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def valid_unicode(text: str) -> str:
    """`text` with lone surrogates (undecodable bytes read with errors="surrogateescape") replaced by U+FFFD:
    the Rust tokenizer refuses such strings with a TypeError."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class SubwordTokenizer:
    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        # text that happens to spell a special token ("</s>") is ordinary text, never a control id
        tokenizer.encode_special_tokens = True
        for i, name in enumerate(SPECIALS):
            if tokenizer.token_to_id(name) != i:
                raise ValueError(f"tokenizer special token {name!r} must have id {i}")

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, model: str = "bpe", min_frequency: int = 2) -> "SubwordTokenizer":
        if model == "bpe":
            tok = Tokenizer(models.BPE(unk_token="<unk>"))
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS,
                                          show_progress=False)
        elif model == "unigram":
            tok = Tokenizer(models.Unigram())
            trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>",
                                              show_progress=False)
        else:
            raise ValueError(f"unknown subword model {model!r}; choose bpe or unigram")
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Strip()])
        # split punctuation off words ("Hut," -> "▁Hut" ","); the Metaspace decoder restores the spacing
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator((valid_unicode(t) for t in texts if t), trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(valid_unicode(text), add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch([valid_unicode(t) for t in texts], add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size], skip_special_tokens=True)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def tokens(self, text: str) -> list[str]:
        return self._tok.encode(valid_unicode(text), add_special_tokens=False).tokens

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(int(i)) or "<unk>"

    def to_str(self) -> str:
        return self._tok.to_str(pretty=False)

    def save(self, path: str | Path) -> None:
        from attnlab.io import atomic_write_bytes

        atomic_write_bytes(Path(path), self.to_str().encode())

    @classmethod
    def load(cls, path: str | Path) -> "SubwordTokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} not found")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # noqa: BLE001 - the library raises bare Exceptions
            raise ValueError(f"tokenizer file {path} is corrupt: {str(err).splitlines()[0][:200]}") from None


@dataclass
class TokenizerPair:
    """Source and target tokenizers; the same object when the vocabulary is joint."""

    src: SubwordTokenizer
    tgt: SubwordTokenizer
    joint: bool = True

    @classmethod
    def train(cls, pairs: Sequence[tuple[str, str]], vocab_size: int = 8000, joint: bool = True,
              model: str = "bpe") -> "TokenizerPair":
        if not pairs:
            raise ValueError("cannot train a tokenizer on an empty corpus")
        if joint:
            tok = SubwordTokenizer.train((t for pair in pairs for t in pair), vocab_size, model)
            return cls(tok, tok, True)
        return cls(SubwordTokenizer.train((s for s, _ in pairs), vocab_size, model),
                   SubwordTokenizer.train((t for _, t in pairs), vocab_size, model), False)

    def fingerprint(self) -> str:
        """sha256 of the tokenizer(s) as saved: what a prepared dataset records (data/binarized.py)."""
        import hashlib

        h = hashlib.sha256(self.src.to_str().encode())
        if not self.joint:
            h.update(b"\0" + self.tgt.to_str().encode())
        return h.hexdigest()

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.joint:
            self.src.save(directory / "tokenizer.json")
        else:
            self.src.save(directory / "src_tokenizer.json")
            self.tgt.save(directory / "tgt_tokenizer.json")

    @classmethod
    def load(cls, directory: str | Path) -> "TokenizerPair":
        directory = Path(directory)
        if (directory / "tokenizer.json").is_file():
            tok = SubwordTokenizer.load(directory / "tokenizer.json")
            return cls(tok, tok, True)
        if (directory / "src_tokenizer.json").is_file():
            return cls(SubwordTokenizer.load(directory / "src_tokenizer.json"),
                       SubwordTokenizer.load(directory / "tgt_tokenizer.json"), False)
        raise FileNotFoundError(f"no tokenizer in {directory} (expected tokenizer.json or src_/tgt_tokenizer.json)")


__all__ = ["SubwordTokenizer", "TokenizerPair", "SPECIALS", "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "json"]
