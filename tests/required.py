"""What a test needs from its environment, in one place: skip where a component is missing, except where
CI installs it. With ATTNLAB_REQUIRE_EXTRAS=1 (set by .ci/run) a missing component (the chromium browser, a C
compiler for the kernels, the shared data, an installed extra) FAILS the test, so CI cannot pass by skipping.

Imported by name (tests/ is on sys.path through tests/conftest.py, as export_helpers and serve_support are).
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
from types import ModuleType
from typing import NoReturn

import pytest


def extras_required() -> bool:
    return os.environ.get("ATTNLAB_REQUIRE_EXTRAS", "").strip() not in ("", "0")


def require(component: str, reason: str) -> NoReturn:
    """The test cannot run without `component`: skip with `reason`, or fail under ATTNLAB_REQUIRE_EXTRAS=1."""
    if extras_required():
        pytest.fail(f"{component} is missing, and ATTNLAB_REQUIRE_EXTRAS=1 (CI) requires it: {reason}", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, reason: str | None = None) -> ModuleType:
    """pytest.importorskip, failing instead under ATTNLAB_REQUIRE_EXTRAS=1 (the test extra installs it)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        require(f"the Python module {name}", reason or f"could not import {name}: {err}")


def c_compiler() -> str | None:
    """The C compiler the kernels are built with ($CC or cc), on Linux; None elsewhere."""
    if sys.platform != "linux":
        return None
    return shutil.which(os.environ.get("CC", "cc"))


@pytest.fixture
def needs_c_compiler() -> None:
    if c_compiler() is None:
        require("a C compiler", "attnlab's C kernels need Linux and a C compiler (cc); elsewhere PyTorch's kernels are used")


# for a test, a class or a module (pytestmark = needs_kernel): the fixture above runs first
needs_kernel = pytest.mark.usefixtures("needs_c_compiler")
