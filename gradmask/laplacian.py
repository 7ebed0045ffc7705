"""Laplacian-of-Gaussian (LoG) filtering of batches of 2-D maps.

The one LoG implementation of gradmask: the Gradient Mask (Algorithm 1, step 3), LI-Map
(Section 3.2) and the LI background blur (Algorithm 2) all filter through :class:`LoGFilter`.

How it is fast: every kernel offered here is a sum of two separable terms,
``k(y, x) = sum_t row_t(y) * col_t(x)``, and a 1-D filter with any fixed padding on an
``n``-long axis is an ``n x n`` matrix. Filtering a batch of ``(H, W)`` maps is therefore two
batched matrix products, ``out = sum_t R_t @ D @ C_t^T``, whatever the kernel size. Small maps
(``H*W <= 4 (H + W)``, e.g. 8x8) instead go through the whole 2-D operator
``sum_t kron(R_t, C_t)`` as one ``(HW x HW)`` matrix: the same multiply-adds, but one large
matrix product over all maps instead of many tiny ones (faster on CPU; figures in docs/DESIGN.md). The
matrices are built once per (map size, device, dtype) and cached.

On CPU, float32 maps larger than that with a window of radius 1-4 (the default 5x5 has radius 2)
go through the compiled banded filter instead (``gradmask/_banded.c``, built at install time when
a C compiler is there): ``5 + 5`` taps per term and position instead of ``H + W`` multiply-adds,
faster than the matrix products (docs/DESIGN.md has the measurements).
:func:`banded_available` tells whether it was built; without it everything goes through the
matrix products.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import math
import warnings
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .settings import DEFAULTS, check_log_settings

CPU_BLOCK_BYTES = 1 << 20  # maps per CPU block: about one L2 cache
DENSE_MAX_POSITIONS = 256  # largest H*W filtered through the dense (HW x HW) operator
BANDED_MAX_RADIUS = 4      # largest window radius of the compiled banded filter
COMPILED_VERSION = 2       # what gradmask_compiled_version() of a current build of _banded.c returns
#: Said once per process (logger "gradmask") when the compiled filter is first wanted and was not built.
NOT_BUILT_NOTICE = ("gradmask: the compiled LoG (gradmask/_banded.c) was not built at install time (no C compiler); "
                    "the LoG runs on matrix products, slower on CPU")


def compiled_path() -> Optional[Path]:
    """The built extension ``_banded<suffix>`` beside this module (a suffix of this interpreter's
    ``EXTENSION_SUFFIXES``), or None. Loaded by path with ctypes, not imported: it is a plain C
    library, and an import of it would read as an import of the package."""
    here = Path(__file__).parent
    return next((here / f"_banded{s}" for s in EXTENSION_SUFFIXES if (here / f"_banded{s}").is_file()), None)


@functools.lru_cache(maxsize=None)
def compiled_library():
    """The compiled ``gradmask/_banded.c`` (``gradmask_banded_log``, ``gradmask_finite_input``,
    ``gradmask_mark_nonfinite``, ``gradmask_sample_scales``) as a ctypes library with its argument
    types set, or None if it was not built (a one-line notice, :data:`NOT_BUILT_NOTICE`, on the
    "gradmask" logger) or was built from an older ``_banded.c`` (a warning says so, and the matrix
    products serve until ``pip install -e .`` rebuilds it)."""
    path = compiled_path()
    if path is None:
        logging.getLogger("gradmask").warning(NOT_BUILT_NOTICE)
        return None
    library = ctypes.CDLL(str(path))  # ctypes releases the GIL during each call
    version = getattr(library, "gradmask_compiled_version", None)
    if version is None or version() != COMPILED_VERSION:
        warnings.warn(f"{path} was built from an older gradmask/_banded.c; rebuild it "
                      f"(pip install -e .). Until then the LoG runs on the matrix products.", RuntimeWarning,
                      stacklevel=2)
        return None
    library.gradmask_banded_log.restype = ctypes.c_int
    library.gradmask_banded_log.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
                                            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 7
    library.gradmask_finite_input.restype = ctypes.c_int
    library.gradmask_finite_input.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    library.gradmask_mark_nonfinite.restype = None
    library.gradmask_mark_nonfinite.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
                                                ctypes.c_int]
    library.gradmask_sample_scales.restype = None
    library.gradmask_sample_scales.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                               ctypes.c_int, ctypes.c_void_p]
    return library


def banded_available() -> bool:
    """True when the compiled banded filter was built (it needs a C compiler at install time)."""
    return compiled_library() is not None


def _block_input(source: torch.Tensor, abs_input: bool, isolate_nonfinite: bool,
                 compiled: bool) -> tuple[torch.Tensor, int]:
    """``(part, nonfinite)``: a block of maps as the matrix products read it, ``|source|`` or
    ``source`` with non-finite values read as 0 under ``isolate_nonfinite``. ``compiled`` (float32
    on CPU, ``source`` contiguous): one C pass that also says whether ``source`` held a non-finite
    value (``nonfinite``, handed on to :func:`_block_output`; 1 elsewhere)."""
    if compiled:
        part = torch.empty_like(source)
        return part, compiled_library().gradmask_finite_input(source.data_ptr(), part.data_ptr(),
                                                              source.numel(), abs_input)
    part = source.abs() if abs_input else source
    if isolate_nonfinite:
        part = torch.nan_to_num(part, nan=0.0, posinf=0.0, neginf=0.0)
    return part.contiguous(), 1


def _block_output(source: torch.Tensor, result: torch.Tensor, abs_output: bool, isolate_nonfinite: bool,
                  compiled: bool, nonfinite: int) -> None:
    """Finish a filtered block in place: ``|result|`` with ``abs_output``, +inf where ``source`` is
    not finite under ``isolate_nonfinite`` (``compiled``: one C pass, reading ``source`` only when
    ``nonfinite``)."""
    if compiled:
        compiled_library().gradmask_mark_nonfinite(source.data_ptr(), result.data_ptr(), result.numel(),
                                                   abs_output, nonfinite)
        return
    if abs_output:
        result.abs_()
    if isolate_nonfinite:  # + (source - finite source): + 0 where finite (exact), NaN or +-inf where not
        marker = source - torch.nan_to_num(source, nan=0.0, posinf=0.0, neginf=0.0)
        result.add_(marker).nan_to_num_(nan=math.inf, posinf=math.inf, neginf=math.inf)


def default_kernel_size(sigma: float) -> int:
    """``2 * ceil(3 * sigma) + 1``: the window holding the LoG's +-3 sigma support."""
    return 2 * math.ceil(3.0 * sigma) + 1


def _eq2_factors(sigma: float, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Separable factors of eq. (2), ``-1/(pi s^4) (1 - r^2/(2 s^2)) exp(-r^2/(2 s^2))``.

    With ``g(x) = exp(-x^2/(2 s^2))`` and ``h(x) = x^2/(2 s^2) g(x)`` the kernel is
    ``c * [(g - h)(y) g(x) - g(y) h(x)]``, ``c = -1/(pi s^4)``.
    """
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    h = x**2 / (2.0 * sigma**2) * g
    c = -1.0 / (math.pi * sigma**4)
    return [(c * (g - h), g), (c * g, -h)]


def _authors_factors(sigma: float, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Separable factors of ``scipy.ndimage.gaussian_laplace(impulse, sigma)`` on a
    ``size x size`` window with scipy's default ``mode='reflect'`` (what the authors' LI-Map
    code used): ``d2(y) g0(x) + g0(y) d2(x)`` with the 1-D filters of the impulse."""
    from scipy.ndimage import gaussian_filter1d

    impulse = np.zeros(size)
    impulse[size // 2] = 1.0
    d2 = gaussian_filter1d(impulse, sigma, order=2, mode="reflect")
    g0 = gaussian_filter1d(impulse, sigma, order=0, mode="reflect")
    return [(d2, g0), (g0, d2)]


def filter_matrix(taps: np.ndarray, n: int, padding: str) -> np.ndarray:
    """The ``n x n`` matrix ``M`` with ``(M @ v)[i] = sum_d taps[d + r] * v_pad[i + d]``.

    ``taps`` has odd length ``2r + 1`` with ``r <= n - 1``. ``padding="reflect"`` mirrors
    without repeating the edge (``torch.nn.functional.pad(mode="reflect")``, scipy's
    ``mode="mirror"``); ``"zero"`` pads with zeros.
    """
    r = (len(taps) - 1) // 2
    if r > n - 1:
        raise ValueError(f"filter radius {r} does not fit an axis of length {n}")
    out = np.zeros((n, n), dtype=np.float64)
    rows = np.arange(n)
    for d in range(-r, r + 1):
        cols = rows + d
        if padding == "reflect":
            cols = np.where(cols < 0, -cols, cols)
            cols = np.where(cols > n - 1, 2 * (n - 1) - cols, cols)
            np.add.at(out, (rows, cols), taps[d + r])
        else:
            valid = (cols >= 0) & (cols < n)
            np.add.at(out, (rows[valid], cols[valid]), taps[d + r])
    return out


def _crop(taps: np.ndarray, radius: int) -> np.ndarray:
    centre = (len(taps) - 1) // 2
    return taps[centre - radius : centre + radius + 1]


class LoGFilter:
    """LoG filtering ``(..., H, W) -> (..., H, W)`` with a cached separable matrix form.

    Args:
        sigma: standard deviation of the Gaussian (paper: 11). Finite and > 0.
        kernel_size: odd window size ``s`` (default 5, as the authors' code), or ``None`` for
            ``2*ceil(3*sigma)+1`` cropped to what can reach a pixel of the map
            (radius <= map side - 1 per axis).
        kernel: ``"log"``: eq. (2) sampled at integer offsets (equal, up to one positive
            factor, to ``scipy.ndimage.gaussian_laplace`` of a centred impulse with
            ``mode='constant'``). ``"authors"``: the authors' LI-Map kernel, the
            ``s x s`` window of ``gaussian_laplace`` of an impulse with scipy's default
            ``mode='reflect'`` (more peaked: centre -1, neighbours about -0.72 after scaling).
        padding: ``"reflect"`` (mirror without repeating the edge, as
            ``torch.nn.ReflectionPad2d``) or ``"zero"``.
        banded: use the compiled banded filter where it applies (CPU, float32, radius 1-4, maps
            larger than the dense operator's); ``False`` keeps every map on the matrix products.
            The two agree to float32 rounding (they sum in another order).

    With ``padding="reflect"`` an explicit ``kernel_size`` must fit the map
    (``kernel_size <= 2*side - 1``); with ``"zero"`` a larger kernel is cropped, which is exact.
    """

    def __init__(self, sigma: float = DEFAULTS.sigma, kernel_size: Optional[int] = DEFAULTS.kernel_size,
                 kernel: str = DEFAULTS.kernel, padding: str = DEFAULTS.padding, banded: bool = True):
        check_log_settings(sigma, kernel_size, kernel, padding)
        self.sigma = float(sigma)
        self.kernel_size = kernel_size
        self.kernel = kernel
        self.padding = padding
        self.banded = bool(banded)
        size = kernel_size if kernel_size is not None else default_kernel_size(self.sigma)
        self._radius = (size - 1) // 2
        if kernel == "log":
            self._factors = _eq2_factors(self.sigma, self._radius)
        else:
            self._factors = _authors_factors(self.sigma, size)
        self._matrices: dict = {}

    def __repr__(self) -> str:
        return (f"LoGFilter(sigma={self.sigma}, kernel_size={self.kernel_size}, "
                f"kernel={self.kernel!r}, padding={self.padding!r})")

    def _radii(self, height: int, width: int) -> tuple[int, int]:
        if self.kernel_size is not None and self.padding == "reflect":
            if self._radius > min(height, width) - 1:
                raise ValueError(
                    f"kernel_size={self.kernel_size} does not fit a {height}x{width} map with "
                    f"padding='reflect' (needs kernel_size <= {2 * min(height, width) - 1}); "
                    f"use kernel_size=None (cropped to the map) or padding='zero'")
        return min(self._radius, height - 1), min(self._radius, width - 1)

    def kernel2d(self, height: int, width: int) -> np.ndarray:
        """The 2-D kernel (float64) applied to maps of this size, after any cropping."""
        ry, rx = self._radii(height, width)
        return sum(np.outer(_crop(r, ry), _crop(c, rx)) for r, c in self._factors)

    def uses_dense_operator(self, height: int, width: int) -> bool:
        """True where ``(H, W)`` maps are filtered by one ``(HW x HW)`` matrix: when that costs no
        more multiply-adds than the two separable products (``H*W <= 4 (H + W)``) and
        ``H*W <= DENSE_MAX_POSITIONS``."""
        return height * width <= min(4 * (height + width), DENSE_MAX_POSITIONS)

    def uses_banded_filter(self, height: int, width: int, device, dtype) -> bool:
        """True where ``(H, W)`` maps computed in ``dtype`` on ``device`` go through the compiled
        banded filter (see the module docstring)."""
        ry, rx = self._radii(height, width)
        return (self.banded and torch.device(device).type == "cpu" and dtype == torch.float32
                and 1 <= min(ry, rx) and max(ry, rx) <= BANDED_MAX_RADIUS
                and not self.uses_dense_operator(height, width) and banded_available())

    def banded_taps(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached float32 ``(rows (t, 2 ry + 1), cols (t, 2 rx + 1))``: the taps of each separable term."""
        ry, rx = self._radii(height, width)
        return self._cached("banded", height, width, "cpu", torch.float32, lambda: (
            np.stack([_crop(r, ry) for r, _ in self._factors]), np.stack([_crop(c, rx) for _, c in self._factors])))

    def _banded(self, maps: torch.Tensor, out: torch.Tensor, abs_input: bool, abs_output: bool,
                isolate_nonfinite: bool) -> None:
        """Filter contiguous float32 ``maps`` ``(M, H, W)`` into ``out`` with the compiled filter."""
        _, height, width = maps.shape
        rows, cols = self.banded_taps(height, width)
        status = compiled_library().gradmask_banded_log(
            maps.data_ptr(), out.data_ptr(), maps.shape[0], height, width, rows.data_ptr(), cols.data_ptr(),
            rows.shape[0], (rows.shape[1] - 1) // 2, (cols.shape[1] - 1) // 2, self.padding == "reflect",
            abs_input, abs_output, isolate_nonfinite)
        if status:
            raise RuntimeError(f"the compiled banded LoG filter failed (status {status}) on maps {tuple(maps.shape)}")

    def _cached(self, kind: str, height: int, width: int, device, dtype, build) -> tuple:
        key = (kind, height, width, torch.device(device), dtype)
        if key not in self._matrices:
            self._matrices[key] = tuple(torch.as_tensor(m, dtype=dtype, device=device) for m in build())
        return self._matrices[key]

    def _filter_matrices(self, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per separable term ``t``: ``(R_t (H, H), C_t (W, W))`` with ``out = sum_t R_t @ D @ C_t^T``."""
        ry, rx = self._radii(height, width)
        return [(filter_matrix(_crop(r, ry), height, self.padding), filter_matrix(_crop(c, rx), width, self.padding))
                for r, c in self._factors]

    def matrices(self, height: int, width: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached ``(rows (H, tH), cols (W, tW))`` for ``t`` separable terms:
        ``out = rows @ (D @ cols).view(tH, W)``. ``D @ cols`` is ``(H, t, W)``, so the columns of
        ``rows`` are interleaved: ``rows[y, y' * t + i] = R_i[y, y']`` (no transpose needed)."""
        def build():
            terms = self._filter_matrices(height, width)
            return (np.stack([r for r, _ in terms], axis=2).reshape(height, -1),
                    np.concatenate([c.T for _, c in terms], axis=1))
        return self._cached("separable", height, width, device, dtype, build)

    def dense_matrix(self, height: int, width: int, device, dtype) -> torch.Tensor:
        """Cached ``(HW, HW)`` matrix ``M`` with ``out.flatten() = D.flatten() @ M``:
        ``M = (sum_t kron(R_t, C_t))^T`` for row-major flattened maps."""
        def build():
            return (sum(np.kron(r, c) for r, c in self._filter_matrices(height, width)).T,)
        return self._cached("dense", height, width, device, dtype, build)[0]

    def __call__(self, maps: torch.Tensor, dtype: Optional[torch.dtype] = None, abs_input: bool = False,
                 abs_output: bool = False, isolate_nonfinite: bool = False,
                 device_generic: bool = False) -> torch.Tensor:
        """Filter ``maps`` ``(..., H, W)`` (floating point) -> same shape, in ``dtype`` (default:
        the maps' dtype). ``abs_input`` filters ``|maps|``, ``abs_output`` returns ``|result|``
        (the mask's ``|LoG(|g|)|``): both are done block by block while the block is in cache.
        ``isolate_nonfinite`` reads every non-finite value (NaN, +-inf) as 0, so that it reaches no
        neighbour's output, and returns +inf at its own position (the Gradient Mask's rule: such a
        position ranks first and is kept); without it NaN and inf spread over the window.

        On CPU the maps go through in blocks of about ``CPU_BLOCK_BYTES`` so that both matrix
        products work in cache. ``device_generic=True`` takes the path of non-CPU devices on any
        device (matrix products over all maps at once, torch ops only: how tests run it on CPU).
        """
        if maps.dim() < 2 or not maps.is_floating_point():
            raise ValueError(f"maps must be a floating-point tensor (..., H, W), got "
                             f"{tuple(maps.shape)} {maps.dtype}")
        dtype = maps.dtype if dtype is None else dtype
        *lead, height, width = maps.shape
        flat = maps.reshape(-1, height, width)
        out = torch.empty(flat.shape, dtype=dtype, device=maps.device)
        cpu = maps.device.type == "cpu" and not device_generic
        if cpu and self.uses_banded_filter(height, width, maps.device, dtype):
            self._banded(flat.to(dtype).contiguous(), out, abs_input, abs_output, isolate_nonfinite)
            return out.view(*lead, height, width)
        if self.uses_dense_operator(height, width):
            dense = self.dense_matrix(height, width, maps.device, dtype)

            def product(part: torch.Tensor, result: torch.Tensor) -> None:
                torch.matmul(part.view(-1, height * width), dense, out=result.view(-1, height * width))
        else:
            rows, cols = self.matrices(height, width, maps.device, dtype)

            def product(part: torch.Tensor, result: torch.Tensor) -> None:
                torch.matmul(rows, torch.matmul(part, cols).view(-1, rows.shape[1], width), out=result)
        block = max(1, len(flat))
        if cpu:
            block = max(1, CPU_BLOCK_BYTES // (height * width * out.element_size()))
        compiled = isolate_nonfinite and cpu and dtype == torch.float32 and banded_available()
        for start in range(0, len(flat), block):
            source = flat[start:start + block].to(dtype)
            if compiled:
                source = source.contiguous()
            result = out[start:start + block]
            part, nonfinite = _block_input(source, abs_input, isolate_nonfinite, compiled)
            product(part, result)
            _block_output(source, result, abs_output, isolate_nonfinite, compiled, nonfinite)
        return out.view(*lead, height, width)
