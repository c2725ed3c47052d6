"""Generated translation tasks: no download, deterministic with a seed, disjoint splits.

- `dates`:   the same date written in two languages from CLDR data (babel), e.g.
             "Saturday, March 14, 2026" -> "Samstag, 14. März 2026" (word mapping and reordering)
- `numbers`: the same number in words in two languages (num2words), e.g.
             "three hundred and twelve" -> "dreihundertzwölf"; long numbers give long inputs
- `copy`, `reverse`: sequences of symbols, copied or reversed (for tests)

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import datetime as dt
import random
from typing import Callable

from attnlab.data.corpora import Pair, ParallelCorpus

DATE_FORMATS = ("full", "long", "medium")
SYMBOLS = "ba be bi bo bu da de di do du ka ke ki ko ku ma me mi mo mu na ne ni no nu".split()


def _date_pair(rng: random.Random, src_lang: str, tgt_lang: str) -> tuple[object, Pair]:
    from babel.dates import format_date

    day = dt.date(1900, 1, 1) + dt.timedelta(days=rng.randrange(200 * 365))
    fmt = rng.choice(DATE_FORMATS)
    return (day, fmt), (format_date(day, format=fmt, locale=src_lang), format_date(day, format=fmt, locale=tgt_lang))


def _number_pair(rng: random.Random, src_lang: str, tgt_lang: str, max_value: int = 999_999) -> tuple[object, Pair]:
    from num2words import num2words

    # log-uniform magnitudes: as many 3-digit as 6-digit numbers
    digits = rng.randint(1, len(str(max_value)))
    n = rng.randint(10 ** (digits - 1) if digits > 1 else 0, min(10**digits - 1, max_value))
    return n, (num2words(n, lang=src_lang), num2words(n, lang=tgt_lang))


def _symbols(rng: random.Random, min_len: int, max_len: int, vocab: int) -> list[str]:
    return [rng.choice(SYMBOLS[:vocab]) for _ in range(rng.randint(min_len, max_len))]


def _copy_pair(rng: random.Random, min_len: int = 3, max_len: int = 12, vocab: int = 20) -> tuple[object, Pair]:
    s = " ".join(_symbols(rng, min_len, max_len, vocab))
    return s, (s, s)


def _reverse_pair(rng: random.Random, min_len: int = 3, max_len: int = 12, vocab: int = 20) -> tuple[object, Pair]:
    words = _symbols(rng, min_len, max_len, vocab)
    s = " ".join(words)
    return s, (s, " ".join(reversed(words)))


def _unique(make: Callable[[random.Random], tuple[object, Pair]], n: int, rng: random.Random,
            seen: set) -> list[Pair]:
    out: list[Pair] = []
    tries = 0
    while len(out) < n:
        key, pair = make(rng)
        tries += 1
        if key in seen:
            if tries > 50 * (n + 10):
                raise ValueError(f"cannot draw {n} distinct examples: the task's space is too small")
            continue
        seen.add(key)
        out.append(pair)
    return out


def check_language(task: str, lang: str) -> None:
    """A language the task's data source knows (a CLDR locale for dates, a num2words language for numbers)."""
    if task == "dates":
        from babel import Locale, UnknownLocaleError

        try:
            Locale.parse(lang)
            return
        except (UnknownLocaleError, ValueError, TypeError):
            hint = "a CLDR locale such as en, de, fr, en_GB"
    else:
        from num2words import CONVERTER_CLASSES

        if lang in CONVERTER_CLASSES:
            return
        hint = f"a num2words language such as en, de, fr ({len(CONVERTER_CLASSES)} in num2words.CONVERTER_CLASSES)"
    raise ValueError(f"the {task} task has no language {lang!r}; use {hint}")


def make_generated_corpus(name: str, n_train: int = 20000, n_valid: int = 500, n_test: int = 500, seed: int = 0,
                          src_lang: str = "en", tgt_lang: str = "de", **kw) -> ParallelCorpus:
    """A corpus of a generated task; no sentence of valid/test appears in train."""
    if name in ("dates", "numbers"):
        check_language(name, src_lang)
        check_language(name, tgt_lang)
    if kw.get("max_value", 1) < 1:
        raise ValueError(f"max_value must be >= 1, got {kw['max_value']}")
    if name == "dates":
        make = lambda r: _date_pair(r, src_lang, tgt_lang)  # noqa: E731
    elif name == "numbers":
        make = lambda r: _number_pair(r, src_lang, tgt_lang, **kw)  # noqa: E731
    elif name == "copy":
        src_lang = tgt_lang = "sym"
        make = lambda r: _copy_pair(r, **kw)  # noqa: E731
    elif name == "reverse":
        src_lang = tgt_lang = "sym"
        make = lambda r: _reverse_pair(r, **kw)  # noqa: E731
    else:
        raise ValueError(f"unknown generated task {name!r}; choose from dates, numbers, copy, reverse")
    rng = random.Random(seed)
    seen: set = set()
    test = _unique(make, n_test, rng, seen)
    valid = _unique(make, n_valid, rng, seen)
    train = _unique(make, n_train, rng, seen)
    return ParallelCorpus(name, src_lang, tgt_lang, train, valid, test)


def dates_task(n: int, src_lang: str = "en", tgt_lang: str = "de", seed: int = 0) -> list[Pair]:
    return make_generated_corpus("dates", n, 0, 0, seed, src_lang, tgt_lang).train


def numbers_task(n: int, src_lang: str = "en", tgt_lang: str = "de", seed: int = 0, max_value: int = 999_999) -> list[Pair]:
    return make_generated_corpus("numbers", n, 0, 0, seed, src_lang, tgt_lang, max_value=max_value).train
