"""`attnlab info`: the machine as attnlab sees it, and which C kernels are in use and why."""
import json
import shutil
import sys

import pytest

from attnlab.cli import main
from attnlab.layers import cpu_kernels


def test_info_reports_torch_threads_flags_and_each_kernel(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] and info["threads"] >= 1 and isinstance(info["cpu_flags"], list)
    assert set(info["kernels"]) == {"decode_step.c", "dropout_kernel.c", "packed_attention.c"}
    can_build = sys.platform == "linux" and shutil.which("cc") is not None
    for k in info["kernels"].values():
        assert k["in_use"] == can_build and (k["why"] == "in use") == can_build and k["why"]


def test_info_says_why_a_kernel_is_not_in_use(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "no-such-compiler-attnlab")
    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_reported", set())
    for k in cpu_kernels.ALL:
        monkeypatch.setattr(k, "state", {})
    with pytest.warns(RuntimeWarning, match="no C compiler") as said:
        assert main(["info"]) == 0
    assert len([w for w in said if issubclass(w.category, RuntimeWarning)]) == 1  # once, not once per kernel
    out = capsys.readouterr().out
    assert out.count("NOT in use, PyTorch's slower operations instead (no C compiler: 'no-such-compiler-attnlab'") == 3
