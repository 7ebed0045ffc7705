"""Row-wise order statistic, the threshold of eq. (15).

On CPU, ``numpy.partition`` (introselect, releases the GIL) over row blocks on a small thread pool
is several times faster than ``torch.kthvalue``; elsewhere ``torch.kthvalue`` runs on the device.
Both return the same value: the k-th smallest element of each row.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

_POOL: dict[int, ThreadPoolExecutor] = {}
_MIN_ROWS_PER_WORKER = 64


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _POOL:
        _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix="gradmask-select")
    return _POOL[workers]


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """``values`` ``(R, n)`` -> ``(R, 1)``: the ``k``-th smallest (1-based) of each row."""
    rows, n = values.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64):
        return values.kthvalue(k, dim=1, keepdim=True).values
    array = values.detach().numpy()
    out = np.empty((rows, 1), dtype=array.dtype)
    workers = max(1, min(torch.get_num_threads(), rows // _MIN_ROWS_PER_WORKER))
    bounds = np.linspace(0, rows, workers + 1).astype(int)

    def select(block: int) -> None:
        lo, hi = bounds[block], bounds[block + 1]
        out[lo:hi, 0] = np.partition(array[lo:hi], k - 1, axis=1)[:, k - 1]

    if workers == 1:
        select(0)
    else:
        list(_pool(workers).map(select, range(workers)))
    return torch.from_numpy(out)
