"""The Gradient Mask (Algorithm 1) and the two ablations of Table 2."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .laplacian import LoGFilter
from .selection import kth_smallest

MODES = ("lateral", "norm", "pixel")
MASK_MODES = ("none", *MODES)  # the choices of a `mask` setting: no mask, or a mode


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
    statistic (:func:`gradmask.selection.kth_smallest`) instead of ``quantile``. ``inhibition_rate=0`` keeps every position (a literal
    ``> quantile(0)`` would drop the single minimum).

    Args:
        groups: number of channel sets ``K`` (paper: 16); must divide ``C``.
        sigma, kernel_size, kernel, padding: the LoG filter, see
            :class:`gradmask.laplacian.LoGFilter` (defaults: the authors' sigma=11, 5x5 window,
            reflect padding; kernel from eq. 2).
        inhibition_rate: the quantile ``q`` in [0, 1) (paper: 0.5).
        mode: ``"lateral"``, ``"norm"`` or ``"pixel"``.

    The mask is computed in float32 (float64 for float64 gradients) and carries no autograd.
    """

    def __init__(self, groups: int = 16, sigma: float = 11.0, kernel_size: Optional[int] = 5,
                 kernel: str = "log", padding: str = "reflect", inhibition_rate: float = 0.5,
                 mode: str = "lateral"):
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be an integer >= 1, got {groups!r}")
        if (isinstance(inhibition_rate, bool) or not isinstance(inhibition_rate, (int, float))
                or not (0.0 <= inhibition_rate < 1.0)):
            raise ValueError(f"inhibition_rate must be in [0, 1), got {inhibition_rate!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.groups = groups
        self.inhibition_rate = float(inhibition_rate)
        self.mode = mode
        self.log_filter = LoGFilter(sigma=sigma, kernel_size=kernel_size, kernel=kernel,
                                    padding=padding)

    @classmethod
    def from_settings(cls, settings) -> Optional["GradientMask"]:
        """The mask an object with ``mask`` (a mode or ``"none"``), ``groups``, ``sigma``,
        ``kernel_size``, ``kernel``, ``padding`` and ``inhibition_rate`` attributes describes (a
        :class:`gradmask.train.TrainConfig`, parsed command-line options); None for ``"none"``."""
        if settings.mask == "none":
            return None
        return cls(groups=settings.groups, sigma=settings.sigma, kernel_size=settings.kernel_size,
                   kernel=settings.kernel, padding=settings.padding, inhibition_rate=settings.inhibition_rate,
                   mode=settings.mask)

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

    def _check(self, grad: torch.Tensor) -> None:
        if not isinstance(grad, torch.Tensor) or grad.dim() != 4 or not grad.is_floating_point():
            shape = tuple(grad.shape) if isinstance(grad, torch.Tensor) else type(grad).__name__
            raise ValueError(f"grad must be a floating-point tensor (N, C, H, W), got {shape}")
        if self.mode != "pixel" and grad.shape[1] % self.groups:
            raise ValueError(f"groups={self.groups} must divide the channel count C={grad.shape[1]}")

    def scores(self, grad: torch.Tensor) -> torch.Tensor:
        """Importance ``|delta|`` (or the norm, for ``mode="norm"``) per sample, set and pixel:
        ``(N, G, H, W)`` with ``G = groups`` (``C`` for ``mode="pixel"``), float32/float64."""
        self._check(grad)
        return self._scores(grad)

    def _scores(self, grad: torch.Tensor) -> torch.Tensor:
        """:meth:`scores` of a ``grad`` that :meth:`_check` has passed."""
        n, c, h, w = grad.shape
        compute = torch.float64 if grad.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            if self.mode == "pixel":
                return self.log_filter(grad, dtype=compute, abs_input=True, abs_output=True)
            sets = grad.reshape(n, self.groups, c // self.groups, h, w)
            squared = sets.to(compute).square().sum(dim=2)  # (N, K, H, W); squares of fp16 overflow
            if self.mode == "norm":
                return squared  # sqrt is monotone: thresholding squared norms selects the same set
            return self.log_filter(squared.sqrt_(), abs_output=True)

    def _sets(self, grad: torch.Tensor) -> int:
        return grad.shape[1] if self.mode == "pixel" else self.groups

    def _kept_scores(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores (N*G, H*W), threshold (N*G, 1))`` of a checked ``grad``: kept positions are
        ``scores > threshold``."""
        score = self._scores(grad)
        n, g, h, w = score.shape
        flat = score.view(n * g, h * w)
        rank = math.floor(self.inhibition_rate * (h * w - 1)) + 1  # 1-based order statistic
        return flat, kth_smallest(flat, rank, nonnegative=True)  # |delta| and norms are >= 0

    def keep_map(self, grad: torch.Tensor) -> torch.Tensor:
        """Compact boolean mask ``(N, G, 1, H, W)``: one ``(H, W)`` mask per sample and set."""
        self._check(grad)
        n, _, h, w = grad.shape
        if self.inhibition_rate == 0.0:  # keeps everything: no scores needed
            return torch.ones(n, self._sets(grad), 1, h, w, dtype=torch.bool, device=grad.device)
        flat, threshold = self._kept_scores(grad)
        return (flat > threshold).view(n, -1, 1, h, w)

    def mask(self, grad: torch.Tensor) -> torch.Tensor:
        """The {0, 1} mask, same shape and dtype as ``grad`` ``(N, C, H, W)``."""
        keep = self.keep_map(grad)
        n, c, h, w = grad.shape
        return keep.to(grad.dtype).expand(n, keep.shape[1], c // keep.shape[1], h, w).reshape(n, c, h, w)

    def apply(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(grad * mask, kept_fraction)``: the masked gradient ``(N, C, H, W)`` and the fraction
        of positions kept, a 0-d float64 tensor on ``grad``'s device (reading it is the caller's
        choice: nothing here waits for the device).

        The hot path of the hooks: the scores become the {0, 1} mask in place (``gt_``), and for
        one mask per channel (``mode="pixel"``) the masked gradient is written into that same
        buffer, so no tensor the size of ``grad`` is allocated besides the scores.
        """
        self._check(grad)
        n, c, h, w = grad.shape
        with torch.no_grad():
            if self.inhibition_rate == 0.0:
                return grad.clone(), torch.ones((), dtype=torch.float64, device=grad.device)
            flat, threshold = self._kept_scores(grad)
            flat.gt_(threshold)  # (N*G, H*W) of 0.0 / 1.0
            # per-row sums are exact integers (< 2**24 per row), their total is summed in float64
            kept_fraction = flat.sum(dim=1).sum(dtype=torch.float64) / flat.numel()
            g = flat.shape[0] // n
            if g == c and flat.dtype == grad.dtype and grad.is_contiguous():
                return flat.view(n, c, h, w).mul_(grad), kept_fraction
            keep = flat.view(n, g, 1, h, w).to(grad.dtype)
            return (grad.reshape(n, g, c // g, h, w) * keep).reshape(n, c, h, w), kept_fraction

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        """The masked gradient ``grad * mask`` ``(N, C, H, W)``."""
        return self.apply(grad)[0]
