"""Export tests use tiny models: one intra-op thread is fastest and leaves the other core alone
(the same setting as the top-level tests/conftest.py on main)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("ATTNLAB_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def standin(tmp_path_factory) -> Path:
    """A tiny opus-mt-like directory written by transformers + sentencepiece (marian_standin.py), trained a
    little on a copy task so that outputs end with </s> at varied lengths."""
    pytest.importorskip("sentencepiece")
    pytest.importorskip("transformers")
    from marian_standin import generated_text, write_marian_standin

    out = tmp_path_factory.mktemp("opus-mt-xx-yy")
    return write_marian_standin(out, generated_text(2000, 1), generated_text(2000, 2), train_steps=150)
