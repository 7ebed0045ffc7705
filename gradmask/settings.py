"""The mask's settings and their defaults, in one place: :class:`MaskSettings`.

:class:`gradmask.GradientMask`, :class:`gradmask.LoGFilter`, LI-Map and the LI background blur
take their defaults from :data:`DEFAULTS`; ``TrainConfig.mask_settings`` is one (its ``groups``: the
model's, :func:`gradmask.models.model_groups`), and the command-line options
(:func:`gradmask.cli.options.add_mask_arguments`) are generated from the fields below with their help
text. Plain Python: no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

MODES = ("lateral", "norm", "pixel")
MASK_MODES = ("none", *MODES)  # the choices of a `mask` setting: no mask, or a mode
KERNELS = ("log", "authors")
PADDINGS = ("reflect", "zero")


def check_log_settings(sigma, kernel_size, kernel, padding) -> None:
    """ValueError naming the first bad LoG setting and its accepted range."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if kernel_size is not None and (isinstance(kernel_size, bool) or not isinstance(kernel_size, int)
                                    or kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"kernel_size must be an odd integer >= 1 or None (the full 2*ceil(3 sigma)+1 window), "
                         f"got {kernel_size!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def check_inhibition_rate(value) -> float:
    """``value`` as a float in [0, 1), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value < 1.0):
        raise ValueError(f"inhibition_rate must be in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class MaskSettings:
    """What a gradient mask is (Algorithm 1, eq. 2): validated on construction, immutable.

    The defaults are the paper's: K=16 channel sets on ResNet-18 (4/8/16 channels per set at
    layers 1-3), the authors' LoG (sigma 11 on a 5x5 window, reflect padding), q=0.5."""

    groups: int = field(default=16, metadata={
        "help": "channel sets K (must divide the channels of every target; the paper: 16 on ResNet-18, "
                "i.e. 4/8/16 channels per set)"})
    sigma: float = field(default=11.0, metadata={"help": "LoG sigma (eq. 2)"})
    kernel_size: Optional[int] = field(default=5, metadata={
        "help": "odd LoG window, or 'full' for 2*ceil(3 sigma)+1"})
    kernel: str = field(default="log", metadata={
        "help": "LoG window: eq. (2), or the authors' (scipy's gaussian_laplace)", "choices": KERNELS})
    padding: str = field(default="reflect", metadata={"help": "LoG border handling", "choices": PADDINGS})
    inhibition_rate: float = field(default=0.5, metadata={
        "help": "quantile q in [0, 1): positions below the q-quantile of each map are masked"})
    mode: str = field(default="lateral", metadata={
        "help": "lateral (Algorithm 1), norm or pixel (the Table 2 ablations)", "choices": MODES})

    def __post_init__(self) -> None:
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f"groups must be an integer >= 1, got {self.groups!r}")
        check_log_settings(self.sigma, self.kernel_size, self.kernel, self.padding)
        check_inhibition_rate(self.inhibition_rate)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @classmethod
    def of(cls, settings: Any) -> Optional["MaskSettings"]:
        """The settings an object with ``mask`` (a mode or ``"none"``) and the other fields'
        attributes describes (parsed command-line options); None for "none"."""
        if settings.mask == "none":
            return None
        return cls(mode=settings.mask, **{f.name: getattr(settings, f.name) for f in fields(cls) if f.name != "mode"})


DEFAULTS = MaskSettings()

__all__ = ["DEFAULTS", "KERNELS", "MASK_MODES", "MODES", "MaskSettings", "PADDINGS", "check_inhibition_rate",
           "check_log_settings"]
