"""Images for captioning: reading files safely, captioned-image datasets, and the generated scenes task.

- `load_image(path, size)`: any file PIL reads (PNG, JPEG, GIF, WebP, BMP, ...), grayscale, palette or
  RGBA (composited onto white), any size: resized to (3, size, size), normalised with the ImageNet
  mean/std (so a pretrained backbone sees what it was trained on). A file that is missing, empty, not
  an image, corrupt, or a decompression bomb is a one-line ValueError naming the file.
- `read_captions_tsv` (the flat TSV of ../shared/data/coco_mini) and `read_coco_json` (COCO-format
  captions JSON + image folder): one `CaptionedImage` per image with all its captions.
- `scenes_dataset`: pictures of two coloured shapes, captioned "a red circle left of a blue square";
  each scene records where its objects are, so tests can check where the model looks.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import csv
import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics (torchvision's pretrained backbones)
STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 64_000_000  # larger files are refused before decoding (decompression bombs)


def to_rgb(image):  # PIL.Image -> RGB PIL.Image
    """Grayscale, palette, CMYK, 16-bit: converted; transparency is composited onto white."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    if image.mode == "I;16" or image.mode == "I":  # 16/32-bit grayscale: scale into 8 bits
        arr = np.asarray(image, dtype=np.float64)
        hi = arr.max() or 1.0
        return Image.fromarray((arr / hi * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def normalise(pixels: Tensor) -> Tensor:
    """(3, H, W) floats in [0, 1] -> normalised with the ImageNet mean/std."""
    mean = torch.tensor(MEAN, dtype=pixels.dtype).view(3, 1, 1)
    std = torch.tensor(STD, dtype=pixels.dtype).view(3, 1, 1)
    return (pixels - mean) / std


def denormalise(image: Tensor) -> Tensor:
    """Inverse of `normalise`, clamped to [0, 1] (for pictures)."""
    mean = torch.tensor(MEAN, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(STD, dtype=image.dtype).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)


def pil_to_tensor(image, size: int) -> Tensor:
    """An RGB PIL image of any size -> (3, size, size) float32, normalised."""
    from PIL import Image

    if image.width < 1 or image.height < 1:
        raise ValueError(f"the image has no pixels ({image.width}x{image.height})")
    image = image.resize((size, size), Image.BICUBIC, reducing_gap=3.0)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return normalise(pixels)


def load_image(path: str | Path, size: int) -> Tensor:
    """Read an image file -> (3, size, size) float32, normalised. Errors are one line naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ValueError(f"image file {path} not found")
    if not path.is_file():
        raise ValueError(f"image file {path} is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"image file {path} is empty")
    try:
        file = open(path, "rb")
    except OSError as err:
        raise ValueError(f"image file {path} cannot be read: {err.strerror}") from None
    try:
        with file, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:  # reads the header only
                width, height = image.size
                if width * height <= MAX_PIXELS:
                    image.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale, much faster
                    return pil_to_tensor(to_rgb(image), size)
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image PIL can read (expected PNG, JPEG, GIF, WebP, BMP, ...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"image file {path} is too large to decode safely: {err}") from None
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ... for corrupt files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"image file {path} is corrupt or truncated: {reason}") from None
    raise ValueError(f"image file {path} is {width}x{height} pixels; the limit is {MAX_PIXELS} pixels "
                     "(a larger picture could exhaust memory)")


# ---- captioned image collections ----------------------------------------------------------------
@dataclass
class CaptionedImage:
    image_path: Path
    captions: list[str] = field(default_factory=list)
    split: str = ""


def read_captions_tsv(path: str | Path, image_root: str | Path | None = None) -> list[CaptionedImage]:
    """The coco_mini TSV: columns split, file_name, ..., caption; images at ROOT/split/file_name
    (ROOT defaults to the TSV's folder). A `file_name` column alone (no `split`) is ROOT/file_name."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"captions file {path} not found")
    root = Path(image_root) if image_root else path.parent
    by_image: dict[Path, CaptionedImage] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            missing = {"file_name", "caption"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path} is not a captions TSV: it has no {', '.join(sorted(missing))} column "
                                 f"(columns: {reader.fieldnames})")
            for row in reader:
                if not row["file_name"] or row["caption"] is None:
                    raise ValueError(f"{path}, line {reader.line_num}: expected tab-separated columns "
                                     f"{reader.fieldnames}")
                split = row.get("split") or ""
                image = root / split / row["file_name"] if split else root / row["file_name"]
                item = by_image.setdefault(image, CaptionedImage(image, [], split))
                if row["caption"].strip():
                    item.captions.append(row["caption"].strip())
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    return [item for item in by_image.values() if item.captions]


def read_coco_json(path: str | Path, image_dir: str | Path) -> list[CaptionedImage]:
    """A COCO-format captions file ({"images": [{id, file_name}], "annotations": [{image_id, caption}]})."""
    path, image_dir = Path(path), Path(image_dir)
    if not path.is_file():
        raise ValueError(f"COCO captions file {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {img["id"]: img["file_name"] for img in data["images"]}
        annotations = [(ann["image_id"], ann["caption"]) for ann in data["annotations"]]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a COCO-format captions file: {err}") from None
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a COCO-format captions file ({{'images': [{{'id', 'file_name'}}], "
                         f"'annotations': [{{'image_id', 'caption'}}]}}): missing or wrong {err}") from None
    by_id: dict[int, CaptionedImage] = {}
    for image_id, caption in annotations:
        if image_id in files and str(caption).strip():
            item = by_id.setdefault(image_id, CaptionedImage(image_dir / files[image_id]))
            item.captions.append(" ".join(str(caption).split()))  # COCO captions carry stray spaces / newlines
    return list(by_id.values())


# ---- the generated scenes task ------------------------------------------------------------------
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclass
class SceneObject:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the rendered image

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    objects: list[SceneObject]
    relation: str  # of objects[0] to objects[1]
    pixels: np.ndarray  # (size, size, 3) uint8

    @property
    def caption(self) -> str:
        a, b = self.objects
        return f"a {a.name} {self.relation} a {b.name}"

    @property
    def captions(self) -> list[str]:
        """Both ways of saying it ("a red circle left of a blue square", "a blue square right of a red
        circle"): the references for BLEU."""
        a, b = self.objects
        return [self.caption, f"a {b.name} {RELATIONS[self.relation]} a {a.name}"]


def _draw(draw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def make_scene(rng: random.Random, size: int = 64) -> Scene:
    """Two different objects, side by side or one above the other, in separate halves of the picture."""
    from PIL import Image, ImageDraw

    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    (c1, s1), (c2, s2) = rng.sample(kinds, 2)
    horizontal = rng.random() < 0.5
    half = size // 2
    obj = rng.randint(size * 5 // 16, size * 7 // 16)  # object side: about a third of the picture

    def place(first_half: bool) -> tuple[int, int, int, int]:
        lo_a, hi_a = (0, half - obj) if first_half else (half, size - obj)  # along the arrangement
        a = rng.randint(lo_a, max(lo_a, hi_a))
        b = rng.randint(0, size - obj)  # across it
        x, y = (a, b) if horizontal else (b, a)
        return (x, y, x + obj - 1, y + obj - 1)

    first_in_first_half = rng.random() < 0.5
    box1, box2 = place(first_in_first_half), place(not first_in_first_half)
    if horizontal:
        relation = "left of" if first_in_first_half else "right of"
    else:
        relation = "above" if first_in_first_half else "below"
    image = Image.new("RGB", (size, size), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    _draw(draw, s1, box1, COLOURS[c1])
    _draw(draw, s2, box2, COLOURS[c2])
    return Scene([SceneObject(c1, s1, box1), SceneObject(c2, s2, box2)], relation, np.asarray(image))


def scenes_dataset(n: int, seed: int = 0, size: int = 64) -> list[Scene]:
    rng = random.Random(seed)
    return [make_scene(rng, size) for _ in range(n)]


def scene_tensors(scenes: Sequence[Scene]) -> Tensor:
    """(N, 3, size, size) float32, normalised like `load_image`."""
    pixels = torch.from_numpy(np.stack([s.pixels for s in scenes])).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def region_mask(box: tuple[int, int, int, int], size: int, grid: tuple[int, int]) -> Tensor:
    """The fraction of each grid cell (row-major, grid h x w) covered by a pixel box: (h * w,)."""
    h, w = grid
    covered = torch.zeros(size, size)
    x0, y0, x1, y1 = box
    covered[y0:y1 + 1, x0:x1 + 1] = 1.0
    cells = torch.nn.functional.adaptive_avg_pool2d(covered[None, None], (h, w))[0, 0]
    return cells.reshape(-1)
