"""kth_smallest equals torch.kthvalue exactly, on every path."""
import pytest
import torch

from gradmask.selection import kth_smallest


@pytest.mark.parametrize("rows,n", [(1, 7), (3, 64), (300, 100), (1000, 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_kthvalue(rows, n, dtype):
    torch.manual_seed(rows)
    values = torch.randn(rows, n, dtype=dtype)
    values[:, ::3] = values[:, :1]  # ties
    for k in (1, n // 2 + 1, n):
        assert torch.equal(kth_smallest(values, k), values.kthvalue(k, dim=1, keepdim=True).values)


def test_bf16_falls_back_to_kthvalue():
    values = torch.randn(5, 9).bfloat16()
    assert torch.equal(kth_smallest(values, 4), values.kthvalue(4, dim=1, keepdim=True).values)


def test_bad_k():
    with pytest.raises(ValueError, match=r"k must be in \[1, 9\]"):
        kth_smallest(torch.randn(2, 9), 10)
