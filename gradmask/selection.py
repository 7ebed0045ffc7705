"""Row-wise order statistic, the threshold of eq. (15).

On CPU the rows go to numpy over row blocks on a small thread pool (numpy releases the GIL):

- floats are first viewed as integers whose order is the float order (for a non-negative float
  the bit pattern already is; negative ones get their magnitude bits flipped), because numpy's
  selection and sorting are faster on int32 than on float32 for short rows;
- rows of up to 512 values (maps up to 16x16 and 22x22) are sorted: numpy's vectorized sort of
  such rows is as fast as ``numpy.partition`` and also yields each row's largest value;
- rows of 513-1024 values (a 32x32 map) are split in two halves that are each sorted (numpy's
  sort of rows up to 512 is much faster than selection in rows over 512), then the k-th smallest
  of the two sorted halves is a min over splits of a max, vectorized over rows, chunk by chunk
  in reused buffers (faster than ``numpy.partition``; the measurements are in docs/DESIGN.md);
- longer rows use ``numpy.partition`` (introselect).

Elsewhere (and for any tensor with ``device_generic=True``: how tests run the CUDA path on CPU)
``torch.kthvalue`` runs on the device. Every path returns the same value: the k-th
smallest element of each row (``-0.0`` may come back for ``+0.0`` and vice versa: equal floats).
:func:`kth_smallest_and_max` also returns each row's largest element: on CPU the last of a sorted
row or of the two sorted halves (free), or ``torch.amax`` over the integer keys beside the
partition.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

_POOL: dict[int, ThreadPoolExecutor] = {}
_MIN_ROWS_PER_WORKER = 64
_SORTED_HALVES = (513, 1024)   # row lengths selected through two sorted halves
_CHUNK_BYTES = 1 << 19         # rows per chunk of the sorted-halves path (measured best 512 KiB-2 MiB)
_KEY_TYPES = {np.dtype(np.float32): (np.int32, np.int32(0x7FFFFFFF)),
              np.dtype(np.float64): (np.int64, np.int64(0x7FFFFFFFFFFFFFFF))}


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _POOL:
        _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix="gradmask-select")
    return _POOL[workers]


def _flip_negatives(keys: np.ndarray, magnitude) -> np.ndarray:
    return np.where(keys < 0, keys ^ magnitude, keys)


def _order_keys(array: np.ndarray, nonnegative: bool) -> np.ndarray:
    """Integers ordered like the floats of ``array`` (-0.0 just below +0.0)."""
    int_type, magnitude = _KEY_TYPES[array.dtype]
    keys = array.view(int_type)
    return keys if nonnegative else _flip_negatives(keys, magnitude)


def _keys_to_floats(keys: np.ndarray, dtype: np.dtype, nonnegative: bool) -> np.ndarray:
    """The inverse of :func:`_order_keys`."""
    _, magnitude = _KEY_TYPES[dtype]
    return (keys if nonnegative else _flip_negatives(keys, magnitude)).view(dtype)


def _kth_of_sorted_halves(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(R, n)`` -> ``(R,)`` k-th smallest (1-based) and ``(R,)`` largest, via two sorted halves.

    With ``a_i``, ``b_j`` the i-th / j-th smallest of the two halves (``a_0 = b_0 = -inf``), the
    k-th smallest of the row is ``min over i + j = k of max(a_i, b_j)``: one elementwise maximum
    and one minimum over ``k + 1`` splits, vectorized over rows. Rows go through in chunks of
    about ``_CHUNK_BYTES``, sorted in place in buffers reused across chunks (faster than sorting
    whole fresh arrays: measured best at 512 KiB-2 MiB chunks).
    """
    rows, n = keys.shape
    la, lb = n // 2, n - n // 2
    chunk = max(1, min(rows, _CHUNK_BYTES // (n * keys.itemsize)))
    a = np.empty((chunk, la + 1), dtype=keys.dtype)
    b = np.empty((chunk, lb + 1), dtype=keys.dtype)
    a[:, 0] = b[:, 0] = np.iinfo(keys.dtype).min
    first, last = max(0, k - lb), min(k, la)  # the splits i with 0 <= i <= la and 0 <= k - i <= lb
    out = np.empty(rows, dtype=keys.dtype)
    largest = np.empty(rows, dtype=keys.dtype)
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        ca, cb = a[: stop - start], b[: stop - start]
        ca[:, 1:] = keys[start:stop, :la]
        cb[:, 1:] = keys[start:stop, la:]
        ca[:, 1:].sort(axis=1)
        cb[:, 1:].sort(axis=1)
        b_reversed = cb[:, ::-1]  # b_reversed[:, lb - j] = b_j: j = k - i runs down as i runs up
        np.maximum(ca[:, first:last + 1], b_reversed[:, lb - k + first:lb - k + last + 1]).min(
            axis=1, out=out[start:stop])
        np.maximum(ca[:, la], cb[:, lb], out=largest[start:stop])
    return out, largest


def _kth_keys(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(R, n)`` keys -> ``(R,)`` k-th smallest and ``(R,)`` largest."""
    n = keys.shape[1]
    if n < _SORTED_HALVES[0]:
        ordered = np.sort(keys, axis=1)
        return ordered[:, k - 1], ordered[:, -1]
    if n <= _SORTED_HALVES[1]:
        return _kth_of_sorted_halves(keys, k)
    largest = torch.from_numpy(keys).amax(dim=1).numpy()  # faster than numpy's max over rows
    return np.partition(keys, k - 1, axis=1)[:, k - 1], largest


def kth_smallest_and_max(values: torch.Tensor, k: int, nonnegative: bool = False,
                         device_generic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` ``(R, n)`` -> ``(kth (R, 1), largest (R, 1))``: the ``k``-th smallest (1-based)
    and the largest element of each row. NaN has no place in this order: rows must hold none.

    ``nonnegative=True`` promises that no value is negative (scores such as norms and ``|x|``),
    which skips one pass on CPU; the result is wrong if the promise is broken.
    ``device_generic=True`` takes the path of non-CPU devices (``torch.kthvalue``) on any device.
    """
    rows, n = values.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if device_generic or values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64):
        return values.kthvalue(k, dim=1, keepdim=True).values, values.amax(dim=1, keepdim=True)
    array = values.detach().contiguous().numpy()
    int_type, _ = _KEY_TYPES[array.dtype]
    out = np.empty((2, rows, 1), dtype=int_type)
    workers = max(1, min(torch.get_num_threads(), rows // _MIN_ROWS_PER_WORKER))
    bounds = np.linspace(0, rows, workers + 1).astype(int)

    def select(block: int) -> None:
        lo, hi = bounds[block], bounds[block + 1]
        out[0, lo:hi, 0], out[1, lo:hi, 0] = _kth_keys(_order_keys(array[lo:hi], nonnegative), k)

    if workers == 1:
        select(0)
    else:
        list(_pool(workers).map(select, range(workers)))
    kth, largest = torch.from_numpy(_keys_to_floats(out, array.dtype, nonnegative))
    return kth, largest


def kth_smallest(values: torch.Tensor, k: int, nonnegative: bool = False,
                 device_generic: bool = False) -> torch.Tensor:
    """``values`` ``(R, n)`` -> ``(R, 1)``: the ``k``-th smallest (1-based) of each row (see
    :func:`kth_smallest_and_max`)."""
    return kth_smallest_and_max(values, k, nonnegative, device_generic)[0]
