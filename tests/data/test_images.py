"""Images for captioning: the generated scenes, region masks, COCO-format / TSV loading, and bad files."""
import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.data import images as im
from attnlab.data.images import (
    COLOURS,
    load_image,
    read_captions_tsv,
    read_coco_json,
    region_mask,
    scene_tensors,
    scenes_dataset,
)


# ---- scenes --------------------------------------------------------------------------------------
def test_scenes_are_deterministic_and_seeds_differ():
    a, b = scenes_dataset(20, seed=5), scenes_dataset(20, seed=5)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b))
    assert [s.caption for s in scenes_dataset(20, seed=6)] != [s.caption for s in a]
    torch.testing.assert_close(scene_tensors(a), scene_tensors(b), rtol=0, atol=0)


def test_scene_captions_name_the_objects_where_they_are():
    swap = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for scene in scenes_dataset(200, seed=1, size=64):
        a, b = scene.objects
        assert scene.caption == f"a {a.colour} {a.shape} {scene.relation} a {b.colour} {b.shape}"
        other_way = f"a {b.colour} {b.shape} {swap[scene.relation]} a {a.colour} {a.shape}"
        assert scene.captions == [scene.caption, other_way]
        assert (a.colour, a.shape) != (b.colour, b.shape)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 < 64 and 0 <= y0 < y1 < 64
            centre = scene.pixels[(y0 + y1) // 2, (x0 + x1) // 2]
            assert tuple(centre) == COLOURS[obj.colour], (scene.caption, obj)
        first, second = (a, b) if scene.relation in ("left of", "above") else (b, a)
        if scene.relation in ("left of", "right of"):
            assert first.box[2] < second.box[0]  # the whole of one object lies left of the other
        else:
            assert first.box[3] < second.box[1]
    assert {s.relation for s in scenes_dataset(200, seed=1)} == set(swap)


def test_scene_tensors_are_normalised_like_load_image(tmp_path):
    scene = scenes_dataset(1, seed=2, size=32)[0]
    Image.fromarray(scene.pixels).save(tmp_path / "s.png")
    torch.testing.assert_close(load_image(tmp_path / "s.png", 32), scene_tensors([scene])[0], rtol=0, atol=1e-6)
    assert scene_tensors([scene]).shape == (1, 3, 32, 32)


def test_region_mask_is_the_covered_fraction_of_each_cell():
    mask = region_mask((0, 0, 31, 31), 64, (8, 8)).view(8, 8)  # the top-left quadrant
    assert mask[:4, :4].eq(1).all() and mask.sum() == 16
    corner = region_mask((0, 0, 3, 3), 64, (8, 8))  # 4 x 4 of the first 8 x 8 cell
    assert corner[0] == pytest.approx(0.25) and corner[1:].eq(0).all()
    straddle = region_mask((4, 8, 11, 15), 64, (8, 8)).view(8, 8)  # half of cells (1, 0) and (1, 1)
    assert straddle[1, 0] == pytest.approx(0.5) and straddle[1, 1] == pytest.approx(0.5) and straddle.sum() == 1
    wide = region_mask((0, 0, 63, 63), 64, (2, 4))  # a non-square grid, row-major
    assert wide.shape == (8,) and wide.eq(1).all()


# ---- COCO-format JSON and TSV ------------------------------------------------------------------
def _tiny_coco(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.png"):
        Image.new("RGB", (20, 10), (10, 200, 30)).save(tmp_path / "img" / name)
    data = {"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.png"}, {"id": 11, "file_name": "c"}],
            "annotations": [{"image_id": 7, "caption": "A dog  runs.\n"}, {"image_id": 9, "caption": "two cats"},
                            {"image_id": 7, "caption": "a dog"}, {"image_id": 99, "caption": "no such image"},
                            {"image_id": 9, "caption": "   "}]}
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_json_groups_captions_by_image(tmp_path):
    items = read_coco_json(_tiny_coco(tmp_path), tmp_path / "img")
    assert [(i.image_path.name, i.captions) for i in items] == [("a.jpg", ["A dog runs.", "a dog"]),
                                                                ("b.png", ["two cats"])]
    assert load_image(items[0].image_path, 16).shape == (3, 16, 16)


def test_tsv_groups_captions_by_image_and_split(tmp_path):
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("split\tfile_name\tcaption\ntrain\ta.jpg\tone\ntrain\ta.jpg\ttwo\nval\tb.jpg\tthree\n")
    items = read_captions_tsv(tsv)
    assert [(i.image_path, i.split, i.captions) for i in items] == [
        (tmp_path / "train" / "a.jpg", "train", ["one", "two"]), (tmp_path / "val" / "b.jpg", "val", ["three"])]


@pytest.mark.parametrize("text, message", [
    ("not json", "not a COCO-format captions file"),
    ('{"images": []}', "missing or wrong 'annotations'"),
    ('{"images": [{"file_name": "a.jpg"}], "annotations": []}', "missing or wrong 'id'"),
    ('[1, 2]', "not a COCO-format captions file"),
])
def test_bad_coco_json_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_coco_json(path, tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_or_missing_captions_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="captions file .*nope.json not found"):
        read_coco_json(tmp_path / "nope.json", tmp_path)
    with pytest.raises(ValueError, match="captions file .*nope.tsv not found"):
        read_captions_tsv(tmp_path / "nope.tsv")
    (tmp_path / "cols.tsv").write_text("image\ttext\na.jpg\thello\n")
    with pytest.raises(ValueError, match="no caption, file_name column"):
        read_captions_tsv(tmp_path / "cols.tsv")
    (tmp_path / "short.tsv").write_text("file_name\tcaption\na.jpg\n")
    with pytest.raises(ValueError, match="line 2: expected tab-separated"):
        read_captions_tsv(tmp_path / "short.tsv")
    (tmp_path / "latin1.tsv").write_bytes("file_name\tcaption\na.jpg\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_captions_tsv(tmp_path / "latin1.tsv")


@pytest.mark.data
def test_coco_mini_tsv_and_json_agree(coco_mini):
    items = read_captions_tsv(coco_mini / "captions.tsv")
    assert len(items) == 239 and all(len(i.captions) == 5 for i in items)
    assert {i.split for i in items} == {"train2017", "val2017"}
    assert all(i.image_path.is_file() for i in items)
    train = read_coco_json(coco_mini / "annotations" / "captions_train2017.json", coco_mini / "train2017")
    assert len(train) == 80 and sum(len(i.captions) for i in train) == 400
    by_path = {i.image_path: sorted(i.captions) for i in items}
    assert all(by_path[i.image_path] == sorted(i.captions) for i in train)  # the TSV is the JSON, flattened
    first = load_image(train[0].image_path, 64)
    assert first.shape == (3, 64, 64) and first.dtype == torch.float32 and torch.isfinite(first).all()


# ---- bad and unusual image files ---------------------------------------------------------------
def _error(path, size=32) -> str:
    with pytest.raises(ValueError) as info:
        load_image(path, size)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    return message


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (a decompression bomb's header, with a valid CRC)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_missing_empty_directory_and_non_image_files(tmp_path):
    assert "not found" in _error(tmp_path / "missing.png")
    (tmp_path / "dir.png").mkdir()
    assert "is not a file" in _error(tmp_path / "dir.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "is empty" in _error(tmp_path / "empty.jpg")
    (tmp_path / "notes.png").write_text("hello, I am text")
    assert "not an image" in _error(tmp_path / "notes.png")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, fmt):
    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    path = tmp_path / f"half.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert "corrupt or truncated" in _error(path)


@pytest.mark.parametrize("width, height, message", [
    (100_000, 100_000, "too large to decode safely"),  # past PIL's error limit (179 Mpx)
    (10_000, 10_000, "too large to decode safely"),  # past PIL's warning limit (89 Mpx)
    (9_000, 9_000, "is 9000x9000 pixels; the limit is 64000000 pixels"),  # past ours
])
def test_decompression_bombs_are_refused_from_the_header(tmp_path, width, height, message):
    """The file is 70 bytes; decoding what its header claims would take gigabytes. Refused at once."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(width, height))
    assert message in _error(path)


def _rgb_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("1", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"),
                                       ("F", "TIFF"), ("LA", "PNG"), ("RGB", "GIF"), ("RGB", "WEBP"), ("RGB", "BMP")])
def test_other_modes_and_formats_become_rgb(tmp_path, mode, fmt):
    image = _rgb_image()
    if mode == "I;16":
        image = Image.fromarray((np.asarray(image.convert("L"), dtype=np.uint16) * 257))
    elif mode != "RGB":
        image = image.convert(mode)
    path = tmp_path / f"x.{fmt.lower()}"
    image.save(path, fmt)
    x = load_image(path, 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    pixels = im.denormalise(x)
    if mode in ("L", "1", "I;16", "F", "LA"):  # grayscale: the three channels are equal
        torch.testing.assert_close(pixels[0], pixels[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(pixels[1], pixels[2], atol=1e-5, rtol=0)


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 16))  # opaque blue left half
    rgba.save(tmp_path / "t.png")
    pixels = im.denormalise(load_image(tmp_path / "t.png", 16))
    torch.testing.assert_close(pixels[:, :, 12], torch.ones(3, 16), atol=2e-2, rtol=0)  # white, not red
    torch.testing.assert_close(pixels[:, :, 2], torch.tensor([0.0, 0.0, 1.0])[:, None].expand(3, 16), atol=2e-2,
                               rtol=0)
    palette = rgba.convert("P")  # a palette image with a transparent index
    palette.info["transparency"] = palette.getpixel((12, 0))
    palette.save(tmp_path / "p.png", transparency=palette.getpixel((12, 0)))
    pixels = im.denormalise(load_image(tmp_path / "p.png", 16))
    assert pixels[:, :, 12].min() > 0.95


def test_tiny_huge_and_thin_images_load(tmp_path):
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "one.png")
    red = im.denormalise(load_image(tmp_path / "one.png", 8))
    torch.testing.assert_close(red, torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 8, 8), atol=1e-5, rtol=0)
    Image.new("RGB", (1, 2000), (0, 0, 255)).save(tmp_path / "thin.png")
    assert load_image(tmp_path / "thin.png", 8).shape == (3, 8, 8)
    Image.new("RGB", (5000, 5000), (0, 255, 0)).save(tmp_path / "huge.jpg", quality=70)  # 25 Mpx: decoded reduced
    green = im.denormalise(load_image(tmp_path / "huge.jpg", 32))
    assert green[1].min() > 0.9 and green[0].max() < 0.1
