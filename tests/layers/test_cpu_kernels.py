"""The C kernels' bindings: argument types read from the C declarations themselves (one source), and the
status `attnlab info` reports."""
import ctypes
import re
from pathlib import Path

import pytest

from attnlab.layers import cpu_kernels, decode_kernel, dropout, packed_attention

LAYERS = Path(cpu_kernels.__file__).parent


def test_declarations_become_ctypes_signatures():
    source = """
static inline void helper(float *x, int64_t n) { }
/* a comment */
void attnlab_example(const float *q, int64_t n,
                     uint64_t seed, uint32_t threshold, float scale, int flag, double d,
                     const int64_t *lengths, uint16_t *bits) {
  helper(q, n);
}
int64_t attnlab_count(int64_t n) { return n; }
"""
    sigs = cpu_kernels.c_signatures(source)
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    assert sigs == {
        "attnlab_example": ([p, i64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float, ctypes.c_int, ctypes.c_double,
                             p, p], None),
        "attnlab_count": ([i64], i64),
    }


def test_a_parameter_without_a_ctypes_type_is_refused():
    with pytest.raises(ValueError, match="attnlab_bad: parameter 'size_t n' has no ctypes equivalent"):
        cpu_kernels.c_signatures("void attnlab_bad(float *x, size_t n) {\n}\n")


@pytest.mark.parametrize("module, source, n_functions", [
    (decode_kernel, "decode_step.c", 3), (dropout, "dropout_kernel.c", 2), (packed_attention, "packed_attention.c", 2)])
def test_every_exported_function_of_each_source_is_bound_with_all_its_parameters(module, source, n_functions):
    text = (LAYERS / source).read_text()
    exported = re.findall(r"^void (attnlab_\w+)\(([^)]*)\)", text, re.M)
    assert len(exported) == n_functions
    sigs = module.KERNELS.signatures
    assert sorted(sigs) == sorted(name for name, _ in exported)
    for name, params in exported:
        assert len(sigs[name][0]) == params.count(",") + 1
        pointers = [i for i, prm in enumerate(params.split(",")) if "*" in prm]
        assert [i for i, t in enumerate(sigs[name][0]) if t is ctypes.c_void_p] == pointers


def test_every_kernel_is_listed_for_attnlab_info():
    assert {k.source.name for k in cpu_kernels.ALL} >= {"decode_step.c", "dropout_kernel.c", "packed_attention.c"}
