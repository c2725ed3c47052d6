"""Shared test settings. Real data is found through ONE setting: the ATTNLAB_DATA_DIR environment
variable, defaulting to ../shared/data beside the repository."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
        pytest.skip(f"shared data not found at {path}; set ATTNLAB_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def multi30k_dir(shared_data_dir: Path) -> Path:
    path = shared_data_dir / "multi30k"
    if not (path / "raw" / "train.de.gz").is_file():
        pytest.skip(f"Multi30k not found at {path}; set ATTNLAB_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def coco_mini(shared_data_dir: Path) -> Path:
    path = shared_data_dir / "coco_mini"
    if not (path / "captions.tsv").is_file():
        pytest.skip(f"coco_mini not found at {path}; set ATTNLAB_DATA_DIR")
    return path
