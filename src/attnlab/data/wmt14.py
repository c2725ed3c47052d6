"""WMT14 English-German as in the paper: the standard training data (Europarl v7, Common Crawl, News
Commentary v9: about 4.5M pairs), newstest2013 for validation and newstest2014 for test.

The archives are the ones published by the workshop (statmt.org), the same files fairseq's
`prepare-wmt14en2de.sh` and sacreBLEU's `wmt14/full` read. They are downloaded into a cache folder (or
found there: put the .tgz files in it by hand on a machine without internet), and only the members needed
are extracted. newstest2014 comes as SGML: the segments are taken out as sacreBLEU does (`<seg id=..>text</seg>`,
whitespace collapsed), so BLEU computed on them is sacreBLEU's `wmt14/full` test set.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import os
import re
import tarfile
import tempfile
from pathlib import Path

from attnlab.data.download import fetch_url
from attnlab.data.streams import ChainedSource, PairSource

LANGS = ("en", "de")
# (archive URL, member prefix: "<prefix>.<lang>" for each language)
TRAIN = [
    ("https://statmt.org/wmt13/training-parallel-europarl-v7.tgz", "training/europarl-v7.de-en"),
    ("https://statmt.org/wmt13/training-parallel-commoncrawl.tgz", "commoncrawl.de-en"),
    ("https://statmt.org/wmt14/training-parallel-nc-v9.tgz", "training/news-commentary-v9.de-en"),
]
VALID = ("https://statmt.org/wmt14/dev.tgz", "dev/newstest2013")  # plain text, one sentence a line
TEST_URL = "https://statmt.org/wmt14/test-full.tgz"  # sacreBLEU's wmt14/full


def test_members(src_lang: str, tgt_lang: str) -> tuple[str, str]:
    """newstest2014's source and reference SGML members for a direction (sacreBLEU's wmt14/full langpairs)."""
    return (f"test-full/newstest2014-deen-src.{src_lang}.sgm", f"test-full/newstest2014-deen-ref.{tgt_lang}.sgm")


def default_cache() -> Path:
    return Path(os.environ.get("ATTNLAB_WMT14_DIR", Path.home() / ".cache" / "attnlab" / "wmt14"))


def _archive(url: str, cache: Path, download: bool) -> Path:
    path = cache / url.rsplit("/", 1)[1]
    if path.is_file():
        return path
    if not download:
        raise FileNotFoundError(f"{path} not found; download {url} into {cache} (or let attnlab download it)")
    try:
        return fetch_url(url, path, timeout=60.0)
    except Exception as err:  # noqa: BLE001 - any network failure gets the same advice
        raise RuntimeError(f"cannot download {url} ({type(err).__name__}: {err}); put the file in {cache} "
                           "by hand and pass --data-dir") from None


def _extract(archive: Path, members: list[str], dest: Path) -> list[Path]:
    """The named members of a .tgz under dest (extracted once, each atomically); one pass over the archive."""
    wanted = {m: dest / m for m in members}
    missing = {m for m, p in wanted.items() if not p.is_file()}
    if missing:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for info in tar:
                    name = info.name[2:] if info.name.startswith("./") else info.name
                    if name not in missing or not info.isfile():
                        continue
                    target = wanted[name]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
                    with os.fdopen(fd, "wb") as out, tar.extractfile(info) as f:  # type: ignore[union-attr]
                        while block := f.read(1 << 22):
                            out.write(block)
                    os.replace(tmp, target)
                    missing.discard(name)
                    if not missing:
                        break
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ValueError(f"cannot read {archive}: {err} (a partial download? delete it and retry)") from None
    if missing:
        raise ValueError(f"{archive} has no {', '.join(sorted(missing))}: not the published archive")
    return [wanted[m] for m in members]


_SEG = re.compile(r"<seg[^>]*>(.*)</seg>")


def sgm_to_text(sgm: Path, out: Path) -> Path:
    """The segments of an SGML test file, one a line, as sacreBLEU extracts them (written once, atomically)."""
    if out.is_file():
        return out
    lines = []
    with open(sgm, encoding="utf-8") as f:
        for line in f:
            match = _SEG.search(line.strip())
            if match:
                lines.append(re.sub(r"\s+", " ", match.group(1).strip()))
    from attnlab.io import atomic_write_bytes

    atomic_write_bytes(out, "".join(s + "\n" for s in lines).encode())
    return out


def wmt14_sources(src_lang: str = "en", tgt_lang: str = "de", cache: str | Path | None = None,
                  download: bool = True) -> dict[str, ChainedSource | PairSource]:
    """{"train", "valid", "test"} sources of the WMT14 en-de task (either direction), downloading and
    extracting what is not in `cache` yet."""
    if {src_lang, tgt_lang} != set(LANGS):
        raise ValueError(f"wmt14 is English-German: --src-lang/--tgt-lang must be en and de, got {src_lang}, {tgt_lang}")
    cache = Path(cache) if cache else default_cache()
    extracted = cache / "extracted"
    parts = []
    for url, prefix in TRAIN:
        src, tgt = _extract(_archive(url, cache, download), [f"{prefix}.{src_lang}", f"{prefix}.{tgt_lang}"], extracted)
        parts.append(PairSource(str(src), str(tgt)))
    url, prefix = VALID
    valid = _extract(_archive(url, cache, download), [f"{prefix}.{src_lang}", f"{prefix}.{tgt_lang}"], extracted)
    sgm = _extract(_archive(TEST_URL, cache, download), list(test_members(src_lang, tgt_lang)), extracted)
    test = [sgm_to_text(p, p.with_suffix(".txt")) for p in sgm]
    return {"train": ChainedSource(parts), "valid": PairSource(str(valid[0]), str(valid[1])),
            "test": PairSource(str(test[0]), str(test[1]))}
