"""Multi30k task 1 (Elliott et al. 2016): train 29,000, val 1,014, test_2016_flickr 1,000 sentences.

Reads a local copy (`data_dir` holding raw/{split}.{lang}.gz or {split}.{lang}.gz, e.g. the
`multi30k/` folder of a shared data directory), otherwise downloads the official raw files.
The data is for non-commercial research and education use: it is never bundled with attnlab.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

from pathlib import Path

from attnlab.data.corpora import ParallelCorpus, read_parallel
from attnlab.data.download import fetch_url

BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
LANGS = ("de", "en", "fr", "cs")
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}


def _candidates(data_dir: Path) -> list[Path]:
    return [data_dir / "raw", data_dir, data_dir / "multi30k" / "raw", data_dir / "multi30k"]


def _find(data_dir: Path | None, split: str, lang: str) -> Path | None:
    if data_dir is None:
        return None
    for d in _candidates(Path(data_dir)):
        for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
            if (d / name).is_file():
                return d / name
    return None


def download(split: str, lang: str, download_dir: Path, timeout: float = 30.0) -> Path:
    """Fetch one official file atomically (temp file, then rename)."""
    return fetch_url(f"{BASE_URL}/{split}.{lang}.gz", download_dir / f"{split}.{lang}.gz", timeout)


def multi30k_paths(src_lang: str = "de", tgt_lang: str = "en", data_dir: str | Path | None = None,
                   download_dir: str | Path | None = None) -> dict[str, tuple[Path, Path]]:
    """{"train" | "valid" | "test": (source file, target file)}: the local copy, else downloaded."""
    for lang in (src_lang, tgt_lang):
        if lang not in LANGS:
            raise ValueError(f"Multi30k has no language {lang!r}; choose from {', '.join(LANGS)}")
    if src_lang == tgt_lang:
        raise ValueError(f"source and target language are both {src_lang!r}")
    download_dir = Path(download_dir or Path.home() / ".cache" / "attnlab" / "multi30k")
    splits = {}
    for key, split in SPLITS.items():
        paths = []
        for lang in (src_lang, tgt_lang):
            path = _find(Path(data_dir) if data_dir else None, split, lang) or _find(download_dir, split, lang)
            if path is None:
                try:
                    path = download(split, lang, download_dir)
                except Exception as err:  # noqa: BLE001 - any network failure gets the same advice
                    where = f"{data_dir} or {download_dir}" if data_dir else str(download_dir)
                    raise RuntimeError(f"Multi30k file {split}.{lang}.gz not found in {where} and download failed "
                                       f"({type(err).__name__}: {err}); pass --data-dir") from None
            paths.append(path)
        splits[key] = (paths[0], paths[1])
    return splits


def load_multi30k(src_lang: str = "de", tgt_lang: str = "en", data_dir: str | Path | None = None,
                  download_dir: str | Path | None = None) -> ParallelCorpus:
    paths = multi30k_paths(src_lang, tgt_lang, data_dir, download_dir)
    splits = {key: read_parallel(*pair) for key, pair in paths.items()}
    return ParallelCorpus("multi30k", src_lang, tgt_lang, splits["train"], splits["valid"], splits["test"])
