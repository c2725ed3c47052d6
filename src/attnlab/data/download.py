"""Fetching a file over HTTP(S) atomically: a temporary file beside the target, renamed when complete.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path


def fetch_url(url: str, target: Path, timeout: float = 30.0) -> Path:
    """Download `url` to `target` unless it is already there; a killed download leaves no partial file."""
    target = Path(target)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
