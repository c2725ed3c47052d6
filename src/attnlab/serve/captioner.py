"""What the service needs from an image captioner, and checking uploads before they reach it.

A captioner is any object with

    caption(image_bytes: bytes, beam: int) -> {"caption": str, "words": [str, ...],
                                              "attention": [[float, ...], ...], "grid": [h, w]}

where `attention[i]` is the weight of each of the h*w image regions (row-major) when word i was
produced. Captioning models (Show, Attend and Tell and its kin) speak the same decoding protocol as
the translators, so their wrapper is small; it is looked up as `attnlab.caption.Captioner.load(run,
device)` when the run's architecture is a captioning family (see `load_captioner`).

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import importlib
import io
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Captioner(Protocol):
    def caption(self, image_bytes: bytes, beam: int) -> dict[str, Any]: ...


class BadImage(ValueError):
    """The upload is not an image we can read (400), or too many pixels (413 when `too_large`)."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def check_image(data: bytes, max_pixels: int) -> tuple[int, int, str]:
    """Check that `data` is a readable image of at most `max_pixels`; returns (width, height, format).

    Reads only the header and verifies the file structure, so a decompression bomb is refused
    before it is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadImage("the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height, fmt = img.width, img.height, img.format or "unknown"
                if width * height > max_pixels:
                    raise BadImage(f"the image has {width}x{height} pixels; the limit is {max_pixels} pixels",
                                   too_large=True)
                img.verify()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(f"the image is too large to decode safely: {err}", too_large=True) from None
    except UnidentifiedImageError:
        raise BadImage("the uploaded file is not an image (expected PNG, JPEG, GIF, WebP, BMP, ...)") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise BadImage(f"the uploaded image is corrupt or truncated: {err}") from None
    return width, height, fmt


def load_captioner(path: str | Path, device: str = "cpu") -> Captioner:
    """The captioner for a captioning run directory (provided by `attnlab.caption`)."""
    try:
        module = importlib.import_module("attnlab.caption")
    except ModuleNotFoundError as err:
        if err.name != "attnlab.caption":
            raise
        raise ValueError(f"{path} is a captioning model, but this attnlab has no captioning support "
                         "(attnlab.caption is missing)") from None
    return module.Captioner.load(path, device)
