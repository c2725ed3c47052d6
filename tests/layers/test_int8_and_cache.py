"""The int8 linear layer's quantisation (symmetric, 127 steps a row) and the KV cache's bookkeeping (empty at
length 0, never saved, dtype follows the keys, growth only when full and then doubling)."""
import torch

from attnlab.layers.int8 import Int8Linear
from attnlab.layers.kv_cache import KVCache


def _linear():
    torch.manual_seed(0)
    return torch.nn.Linear(16, 6)


def test_int8_rows_use_127_steps_of_their_largest_weight():
    fp = _linear()
    q = Int8Linear(fp)
    w = q.dequantized_weight()
    torch.testing.assert_close(w.abs().amax(dim=1), fp.weight.detach().abs().amax(dim=1))
    steps = (w / (fp.weight.detach().abs().amax(dim=1, keepdim=True) / 127)).round()
    assert steps.abs().max() == 127 and torch.allclose(w, fp.weight.detach(), atol=fp.weight.abs().max().item() / 127)


def test_int8_forward_takes_float64_and_applies_relu_only_when_asked():
    fp = _linear()
    q = Int8Linear(fp)
    x = torch.randn(5, 16)
    y = q(x)
    assert (y < 0).any()  # no ReLU by default
    torch.testing.assert_close(q(x.double()), y)
    torch.testing.assert_close(q(x, relu=True), y.relu())
    torch.testing.assert_close(y, fp(x).detach(), atol=0.05, rtol=0.05)


def test_a_new_cache_is_empty_and_not_part_of_any_state_dict():
    cache = KVCache(2, 1, 4, 3)
    assert cache.length == 0 and cache.capacity == 4
    assert cache.state_dict() == {}


def test_cache_keys_take_the_dtype_they_are_given():
    cache = KVCache(1, 1, 4, 2)
    k = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    keys, values = cache.update(0, k, k)
    assert keys.dtype == torch.float64 and torch.equal(keys, k)


def test_cache_grows_only_past_its_capacity_and_then_doubles():
    cache = KVCache(1, 1, 4, 2)
    cache.update(0, torch.ones(1, 1, 4, 2), torch.ones(1, 1, 4, 2))
    assert cache.capacity == 4  # exactly full: no copy
    keys, _ = cache.update(4, torch.full((1, 1, 1, 2), 2.0), torch.full((1, 1, 1, 2), 2.0))
    assert cache.capacity == 8 and keys.shape == (1, 1, 5, 2)
    assert torch.equal(keys[0, 0, :, 0], torch.tensor([1.0, 1, 1, 1, 2]))
    cache.update(5, torch.zeros(1, 1, 12, 2), torch.zeros(1, 1, 12, 2))
    assert cache.capacity == 17  # more than double is needed: exactly what is needed


def test_int8_linear_of_one_input_feature():
    fp = torch.nn.Linear(1, 3)
    x = torch.tensor([[2.0]])
    torch.testing.assert_close(Int8Linear(fp)(x), fp(x).detach(), atol=0.05, rtol=0.05)
