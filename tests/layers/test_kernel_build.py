"""Building the C kernels: a fresh nested cache directory, a rebuild into an existing one, the compiler's own
error in the warning, and the check for a second OpenMP runtime."""
import os
from pathlib import Path

import pytest
import torch

from attnlab.layers import cpu_kernels, decode_kernel
from required import needs_kernel as needs_cc


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path / "a" / "b"))  # parents that do not exist yet
    monkeypatch.setattr(decode_kernel.KERNELS, "state", {})
    monkeypatch.setattr(cpu_kernels, "_reported", set())
    return tmp_path / "a" / "b" / "kernels"


@needs_cc
def test_builds_into_a_new_nested_directory_and_again_into_the_existing_one(fresh, monkeypatch):
    assert decode_kernel.kernel() is not None
    built = list(fresh.glob("decode_step-*.so"))
    assert len(built) == 1
    built[0].unlink()  # the directory stays: building again must accept it
    monkeypatch.setattr(decode_kernel.KERNELS, "state", {})
    assert decode_kernel.kernel() is not None and built[0].is_file()


def test_a_failed_build_names_the_compilers_first_error_line(fresh, monkeypatch, tmp_path):
    compiler = tmp_path / "broken-cc"
    compiler.write_text("#!/bin/sh\necho 'broken-cc: error: no such flag' >&2\necho 'second line' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    with pytest.warns(RuntimeWarning, match=r"the decoding kernel did not build: .*: broken-cc: error: no such flag\)") \
            as record:
        assert decode_kernel.kernel() is None
    assert record[0].filename.endswith("decode_kernel.py")  # the warning points at the layer that wanted the kernel
    status = decode_kernel.KERNELS.status()
    assert status[0] is False and status[1].endswith(": broken-cc: error: no such flag")
    assert not list(fresh.glob("*.so"))  # nothing half-built is left to be loaded later


def test_openmp_runtimes_are_read_from_the_process_maps():
    maps = Path("/proc/self/maps").read_text().splitlines()
    expected = {line.split()[-1] for line in maps if "libgomp" in os.path.basename(line.split()[-1])}
    assert cpu_kernels._gomp_runtimes() == expected
    bundled = list((Path(torch.__file__).parent / "lib").glob("libgomp*"))
    if bundled:  # PyTorch's own OpenMP runtime is loaded with it
        assert {os.path.realpath(p) for p in expected} & {os.path.realpath(p) for p in bundled}


@needs_cc
def test_a_second_openmp_runtime_turns_the_kernel_off(fresh, monkeypatch):
    seen = iter([{"/torch/libgomp.so.1"}, {"/torch/libgomp.so.1", "/usr/lib/libgomp.so.1"}])
    monkeypatch.setattr(cpu_kernels, "_gomp_runtimes", lambda: next(seen))
    with pytest.warns(RuntimeWarning, match="a second OpenMP runtime"):
        assert decode_kernel.kernel() is None


@needs_cc
def test_kernels_refuse_non_contiguous_inputs(fresh):
    assert decode_kernel.kernel() is not None
    qkv = torch.randn(2, 3 * 8)
    k_cache = torch.zeros(2, 4, 2, 4)
    v_cache = torch.zeros(2, 2, 4, 4).transpose(1, 2)  # the right shape, not contiguous
    with pytest.raises(ValueError, match="cache_attention"):
        decode_kernel.cache_attention(qkv, k_cache, v_cache, 0, 2)
    norm = torch.nn.LayerNorm(4)
    x, y = torch.randn(3, 4), torch.randn(4, 3).t()
    with pytest.raises(ValueError, match="add_layer_norm"):
        decode_kernel.add_layer_norm(x, y, norm)
