"""The Gradient Mask (Algorithm 1) and the two ablations of Table 2, and the registered operator
``torch.ops.gradmask.mask`` that computes it (what :meth:`GradientMask.apply` and the hooks call).

The operator has a fake implementation (shapes and dtypes only), so ``torch.compile`` traces it as
one opaque node instead of breaking the graph; its CPU kernel is the fast path (compiled LoG, numpy
selection, cache-sized blocks), the kernel of every other device the device-generic path (torch
ops only: matrix-product LoG, ``torch.kthvalue``). :func:`force_device_generic` makes CPU tensors
take the device-generic path too (for tests: it is how CI runs the CUDA path without a GPU).
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from .laplacian import CPU_BLOCK_BYTES, LoGFilter, compiled_library
from .selection import kth_smallest_and_max
from .settings import DEFAULTS, MaskSettings, check_inhibition_rate

NORM_SCALE_EXPONENT = 48  # before squaring, a sample's largest |g| is scaled into [2**47, 2**48)
_MINUS_INF = torch.tensor(-math.inf)  # a 0-d CPU scalar: usable with tensors on any device
_FORCE_DEVICE_GENERIC = False  # see force_device_generic


@contextlib.contextmanager
def force_device_generic(enabled: bool = True) -> Iterator[None]:
    """Inside the block, CPU tensors take the device-generic path of the mask (the one CUDA and
    other devices take: selection by ``torch.kthvalue``, the LoG's matrix products over all maps,
    the uncompiled norms, the bookkeeping on the tensors' device) instead of the CPU fast path.
    For tests: it lets a machine without a GPU run and check the code a GPU runs."""
    global _FORCE_DEVICE_GENERIC
    previous, _FORCE_DEVICE_GENERIC = _FORCE_DEVICE_GENERIC, bool(enabled)
    try:
        yield
    finally:
        _FORCE_DEVICE_GENERIC = previous


def _device_generic(device: torch.device) -> bool:
    """Whether tensors on ``device`` take the device-generic path (see :func:`force_device_generic`)."""
    return device.type != "cpu" or _FORCE_DEVICE_GENERIC


def _sample_scales(grad: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """``(N,)`` powers of two in ``compute``: ``2**(NORM_SCALE_EXPONENT - e_n)`` with ``e_n`` the
    exponent of sample ``n``'s largest ``|g|`` (``m 2**e_n``, ``0.5 <= m < 1``), at most
    ``2**bias`` (a normal number); 1 for a sample holding a non-finite value, whose maximum says
    nothing about its finite values. Multiplying by them is exact. (On CPU, float32 and bf16
    samples laid out densely get the same numbers from one compiled pass per block of samples,
    see :meth:`GradientMask._squared_norms`.)"""
    dims = tuple(range(1, grad.dim()))
    largest = torch.maximum(grad.amax(dim=dims), grad.amin(dim=dims).neg()).to(compute)
    exponent = torch.where(torch.isfinite(largest), torch.frexp(largest).exponent, NORM_SCALE_EXPONENT)
    bias, mantissa_bits, int_type = ((1023, 52, torch.int64) if compute == torch.float64
                                     else (127, 23, torch.int32))
    biased = (bias + NORM_SCALE_EXPONENT - exponent.to(int_type)).clamp_(max=2 * bias)
    return (biased << mantissa_bits).view(compute)


def _energy(t: torch.Tensor) -> torch.Tensor:
    """0-d float64 ``||t||^2`` on ``t``'s device (one reduction, no copy, no host sync)."""
    return torch.linalg.vector_norm(t, dtype=torch.float32 if t.dtype != torch.float64 else None).to(
        torch.float64).square()


def _energy_value(t: torch.Tensor) -> float:
    """:func:`_energy` of a CPU tensor as a Python float (the same number: float64 arithmetic)."""
    norm = torch.linalg.vector_norm(t, dtype=torch.float32 if t.dtype != torch.float64 else None).item()
    return norm * norm


# The slots of a call's statistics (the operator's second result, ``MaskedGradient.totals``): float64
# numbers that a target's running totals sum over calls (``MaskHandle.stats`` reads them).
CALLS, POSITIONS, MAPS, KEPT, ENERGY, ENERGY_CALLS, NONFINITE, TIED = range(8)
TOTALS = 8


@dataclass(frozen=True)
class MaskedGradient:
    """What :meth:`GradientMask.apply` returns. ``G`` is the number of masks per sample
    (``groups``, or ``C`` for ``mode="pixel"``). ``totals`` holds the call's statistics as one
    ``(8,)`` float64 tensor on the gradient's device (slots :data:`CALLS` ... :data:`TIED`: 1 call,
    positions, maps, positions kept, the energy share kept and 1 when that is finite (0 and 0 for an
    all-zero or non-finite gradient), non-finite maps, tied maps), what the hooks add into a
    target's running totals; the other statistics are 0-d tensors derived from it on access
    (reading them is the caller's choice: nothing here waits for it)."""

    gradient: torch.Tensor  # grad * mask (N, C, H, W): grad's dtype and memory layout
    totals: torch.Tensor    # (8,) float64, see above
    maps: int               # N * G

    @property
    def kept_fraction(self) -> torch.Tensor:
        """float64: kept positions / (N * G * H * W) (1 for an empty gradient)."""
        positions = self.totals[POSITIONS]
        return torch.where(positions > 0, self.totals[KEPT] / positions, 1.0)

    @property
    def nonfinite_maps(self) -> torch.Tensor:
        """int64: (sample, set) maps holding a non-finite gradient value."""
        return self.totals[NONFINITE].to(torch.int64)

    @property
    def tied_maps(self) -> torch.Tensor:
        """int64: maps with no position above the threshold (tie rule)."""
        return self.totals[TIED].to(torch.int64)

    @property
    def energy_kept(self) -> torch.Tensor:
        """float64: ``||grad * mask||^2 / ||grad||^2``, the share of the gradient's energy kept (NaN
        for an all-zero or non-finite gradient)."""
        return torch.where(self.totals[ENERGY_CALLS] > 0, self.totals[ENERGY], math.nan)


class GradientMask:
    """Lateral inhibition of an activation gradient ``(N, C, H, W)``.

    ``mode="lateral"`` (Algorithm 1): the ``C`` channels are split into ``groups`` sets of
    ``C/groups`` consecutive channels; per set and pixel the L2 norm of the set's gradients
    (the minicolumn, eq. 12-13); each norm map is LoG-filtered (eq. 14); the threshold is the
    ``inhibition_rate`` quantile of ``|delta|`` taken **per sample and per set** (eq. 15), and
    a position is kept where ``|delta|`` is above it (eq. 16). Every channel of a set shares the
    set's mask (eq. 17). The paper's Algorithm 1 is written "for one sample in layer l", so the
    quantile is per sample (a sample's mask depends on its own gradient only, which also makes
    the mask independent of batch size and of how a batch is sharded over processes), and per
    set because eq. 15 indexes the threshold ``Q_k`` by set.

    ``mode="norm"`` (Table 2, "Without LI"): the same minicolumn norms, thresholded directly.
    ``mode="pixel"`` (Table 2, "Without Minicolumn"): ``|g|`` per channel, LoG per channel,
    one mask per channel (``groups`` is ignored).

    The threshold follows ``torch.quantile`` (linear interpolation): with ``n = H*W`` positions
    exactly ``n - 1 - floor(q (n - 1))`` positions are kept (up to ties), found with an order
    statistic (:func:`gradmask.selection.kth_smallest_and_max`) instead of ``quantile``.
    ``inhibition_rate=0`` keeps every position (a literal ``> quantile(0)`` would drop the single
    minimum).

    Rules where the paper is silent (README, "Choices"):

    - **Ties.** Positions equal to the threshold are dropped together, except in a map where no
      position is above the threshold (the threshold is the map's maximum): there the positions
      equal to it are kept. So a 1x1 map, a constant map and an all-zero map are kept whole
      instead of wiped (an all-zero gradient is unchanged either way).
    - **Non-finite gradients.** A minicolumn (``pixel``: a value) holding NaN or +-inf is read as 0
      by the LoG, so it changes no neighbour's score, and scores +inf: it ranks first and is
      kept, so the value leaves the mask unchanged (``GradScaler`` and anomaly detection see it)
      and takes one of the map's kept places.
    - **Range.** Norms are computed in float32 (float64 for float64 gradients) on each sample
      scaled by a power of two that brings its largest ``|g|`` to ``2**47``-``2**48``, so squares
      neither overflow (bf16 near 1e30, float32 near 1e20) nor underflow; scaling by a power of
      two is exact, so masks are those of the unscaled arithmetic wherever that did not overflow.
      A sample holding a non-finite value is not scaled. ``pixel`` mode squares nothing and is
      not scaled (the default kernels' taps sum to less than 1: the LoG cannot overflow).

    Args:
        groups: number of channel sets ``K`` (paper: 16); must divide ``C``.
        sigma: the LoG's standard deviation (default: the authors' 11); see
            :class:`gradmask.laplacian.LoGFilter` for this and the next three.
        kernel_size: the LoG window (default 5x5; None: ``2*ceil(3 sigma)+1``).
        kernel: ``"log"`` (eq. 2, default) or ``"authors"``.
        padding: ``"reflect"`` (default) or ``"zero"``.
        inhibition_rate: the quantile ``q`` in [0, 1) (paper: 0.5); may be set between steps
            (schedules), validated alike.
        mode: ``"lateral"``, ``"norm"`` or ``"pixel"``.

    The mask is computed in float32 (float64 for float64 gradients) and carries no autograd.
    """

    def __init__(self, groups: int = DEFAULTS.groups, sigma: float = DEFAULTS.sigma,
                 kernel_size: Optional[int] = DEFAULTS.kernel_size, kernel: str = DEFAULTS.kernel,
                 padding: str = DEFAULTS.padding, inhibition_rate: float = DEFAULTS.inhibition_rate,
                 mode: str = DEFAULTS.mode):
        self._configure(MaskSettings(groups=groups, sigma=sigma, kernel_size=kernel_size, kernel=kernel,
                                     padding=padding, inhibition_rate=inhibition_rate, mode=mode))  # validates

    @classmethod
    def from_settings(cls, settings: MaskSettings) -> "GradientMask":
        """The mask of a :class:`gradmask.MaskSettings` (validated when it was built: nothing is checked
        again; e.g. ``TrainConfig.mask_settings``)."""
        if not isinstance(settings, MaskSettings):
            raise TypeError(f"settings must be a gradmask.MaskSettings, got {type(settings).__name__}")
        mask = cls.__new__(cls)
        mask._configure(settings)
        return mask

    def _configure(self, settings: MaskSettings) -> None:
        self.groups = settings.groups
        self._store_rate(settings.inhibition_rate)
        self.mode = settings.mode
        self.log_filter = LoGFilter(sigma=settings.sigma, kernel_size=settings.kernel_size, kernel=settings.kernel,
                                    padding=settings.padding)

    @property
    def settings(self) -> MaskSettings:
        """This mask's settings (the inhibition rate as it is now)."""
        return MaskSettings(groups=self.groups, sigma=self.sigma, kernel_size=self.kernel_size, kernel=self.kernel,
                            padding=self.padding, inhibition_rate=self.inhibition_rate, mode=self.mode)

    @property
    def inhibition_rate(self) -> float:
        """The quantile ``q`` in [0, 1); read at every call (nothing derived from it is cached).
        The operator reads it from a 0-d float64 CPU tensor (``torch.compile`` guards on Python
        numbers, not on tensor values: setting it between compiled steps recompiles nothing);
        setting it replaces that tensor (a backward already running keeps the rate it read)."""
        return self._inhibition_rate

    @inhibition_rate.setter
    def inhibition_rate(self, value: float) -> None:
        self._store_rate(check_inhibition_rate(value))

    def _store_rate(self, rate: float) -> None:
        """Set a checked rate, and the 0-d CPU tensor the operator reads."""
        self._inhibition_rate = float(rate)
        self._rate = torch.tensor(self._inhibition_rate, dtype=torch.float64)

    @property
    def sigma(self) -> float:
        return self.log_filter.sigma

    @property
    def kernel_size(self) -> Optional[int]:
        return self.log_filter.kernel_size

    @property
    def kernel(self) -> str:
        return self.log_filter.kernel

    @property
    def padding(self) -> str:
        return self.log_filter.padding

    def __repr__(self) -> str:
        return (f"GradientMask(groups={self.groups}, sigma={self.sigma}, "
                f"kernel_size={self.kernel_size}, kernel={self.kernel!r}, "
                f"padding={self.padding!r}, inhibition_rate={self.inhibition_rate}, "
                f"mode={self.mode!r})")

    def maps_per_sample(self, channels: int) -> int:
        """``G``, the masks per sample of a gradient with ``channels`` channels: ``groups``
        (``channels`` for ``mode="pixel"``). ValueError when ``groups`` does not divide it."""
        if self.mode == "pixel":
            return channels
        if channels % self.groups:
            raise ValueError(f"groups={self.groups} must divide the channel count C={channels}")
        return self.groups

    def _check(self, grad: torch.Tensor) -> None:
        if not isinstance(grad, torch.Tensor) or grad.dim() != 4 or not grad.is_floating_point():
            shape = tuple(grad.shape) if isinstance(grad, torch.Tensor) else type(grad).__name__
            raise ValueError(f"grad must be a floating-point tensor (N, C, H, W), got {shape}")
        self.maps_per_sample(grad.shape[1])

    def scores(self, grad: torch.Tensor) -> torch.Tensor:
        """Importance per sample, set and pixel ``(N, G, H, W)``, float32 (float64 for float64
        gradients): ``|delta|`` (eq. 14; ``lateral``, ``pixel``) or, for ``mode="norm"``, the
        squared minicolumn norm (the squares select the same positions as the norms). +inf where
        a minicolumn (``pixel``: a value) holds a non-finite gradient, and where the true score
        exceeds the dtype's range (the mask is computed on scaled scores, unaffected by that)."""
        self._check(grad)
        scores, scales = self._scores(grad, _device_generic(grad.device))
        if scales is None:
            return scores
        unscale = scales.reciprocal().view(-1, 1, 1, 1)  # exact: powers of two
        return scores * unscale * unscale if self.mode == "norm" else scores * unscale

    def _scores(self, grad: torch.Tensor, generic: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(scores, scales)`` of a ``grad`` that :meth:`_check` has passed: the :meth:`scores` of
        sample ``n`` times ``scales[n]`` (``scales[n]**2`` for ``mode="norm"``); ``scales`` is
        None for ``mode="pixel"`` (not scaled). Non-finite positions score +inf, nothing is NaN.
        ``generic``: the device-generic path (see :func:`force_device_generic`)."""
        compute = torch.float64 if grad.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            if self.mode == "pixel":
                return self.log_filter(grad, dtype=compute, abs_input=True, abs_output=True,
                                       isolate_nonfinite=True, device_generic=generic), None
            squared, scales = self._squared_norms(grad, compute, generic)
            if self.mode == "norm":  # sqrt is monotone: thresholding squared norms selects the same set
                return squared.nan_to_num_(nan=math.inf, posinf=math.inf), scales
            return self.log_filter(squared.sqrt_(), abs_output=True, isolate_nonfinite=True,
                                   device_generic=generic), scales

    def _squared_norms(self, grad: torch.Tensor, compute: torch.dtype,
                       generic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(squared (N, K, H, W), scales (N,))`` in ``compute``: per sample, set and pixel the
        sum over the set's channels of ``(scales[n] g)**2`` (eq. 12-13, squared), see
        :func:`_sample_scales`; fp16 is not scaled (``scales`` 1: its squares fit float32).

        On CPU samples go through in blocks whose scaled squares stay in cache
        (``CPU_BLOCK_BYTES``; the sum is the same reduction as unblocked), and dense float32 / bf16
        samples get their scales from one compiled pass per block, which also brings the block
        into cache (``amax`` and ``amin`` over the whole gradient first cost two more passes).
        """
        n, c, h, w = grad.shape
        sets = grad.reshape(n, self.groups, c // self.groups, h, w)  # a view, contiguous or channels_last
        squared = torch.empty(n, self.groups, h, w, dtype=compute, device=grad.device)
        compiled = (not generic and grad.dtype in (torch.float32, torch.bfloat16)
                    and compiled_library() is not None
                    and (grad.is_contiguous() or grad.is_contiguous(memory_format=torch.channels_last)))
        if grad.dtype == torch.float16:
            scales = torch.ones(n, dtype=compute, device=grad.device)
        elif compiled:
            scales = torch.empty(n, dtype=compute)
        else:
            scales = _sample_scales(grad, compute)
        block = max(1, n)
        if not generic:
            block = max(1, CPU_BLOCK_BYTES // max(1, sets[0].numel() * squared.element_size()))
        for start in range(0, n, block):
            if compiled:  # each sample is one dense run of C*H*W values
                samples = min(block, n - start)
                compiled_library().gradmask_sample_scales(
                    grad[start].data_ptr(), samples, sets[0].numel(), grad.dtype == torch.bfloat16,
                    NORM_SCALE_EXPONENT, scales[start:].data_ptr())
            part = sets[start:start + block] * scales[start:start + block].view(-1, 1, 1, 1, 1)
            torch.sum(part.square_(), dim=2, out=squared[start:start + block])
        return squared, scales

    def _threshold(self, flat: torch.Tensor, rate: float,
                   generic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores ``flat`` ``(R, n)`` -> ``(keep_above, threshold, largest)``, each ``(R, 1)``: a
        position is kept where its score is ``> keep_above``, the threshold itself except in a map
        where no score is above it (``largest == threshold``): there the number just below it, so
        that the positions equal to it, the maximum, are kept (the tie rule). ``rate``: the
        inhibition rate; ``generic``: the device-generic selection."""
        rank = math.floor(rate * (flat.shape[1] - 1)) + 1  # 1-based order statistic
        threshold, largest = kth_smallest_and_max(flat, rank, nonnegative=True,  # scores are >= 0
                                                  device_generic=generic)
        # the float below the maximum is >= the threshold unless the maximum is the threshold
        return torch.minimum(threshold, torch.nextafter(largest, _MINUS_INF)), threshold, largest

    def keep_map(self, grad: torch.Tensor) -> torch.Tensor:
        """Compact boolean mask ``(N, G, 1, H, W)``: one ``(H, W)`` mask per sample and set."""
        self._check(grad)
        n, c, h, w = grad.shape
        if self.inhibition_rate == 0.0 or grad.numel() == 0:  # keeps everything: no scores needed
            return torch.ones(n, self.maps_per_sample(c), 1, h, w, dtype=torch.bool, device=grad.device)
        generic = _device_generic(grad.device)
        scores, _ = self._scores(grad, generic)
        flat = scores.view(-1, h * w)
        keep_above, _, _ = self._threshold(flat, self.inhibition_rate, generic)
        return (flat > keep_above).view(n, -1, 1, h, w)

    def mask(self, grad: torch.Tensor) -> torch.Tensor:
        """The {0, 1} mask, same shape and dtype as ``grad`` ``(N, C, H, W)``."""
        keep = self.keep_map(grad)
        n, c, h, w = grad.shape
        return keep.to(grad.dtype).expand(n, keep.shape[1], c // keep.shape[1], h, w).reshape(n, c, h, w)

    def _nonfinite_maps(self, grad: torch.Tensor) -> torch.Tensor:
        """0-d int64: the ``(sample, set)`` maps of ``grad`` holding a non-finite value."""
        n, c, _, _ = grad.shape
        finite = torch.isfinite(grad.amax(dim=(2, 3))) & torch.isfinite(grad.amin(dim=(2, 3)))  # (N, C)
        return (~finite.view(n, self.maps_per_sample(c), -1).all(dim=2)).sum()

    def apply(self, grad: torch.Tensor) -> MaskedGradient:
        """The masked gradient ``grad * mask`` ``(N, C, H, W)`` with the call's statistics
        (:class:`MaskedGradient`), from the operator ``torch.ops.gradmask.mask`` (traced by
        ``torch.compile`` as one node; run eagerly, its kernel is called directly, see
        :meth:`_masked`). An empty ``grad`` (``N = 0``, e.g. the last batch of a filtered loader)
        comes back unchanged."""
        self._check(grad)
        masked, totals = self._masked(grad)
        return MaskedGradient(masked, totals, grad.shape[0] * self.maps_per_sample(grad.shape[1]))

    def _masked(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``torch.ops.gradmask.mask`` of a ``grad`` that :meth:`_check` has passed (or whose
        forward output a hook checked): ``(masked, totals)`` as in :class:`MaskedGradient`.

        Outside tracing (no ``torch.compile``, no dispatch or function mode, a plain CPU or CUDA
        tensor) the operator's kernel is called directly, with the same arguments and results: the
        dispatcher's trip through Python costs more than the statistics. Everything else (Dynamo,
        fake and meta tensors, ``opcheck``, modes) goes through the operator."""
        if (type(grad) is torch.Tensor and grad.device.type in _DIRECT_DEVICES
                and not torch.compiler.is_compiling() and not torch._C._len_torch_dispatch_stack()
                and not torch._C._is_torch_function_mode_enabled()):
            generic = grad.device.type != "cpu" or _FORCE_DEVICE_GENERIC
            if torch.is_grad_enabled():
                with torch.no_grad():
                    return self._kernel(grad, self._inhibition_rate, generic)
            return self._kernel(grad, self._inhibition_rate, generic)
        with torch.no_grad():
            return _MASK_OP(grad, self._rate, self.groups, self.sigma, self.kernel_size, self.kernel, self.padding,
                            self.mode)

    def _kernel(self, grad: torch.Tensor, rate: float, generic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The operator's computation with inhibition rate ``rate`` (``generic``: the
        device-generic path): ``(masked, totals)``. The hot path: the scores become the {0, 1} mask
        in place (``gt_``), and for one mask per channel (``mode="pixel"``) the masked gradient is
        written into that same buffer, so no tensor the size of ``grad`` is allocated besides the
        scores and the result (laid out as ``torch.empty_like(grad)``, what the fake implementation
        promises). The statistics: on the CPU fast path numbers read on the host (no device to
        wait for) and put in one tensor; on the device-generic path device ops only (no host
        sync), the same float64 arithmetic (so the same numbers)."""
        n, c, h, w = grad.shape
        maps = n * self.maps_per_sample(c)
        numel = grad.numel()
        if numel == 0:  # nothing to mask: passed through, nothing kept or dropped
            totals = torch.zeros(TOTALS, dtype=torch.float64, device=grad.device)
            totals[CALLS], totals[MAPS] = 1.0, float(maps)
            return grad.clone(), totals
        if rate == 0.0:
            if generic:
                total = _energy(grad)
                return grad.clone(), _device_totals(numel, maps, grad.new_full((), numel, dtype=torch.float64),
                                                    total / total, self._nonfinite_maps(grad), None)
            total = _energy_value(grad)
            return grad.clone(), _host_totals(numel, maps, float(numel), _ratio(total, total),
                                              float(self._nonfinite_maps(grad).item()), 0.0)
        scores, _ = self._scores(grad, generic)
        flat = scores.view(maps, h * w)
        keep_above, threshold, largest = self._threshold(flat, rate, generic)
        flat.gt_(keep_above)  # (N*G, H*W) of 0.0 / 1.0
        # per-row sums are exact integers (< 2**24 per row), their total is summed in float64; the
        # positions kept are those of the mask times the channels sharing it (exact integers)
        g = maps // n
        kept = flat.sum(dim=1).sum(dtype=torch.float64)
        if not generic:
            kept, largest, keep_above, threshold = (kept.item() * (c // g), largest.numpy(), keep_above.numpy(),
                                                    threshold.numpy())
            nonfinite = float(np.count_nonzero(np.isposinf(largest)))
            tied = float(np.count_nonzero(keep_above < threshold))
            total = _energy_value(grad)  # before the pixel path below may overwrite the scores with the result
        else:
            kept, nonfinite, tied = kept * (c // g), largest.isposinf().sum(), (keep_above < threshold).sum()
            total = _energy(grad)
        if g == c and flat.dtype == grad.dtype and grad.is_contiguous():
            masked = flat.view(n, c, h, w).mul_(grad)
        else:
            masked = torch.empty_like(grad)
            torch.mul(grad.reshape(n, g, c // g, h, w), flat.view(n, g, 1, h, w).to(grad.dtype),
                      out=masked.view(n, g, c // g, h, w))
        if generic:
            return masked, _device_totals(numel, maps, kept, _energy(masked) / total, nonfinite, tied)
        return masked, _host_totals(numel, maps, kept, _ratio(_energy_value(masked), total), nonfinite, tied)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        """The masked gradient ``grad * mask`` ``(N, C, H, W)``."""
        return self.apply(grad).gradient


def _ratio(a: float, b: float) -> float:
    """``a / b`` as float64 tensors divide (NaN for 0 / 0 and inf / inf, inf for x / 0)."""
    try:
        return a / b
    except ZeroDivisionError:
        return math.nan if a == 0.0 or a != a else math.copysign(math.inf, a)


def _host_totals(numel: int, maps: int, kept: float, energy_kept: float, nonfinite: float,
                 tied: float) -> torch.Tensor:
    """A call's ``(8,)`` float64 statistics (see :class:`MaskedGradient`) from host numbers, in one
    CPU tensor (the CPU fast path's: there reading a number waits for nothing)."""
    finite = math.isfinite(energy_kept)
    values = np.array((1.0, numel, maps, kept, energy_kept if finite else 0.0, float(finite), nonfinite, tied),
                      dtype=np.float64)
    return torch.from_numpy(values)


def _device_totals(numel: int, maps: int, kept: torch.Tensor, energy_kept: torch.Tensor, nonfinite: torch.Tensor,
                   tied: Optional[torch.Tensor]) -> torch.Tensor:
    """A call's ``(8,)`` float64 statistics from 0-d tensors on the gradient's device (``tied``
    None: 0), by device ops only (no host sync)."""
    totals = torch.zeros(TOTALS, dtype=torch.float64, device=kept.device)
    totals[CALLS], totals[POSITIONS], totals[MAPS] = 1.0, float(numel), float(maps)
    finite = energy_kept.isfinite()
    totals[KEPT] = kept
    totals[ENERGY] = torch.where(finite, energy_kept, 0.0)
    totals[ENERGY_CALLS] = finite
    totals[NONFINITE] = nonfinite
    if tied is not None:
        totals[TIED] = tied
    return totals


# --- the operator -------------------------------------------------------------------------------

_DIRECT_DEVICES = frozenset({"cpu", "cuda"})  # devices whose eager calls skip the dispatcher (GradientMask._masked)
_LIBRARY = torch.library.Library("gradmask", "DEF")
# cudagraph_unsafe (where torch has it): the kernels read the rate and choose paths on the host, so
# inductor's CUDA graphs leave the operator outside the captured graph instead of freezing them
_LIBRARY.define("mask(Tensor grad, Tensor rate, int groups, float sigma, int? kernel_size, str kernel, "
                "str padding, str mode) -> (Tensor, Tensor)",
                tags=tuple(getattr(torch.Tag, tag) for tag in ("cudagraph_unsafe",) if hasattr(torch.Tag, tag)))
_MASK_OP = torch.ops.gradmask.mask.default


@functools.lru_cache(maxsize=64)
def _mask_of(groups: int, sigma: float, kernel_size: Optional[int], kernel: str, padding: str,
             mode: str) -> GradientMask:
    """One :class:`GradientMask` per setting (its LoG matrices cached), the operator's computation."""
    return GradientMask(groups=groups, sigma=sigma, kernel_size=kernel_size, kernel=kernel, padding=padding,
                        mode=mode)


def _operator(generic: bool, grad: torch.Tensor, rate: torch.Tensor, groups: int, sigma: float,
              kernel_size: Optional[int], kernel: str, padding: str, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.gradmask.mask(grad (N, C, H, W), rate (0-d, CPU), settings...)`` ->
    ``(masked (N, C, H, W) like grad, totals (8,) float64)`` on grad's device, as the fields of
    :class:`MaskedGradient`."""
    return _mask_of(groups, sigma, kernel_size, kernel, padding, mode)._kernel(grad, rate.item(), generic)


def _cpu_kernel(grad: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    """The operator on CPU: the fast path (the device-generic one under :func:`force_device_generic`)."""
    return _operator(_FORCE_DEVICE_GENERIC, grad, *args)


def _generic_kernel(grad: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    """The operator on CUDA and every other device: the device-generic path."""
    return _operator(True, grad, *args)


_LIBRARY.impl("mask", _cpu_kernel, "CPU")
_LIBRARY.impl("mask", _generic_kernel, "CompositeExplicitAutograd")


def _fake_kernel(grad: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes, dtypes and layout of the operator's results (for tracing)."""
    return torch.empty_like(grad), grad.new_empty((TOTALS,), dtype=torch.float64)


(getattr(torch.library, "register_fake", None) or torch.library.impl_abstract)(
    "gradmask::mask", _fake_kernel, lib=_LIBRARY)
