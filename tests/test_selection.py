"""kth_smallest equals torch.kthvalue exactly, on every path (partition, sorted halves, threads)."""
import numpy as np
import pytest
import torch

from gradmask.selection import kth_smallest


def _reference(values, k):
    return values.kthvalue(k, dim=1, keepdim=True).values


# up to 512 are sorted, 513..1024 take the sorted-halves path (odd and even lengths), longer ones numpy.partition;
# 300 and 1000 rows spread over the thread pool when torch has 2 threads
@pytest.mark.parametrize("rows,n", [(1, 7), (3, 64), (300, 100), (1000, 17), (5, 512), (7, 513), (130, 1024),
                                    (9, 777), (4, 1025), (2, 2048)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_kthvalue(rows, n, dtype):
    torch.manual_seed(rows + n)
    values = torch.randn(rows, n, dtype=dtype)
    values[:, ::3] = values[:, :1]  # ties
    for k in sorted({1, 2, n // 2, n // 2 + 1, n - 1, n} - {0}):
        assert torch.equal(kth_smallest(values, k), _reference(values, k)), k


@pytest.mark.parametrize("n", [64, 1024])
def test_nonnegative_promise_gives_the_same_values(n):
    torch.manual_seed(n)
    values = torch.randn(40, n).abs()
    values[:, :5] = 0.0
    values[3] = 0.0                        # a row of zeros
    for k in (1, n // 2 + 1, n):
        assert torch.equal(kth_smallest(values, k, nonnegative=True), _reference(values, k))


@pytest.mark.parametrize("n", [64, 1024])
def test_infinities_signed_zeros_and_extremes_keep_float_order(n):
    torch.manual_seed(0)
    values = torch.randn(8, n) * torch.logspace(-30, 30, n)
    values[:, 0], values[:, 1], values[:, 2], values[:, 3] = float("inf"), float("-inf"), -0.0, 0.0
    values[:, 4] = torch.finfo(torch.float32).max
    values[:, 5] = -torch.finfo(torch.float32).tiny
    for k in (1, 2, 3, 4, n // 2, n - 1, n):
        got, want = kth_smallest(values, k), _reference(values, k)
        assert torch.equal(got, want), k      # -0.0 == 0.0 counts as equal


def test_two_threads_match_one(monkeypatch):
    torch.manual_seed(1)
    values = torch.randn(1000, 1024)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = kth_smallest(values, 512)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(two, kth_smallest(values, 512))
    assert torch.equal(two, _reference(values, 512))


def test_does_not_modify_its_input():
    values = torch.randn(20, 700)
    before = values.clone()
    kth_smallest(values, 350)
    assert torch.equal(values, before)


def test_bf16_falls_back_to_kthvalue():
    values = torch.randn(5, 9).bfloat16()
    assert torch.equal(kth_smallest(values, 4), _reference(values, 4))


def test_bad_k():
    with pytest.raises(ValueError, match=r"k must be in \[1, 9\]"):
        kth_smallest(torch.randn(2, 9), 10)


def test_order_keys_keep_float_order_and_invert():
    from gradmask.selection import _keys_to_floats, _order_keys
    for dtype in (np.float32, np.float64):
        x = np.array([-np.inf, -2.5, -1e-30, -0.0, 0.0, 1e-30, 3.0, np.inf], dtype=dtype)
        keys = _order_keys(x, nonnegative=False)
        assert np.all(np.diff(keys) > 0)            # float order (with -0.0 just below +0.0)
        back = _keys_to_floats(keys, x.dtype, nonnegative=False)
        assert np.array_equal(back.view(keys.dtype), x.view(keys.dtype))   # bit for bit
