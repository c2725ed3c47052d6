"""Export tests use tiny models: one intra-op thread is fastest and leaves the other core alone
(the same setting as the top-level tests/conftest.py on main)."""
from __future__ import annotations

import os

import torch

torch.set_num_threads(int(os.environ.get("ATTNLAB_TEST_THREADS", "1")))
