"""Multi30k: the local copy, and the download path exercised on local files (no network here)."""
import gzip

import pytest

import attnlab.data.multi30k as m30k


@pytest.mark.data
def test_local_copy_has_the_official_sizes(multi30k_dir):
    corpus = m30k.load_multi30k("de", "en", data_dir=multi30k_dir)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (29000, 1014, 1000)
    assert corpus.test[0] == ("Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
                              "A man in an orange hat starring at something.")


def _fake_remote(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    for split in ("train", "val", "test_2016_flickr"):
        for lang, line in (("de", "Hallo Welt"), ("en", "Hello world")):
            with gzip.open(remote / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write(f"{line} {split}\n")
    return remote


def test_download_when_no_local_copy(tmp_path, monkeypatch):
    remote = _fake_remote(tmp_path)
    monkeypatch.setattr(m30k, "BASE_URL", remote.as_uri())
    cache = tmp_path / "cache"
    corpus = m30k.load_multi30k("de", "en", data_dir=tmp_path / "missing", download_dir=cache)
    assert corpus.train == [("Hallo Welt train", "Hello world train")]
    assert corpus.test == [("Hallo Welt test_2016_flickr", "Hello world test_2016_flickr")]
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"{s}.{lang}.gz" for s in ("train", "val", "test_2016_flickr") for lang in ("de", "en"))
    # second call reads the cache, even with the remote gone
    monkeypatch.setattr(m30k, "BASE_URL", (tmp_path / "gone").as_uri())
    assert m30k.load_multi30k("de", "en", download_dir=cache).train == corpus.train


def test_no_copy_and_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(m30k, "BASE_URL", (tmp_path / "nowhere").as_uri())
    with pytest.raises(RuntimeError, match="not found in .* and download failed .*pass --data-dir"):
        m30k.load_multi30k("de", "en", data_dir=tmp_path, download_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir()]  # no half-written file left behind


def test_unknown_language():
    with pytest.raises(ValueError, match="no language 'xx'"):
        m30k.load_multi30k("xx", "en")
