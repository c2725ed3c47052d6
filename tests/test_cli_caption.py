"""`attnlab train --task scenes|captions`, `attnlab caption` and `attnlab evaluate` on captioners, end to
end through the command line's entry point, and their one-line errors."""
import json

import numpy as np
import pytest
from PIL import Image

from attnlab.cli import main
from attnlab.data.images import scenes_dataset

TINY = ["--preset", "test", "--n-train", "200", "--no-progress", "--set", "eval_every=10",
        "--set", "eval_bleu_sentences=20", "--set", "max_tokens=600"]


@pytest.fixture(scope="module", params=["sat", "caption-transformer"])
def run_dir(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / request.param
    assert main(["train", "--task", "scenes", "--arch", request.param, "--out", str(out), "--max-steps", "20"]
                + TINY) == 0
    return out


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A scene as PNG; the same scene as grayscale JPEG, large; an RGBA PNG of another one."""
    folder = tmp_path_factory.mktemp("pictures")
    a, b = scenes_dataset(2, seed=42, size=64)
    Image.fromarray(a.pixels).save(folder / "img1.png")
    Image.fromarray(a.pixels).convert("L").resize((900, 700)).save(folder / "img2.jpg")
    rgba = np.concatenate([b.pixels, np.full((64, 64, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / "img3.png")
    return [folder / "img1.png", folder / "img2.jpg", folder / "img3.png"]


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_train_writes_a_captioning_run(run_dir):
    for name in ("config.json", "model.safetensors", "vocab.json", "log.jsonl", "checkpoints/LATEST"):
        assert (run_dir / name).is_file(), name
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["arch"] == run_dir.name and meta["task"]["task"] == "scenes" and meta["tokenizer"]["kind"] == "word"
    valid = [e for e in _log(run_dir) if e["event"] == "valid"]
    assert [e["step"] for e in valid] == [10, 20]
    assert all(0 <= e[f"bleu{n}"] <= 100 for e in valid for n in range(1, 5))
    assert valid[-1]["valid_loss"] < valid[0]["valid_loss"]  # it learns
    end = _log(run_dir)[-1]
    assert end["event"] == "end" and end["steps"] == 20


def test_caption_prints_a_caption_and_writes_a_picture_per_image(run_dir, pictures, tmp_path, capsys):
    from attnlab.data.word_vocab import WordVocab

    out = tmp_path / "attn"
    assert main(["caption", "--model", str(run_dir)] + [str(p) for p in pictures]
                + ["--beam", "3", "--attention-out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 3
    words = set(WordVocab.load(run_dir / "vocab.json").tokenizer.get_vocab())
    for line, picture in zip(lines, pictures):
        path, caption, png = line.split("\t")
        assert path == str(picture) and set(caption.split()) <= words
        assert png == str(out / f"{picture.stem}.attention.png")
        with Image.open(png) as drawn:
            assert drawn.format == "PNG" and drawn.width >= 200
    assert sorted(p.name for p in out.iterdir()) == ["img1.attention.png", "img2.attention.png", "img3.attention.png"]


def test_caption_greedy_and_beam_one_agree(run_dir, pictures, capsys):
    assert main(["caption", "--model", str(run_dir), str(pictures[0])]) == 0
    greedy = capsys.readouterr().out
    assert main(["caption", "--model", str(run_dir), str(pictures[0]), "--beam", "1"]) == 0
    assert capsys.readouterr().out == greedy and greedy.count("\t") == 1


def test_evaluate_reports_bleu_1_to_4(run_dir, capsys):
    assert main(["evaluate", "--model", str(run_dir), "--split", "test", "--limit", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 20 and result["references"] == 40  # both ways of saying each scene
    assert all(0 <= result[f"bleu{n}"] <= 100 for n in range(1, 5))
    assert result["bleu1"] >= result["bleu2"] >= result["bleu3"] >= result["bleu4"]
    assert main(["evaluate", "--model", str(run_dir), "--split", "valid", "--limit", "5", "--beam", "2"]) == 0
    assert capsys.readouterr().out.startswith("BLEU-1 ")


@pytest.fixture(scope="module")
def translator_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "copy"
    assert main(["train", "--task", "copy", "--out", str(out), "--n-train", "200", "--max-steps", "2", "--preset",
                 "tiny", "--no-progress", "--set", "eval_bleu_sentences=0"]) == 0
    return out


@pytest.mark.parametrize("argv, message", [
    (["caption", "--model", "{translator}", "{img}"], "not an image captioner"),
    (["caption", "--model", "{run}", "{tmp}/notes.png"], "notes.png is not an image PIL can read"),
    (["caption", "--model", "{run}", "{img}", "{tmp}/missing.jpg"], "image file {tmp}/missing.jpg not found"),
    (["caption", "--model", "{run}", "{img}", "--beam", "0"], "--beam must be >= 1"),
    (["caption", "--model", "{tmp}/nowhere", "{img}"], "model directory {tmp}/nowhere not found"),
    (["translate", "--model", "{run}", "--text", "a red circle"], "holds an image captioner"),
    (["evaluate", "--model", "{run}", "--src", "a.txt", "--ref", "b.txt"], "this model is an image captioner"),
    (["evaluate", "--model", "{run}", "--captions", "{tmp}/none.tsv"], "captions file {tmp}/none.tsv not found"),
    (["train", "--task", "scenes", "--arch", "rnn", "--out", "{tmp}/x"],
     "--arch rnn does not fit --task scenes; use --arch sat or caption-transformer"),
    (["train", "--task", "dates", "--arch", "sat", "--out", "{tmp}/w"], "--arch sat does not fit --task dates"),
    (["train", "--task", "captions", "--out", "{tmp}/y", "--max-steps", "1"], "--task captions needs --data-dir"),
    (["train", "--task", "captions", "--out", "{tmp}/z", "--captions-tsv", "{tmp}/none.tsv"], "not found"),
])
def test_errors_are_one_line(run_dir, translator_dir, pictures, tmp_path, capsys, argv, message):
    (tmp_path / "notes.png").write_text("not a picture")
    fill = {"run": run_dir, "translator": translator_dir, "img": pictures[0], "tmp": tmp_path}
    argv = [a.format(**fill) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(**fill) in err and len(err.splitlines()) == 1, err


@pytest.mark.data
def test_train_on_coco_mini_then_score_against_five_references(coco_mini, tmp_path, capsys):
    out = tmp_path / "coco"
    assert main(["train", "--task", "captions", "--data-dir", str(coco_mini), "--arch", "caption-transformer",
                 "--out", str(out), "--preset", "test", "--max-steps", "3", "--no-progress", "--set", "eval_every=3",
                 "--set", "eval_bleu_sentences=5", "--set", "max_tokens=400"]) == 0
    assert [e["step"] for e in _log(out) if e["event"] == "valid"] == [3]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--split", "test", "--limit", "6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 6 and result["references"] == 30  # every COCO image has five captions
    json_file = coco_mini / "annotations" / "captions_train2017.json"
    assert main(["evaluate", "--model", str(out), "--captions", str(json_file), "--image-dir",
                 str(coco_mini / "train2017"), "--limit", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["references"] == 20
    photo = next((coco_mini / "val2017").glob("*.jpg"))
    assert main(["caption", "--model", str(out), str(photo), "--attention-out", str(tmp_path / "attn")]) == 0
    assert (tmp_path / "attn" / f"{photo.stem}.attention.png").is_file()
