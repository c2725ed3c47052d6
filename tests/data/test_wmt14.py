"""WMT14 en-de from local archives laid out as published on statmt.org (no network): the training corpora
are read from their .tgz files, newstest2013 from dev.tgz, newstest2014 from test-full.tgz's SGML as
sacreBLEU extracts it, and `attnlab prepare --task wmt14` binarizes the lot."""
import io
import json
import tarfile

import pytest

from attnlab.cli import main
from attnlab.data import download, wmt14

SGM = """<srcset setid="newstest2014" srclang="any">
<doc sysid="ref" docid="1012-bbc" genre="news" origlang="en">
<p>
<seg id="1">Gutach:  Increased safety for pedestrians</seg>
<seg id="2"> They are not even 100 metres apart </seg>
</p>
</doc>
</srcset>
"""
SGM_DE = SGM.replace("Gutach:  Increased safety for pedestrians", "Gutach: Noch mehr Sicherheit für Fußgänger") \
    .replace(" They are not even 100 metres apart ", "Sie stehen keine 100 Meter voneinander entfernt")


def add(tar, name, text):
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def lines(tag, n):
    return "".join(f"{tag} sentence number {i} .\n" for i in range(n))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    def no_network(url, *a, **k):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(download, "fetch_url", no_network)
    monkeypatch.setattr(wmt14, "fetch_url", no_network)
    sizes = {"training/europarl-v7.de-en": 30, "commoncrawl.de-en": 20, "training/news-commentary-v9.de-en": 10}
    for (url, prefix), n in zip(wmt14.TRAIN, sizes.values()):
        with tarfile.open(tmp_path / url.rsplit("/", 1)[1], "w:gz") as tar:
            add(tar, "training/europarl-v7.fr-en.en", "noise\n")  # other pairs in the same archive
            add(tar, f"{prefix}.en", lines(f"{prefix} en", n))
            add(tar, f"{prefix}.de", lines(f"{prefix} de", n))
    with tarfile.open(tmp_path / "dev.tgz", "w:gz") as tar:
        add(tar, "dev/newstest2013.en", lines("dev en", 7))
        add(tar, "dev/newstest2013.de", lines("dev de", 7))
        add(tar, "dev/newstest2013-src.en.sgm", SGM)
    with tarfile.open(tmp_path / "test-full.tgz", "w:gz") as tar:
        for lang, text in (("en", SGM), ("de", SGM_DE)):
            add(tar, f"test-full/newstest2014-deen-src.{lang}.sgm", text)
            add(tar, f"test-full/newstest2014-deen-ref.{lang}.sgm", text)
    return tmp_path


def test_the_published_urls_and_members():
    assert [u for u, _ in wmt14.TRAIN] == ["https://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
                                          "https://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
                                          "https://statmt.org/wmt14/training-parallel-nc-v9.tgz"]
    assert wmt14.TEST_URL == "https://statmt.org/wmt14/test-full.tgz"
    assert wmt14.test_members("en", "de") == ("test-full/newstest2014-deen-src.en.sgm",
                                              "test-full/newstest2014-deen-ref.de.sgm")


def test_sources_from_local_archives(cache):
    found = wmt14.wmt14_sources("en", "de", cache=cache, download=False)
    train = list(found["train"])
    assert len(train) == 60  # europarl, commoncrawl, news-commentary, in that order
    assert train[0] == ("training/europarl-v7.de-en en sentence number 0 .", "training/europarl-v7.de-en de sentence number 0 .")
    assert train[-1][1] == "training/news-commentary-v9.de-en de sentence number 9 ."
    assert list(found["valid"])[6] == ("dev en sentence number 6 .", "dev de sentence number 6 .")
    # sacreBLEU's extraction: the segment's text, stripped, inner whitespace collapsed
    assert list(found["test"]) == [("Gutach: Increased safety for pedestrians", "Gutach: Noch mehr Sicherheit für Fußgänger"),
                                   ("They are not even 100 metres apart", "Sie stehen keine 100 Meter voneinander entfernt")]
    de_en = wmt14.wmt14_sources("de", "en", cache=cache, download=False)
    assert list(de_en["test"])[0] == ("Gutach: Noch mehr Sicherheit für Fußgänger", "Gutach: Increased safety for pedestrians")


def test_missing_or_broken_archives_are_one_line_errors(cache, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="training-parallel-europarl-v7.tgz not found; download https://statmt"):
        wmt14.wmt14_sources(cache=empty, download=False)
    with pytest.raises(RuntimeError, match="cannot download .*europarl.* put the file in"):
        wmt14.wmt14_sources(cache=empty, download=True)
    (cache / "dev.tgz").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="cannot read .*dev.tgz"):
        wmt14.wmt14_sources(cache=cache, download=False)
    with pytest.raises(ValueError, match="must be en and de"):
        wmt14.wmt14_sources("en", "fr", cache=cache)


def test_prepare_wmt14_from_local_archives(cache, tmp_path, capsys):
    out = tmp_path / "bin"
    assert main(["prepare", "--task", "wmt14", "--data-dir", str(cache), "--out", str(out), "--vocab-size", "80",
                 "--workers", "1", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["read"] == 60 and manifest["splits"]["valid"]["pairs"] == 7
    assert manifest["splits"]["test"]["pairs"] == 2 and manifest["request"]["config"]["max_ratio"] == 1.5
    assert (out / "test.tgt.txt").read_text().splitlines()[0] == "Gutach: Noch mehr Sicherheit für Fußgänger"
