"""The tokenizer of a Hugging Face Marian (opus-mt) directory, through the sentencepiece library alone.

A published Marian directory holds source.spm and target.spm (sentencepiece models), vocab.json (the
model's ids: one joint vocabulary for both sides, or with `separate_vocabs` a target_vocab.json too) and
tokenizer_config.json. transformers' MarianTokenizer, which this equals token for token
(tests/data/test_marian_tokenizer.py), does:

    source: text -> split on the special tokens (</s>, <unk>, <pad> written in the text) -> a leading
            ">>xx<<" target-language code kept whole -> source.spm pieces -> vocab.json ids (a piece the
            vocabulary lacks is <unk>) -> </s> appended (by `source_ids` in attnlab.translate)
    target: ids -> pieces (special ids dropped) -> target.spm's decode_pieces -> "▁" as spaces, stripped

transformers is not needed. The target side starts decoding from the pad id (Marian's decoder start).

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

SPIECE_UNDERLINE = "▁"
TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json")


def _spm(path: Path) -> Any:
    try:
        import sentencepiece
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Marian tokenizers need sentencepiece: pip install sentencepiece") from e
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: no {path.name} (a Marian directory has source.spm and target.spm)")
    return sentencepiece.SentencePieceProcessor(model_file=str(path))


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: no {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is corrupt: {err}") from None


class MarianSide:
    """One side (source or target) of a Marian tokenizer: the interface of attnlab's SubwordTokenizer."""

    def __init__(self, spm: Any, vocab: dict[str, int], specials: dict[str, str], bos_id: int):
        self._spm = spm
        self.vocab = vocab
        self._pieces = {i: piece for piece, i in vocab.items()}
        self.eos_id = vocab[specials["eos"]]
        self.unk_id = vocab[specials["unk"]]
        self.pad_id = vocab.get(specials["pad"], len(vocab))
        self.bos_id = bos_id  # the decoder's first token: Marian's decoder_start_token_id, the pad id
        self.special_tokens = [specials[k] for k in ("eos", "unk", "pad")] + list(specials.get("extra", []))
        self.special_ids = {vocab[t] for t in self.special_tokens if t in vocab}
        # longest first, so that no special token is split by a shorter one it contains
        names = sorted(set(self.special_tokens), key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(n) for n in names) + ")")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokens(self, text: str) -> list[str]:
        """Pieces of `text` as MarianTokenizer.tokenize gives them."""
        out: list[str] = []
        for chunk in self._split.split(text):
            if not chunk:
                continue
            if chunk in self.special_tokens:
                out.append(chunk)
                continue
            if chunk.startswith(">>") and (end := chunk.find("<<")) != -1:  # a target-language code, e.g. >>fra<<
                out.append(chunk[: end + 2])
                chunk = chunk[end + 2:]
            out.extend(self._spm.encode(chunk, out_type=str))
        return out

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without </s> (attnlab.translate.source_ids appends it)."""
        return [self.vocab.get(piece, self.unk_id) for piece in self.tokens(text)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def id_to_token(self, i: int) -> str:
        return self._pieces.get(int(i)) or self._spm.IdToPiece(int(i)) or "<unk>"

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenised text of `ids`, special ids (</s>, <unk>, <pad>) left out, as
        MarianTokenizer.decode(ids, skip_special_tokens=True) with this side's sentencepiece model."""
        pieces = [self.id_to_token(i) for i in ids if int(i) not in self.special_ids]
        return self._spm.decode_pieces(pieces).replace(SPIECE_UNDERLINE, " ").strip()

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]


class MarianTokenizerPair:
    """`.src` and `.tgt` sides, as attnlab.data.TokenizerPair; read from a Marian directory."""

    def __init__(self, src: MarianSide, tgt: MarianSide, directory: Path):
        self.src, self.tgt, self.directory = src, tgt, directory

    @classmethod
    def load(cls, directory: str | Path, decoder_start_id: int | None = None) -> "MarianTokenizerPair":
        directory = Path(directory)
        config_file = directory / "tokenizer_config.json"
        config = _read_json(config_file) if config_file.is_file() else {}
        specials = {k: _token_text(config.get(f"{k}_token"), default)
                    for k, default in (("eos", "</s>"), ("unk", "<unk>"), ("pad", "<pad>"))}
        specials["extra"] = [_token_text(t, "") for t in config.get("additional_special_tokens") or []]
        vocab = _read_json(directory / "vocab.json")
        separate = bool(config.get("separate_vocabs", False))
        tgt_vocab = _read_json(directory / "target_vocab.json") if separate else vocab
        for name, v in (("vocab.json", vocab), ("target_vocab.json", tgt_vocab)):
            for key in ("eos", "unk"):
                if specials[key] not in v:
                    raise ValueError(f"{directory}/{name} has no {specials[key]!r} token")
        start = decoder_start_id if decoder_start_id is not None else tgt_vocab.get(specials["pad"], len(tgt_vocab))
        src = MarianSide(_spm(directory / "source.spm"), vocab, specials, start)
        tgt = MarianSide(_spm(directory / "target.spm"), tgt_vocab, specials, start)
        return cls(src, tgt, directory)

    def save(self, directory: str | Path) -> None:
        """Copy the tokenizer files (the export of a loaded Marian model)."""
        directory = Path(directory)
        names = TOKENIZER_FILES + (("target_vocab.json",) if self.tgt.vocab is not self.src.vocab else ())
        for name in names:
            if (self.directory / name).is_file() and (self.directory / name).resolve() != (directory / name).resolve():
                shutil.copyfile(self.directory / name, directory / name)


def _token_text(token: Any, default: str) -> str:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(token, dict):
        return str(token.get("content", default))
    return default if token is None else str(token)


def is_marian_tokenizer_dir(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / "source.spm").is_file() and (directory / "vocab.json").is_file()
