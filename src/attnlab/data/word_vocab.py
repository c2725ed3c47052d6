"""A word-level vocabulary for captions (the `tokenizers` library's WordLevel model).

Captions are normalised (NFKC, lower case, punctuation dropped) and split on white space; words seen
fewer than `min_frequency` times map to <unk>. Saved as one tokenizer JSON file (RUN/vocab.json).

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

from attnlab.data.tokenizer import valid_unicode

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


class WordVocab:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        ids = [tokenizer.token_to_id(t) for t in SPECIALS]
        if any(i is None for i in ids):
            raise ValueError(f"not an attnlab caption vocabulary: it lacks the special tokens {SPECIALS}")
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = ids  # type: ignore[assignment]
        self._special = set(ids)

    @classmethod
    def build(cls, captions: Iterable[str], min_frequency: int = 1, max_size: int = 10_000) -> "WordVocab":
        tokenizer = Tokenizer(WordLevel(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.Sequence([
            normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s']"), " "),
        ])
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = WordLevelTrainer(vocab_size=max_size, min_frequency=min_frequency, special_tokens=SPECIALS,
                                   show_progress=False)
        tokenizer.train_from_iterator(list(captions), trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(valid_unicode(text)).ids

    def words(self, text: str) -> list[str]:
        return self.tokenizer.encode(valid_unicode(text)).tokens

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.id_to_token(i) for i in ids if i not in self._special or i == self.unk_id)

    def id_to_token(self, i: int) -> str:
        token = self.tokenizer.id_to_token(int(i))
        if token is None:
            raise ValueError(f"token id {i} is outside the vocabulary of {self.vocab_size}")
        return token

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        self.tokenizer.save(str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "WordVocab":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"caption vocabulary {path} not found")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for bad JSON
            raise ValueError(f"{path} is not a readable vocabulary: {err}") from None
