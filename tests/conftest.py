"""Shared test settings. Real data is found through ONE setting: the ATTNLAB_DATA_DIR environment
variable, defaulting to ../shared/data beside the repository. Missing data skips, or fails under
ATTNLAB_REQUIRE_EXTRAS=1 (CI): see required.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from required import needs_c_compiler, require  # noqa: F401 - the fixture is registered here for every test

# One intra-op thread: tests use tiny tensors, and several pytest processes sharing two cores with
# OpenMP spin-waiting threads slow each other down many times over.
torch.set_num_threads(int(os.environ.get("ATTNLAB_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("ATTNLAB_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = data_dir()
    if not path.is_dir():
        require("the shared data", f"shared data not found at {path}; set ATTNLAB_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def multi30k_dir(shared_data_dir: Path) -> Path:
    path = shared_data_dir / "multi30k"
    if not (path / "raw" / "train.de.gz").is_file():
        require("the shared data", f"Multi30k not found at {path}; set ATTNLAB_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def coco_mini(shared_data_dir: Path) -> Path:
    path = shared_data_dir / "coco_mini"
    if not (path / "captions.tsv").is_file():
        require("the shared data", f"coco_mini not found at {path}; set ATTNLAB_DATA_DIR")
    return path
