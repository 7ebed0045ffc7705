"""Data enhancement with lateral inhibition (Section 3.4, Algorithm 2): blur the background that
LI-Map does not mark as important, on a random share of each batch."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..laplacian import LoGFilter
from ..selection import kth_smallest
from ..settings import DEFAULTS
from .limap import LIMap


def gaussian_kernel1d(sigma: float, radius: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``(2 radius + 1,)``."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def gaussian_blur(images: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` per channel, reflect padding (mirror without
    repeating the edge, scipy's ``mode="mirror"``), radius ``int(truncate * sigma + 0.5)`` (scipy's
    rule) shrunk to ``side - 1`` where the image is smaller. Computed in float32 (float64 for
    float64 input), returned in the input's dtype."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor (N, C, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"blur_sigma must be a finite number > 0, got {sigma!r}")
    n, c, h, w = images.shape
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.to(dtype).reshape(n * c, 1, h, w)
    radius = int(truncate * sigma + 0.5)
    ry, rx = min(radius, h - 1), min(radius, w - 1)
    if rx:
        x = F.conv2d(F.pad(x, (rx, rx, 0, 0), mode="reflect"),
                     gaussian_kernel1d(sigma, rx, dtype, x.device).view(1, 1, 1, -1))
    if ry:
        x = F.conv2d(F.pad(x, (0, 0, ry, ry), mode="reflect"),
                     gaussian_kernel1d(sigma, ry, dtype, x.device).view(1, 1, -1, 1))
    return x.view(n, c, h, w).to(images.dtype)


class BlurResult(NamedTuple):
    """``images`` (N, C, H, W): the augmented batch; ``selected`` bool (N,): the images whose
    background was blurred; ``keep`` bool (N, H, W): the LI mask (True = kept sharp; all True
    for images not selected)."""

    images: torch.Tensor
    selected: torch.Tensor
    keep: torch.Tensor


class LIBackgroundBlur:
    """Algorithm 2: on a random ``rate`` share of the batch, replace the pixels lateral inhibition
    marks unimportant by a Gaussian-blurred copy of the image: ``aug(images, labels)`` takes images
    ``(N, C, H, W)`` in [0, 1] and labels ``(N,)`` and returns a new ``(N, C, H, W)`` batch.

    Per selected image: ``F = sum_l |LoG(||dP/dA^l||_2)|`` over the activation layers (the LI-Map
    of :class:`~gradmask.saliency.LIMap` before min-max normalisation, K = 1, ``P`` the logit of the
    image's label, or of the predicted class without labels), resized bilinearly to the input
    (eq. 21-23); ``Q`` its ``quantile`` per image (eq. 24); kept where ``|F| > Q`` (eq. 25,
    threshold as the Gradient Mask's: ``torch.quantile`` semantics, ``quantile=0`` keeps every
    pixel); the other pixels take the values of ``gaussian_blur(image, blur_sigma)``.

    The share is ``rate * N`` images per batch, chosen uniformly (``floor(rate N)`` plus one more
    with probability ``frac(rate N)``, so the expected share is ``rate`` for any batch size), from
    ``generator`` (call argument), else the generator seeded by ``seed``, else torch's global RNG.
    Only the selected images go through the model.

    ``aug(images, labels=None, model=None) -> images`` (also ``aug.augment(...)``): ``model`` given
    at call time (the model being trained) overrides the one given at construction. The model
    runs in eval mode for the map (BatchNorm statistics untouched) and gets its per-module
    training flags back; parameters' ``.grad`` and ``requires_grad`` are not touched and no hook
    stays. Note: Gradient Mask hooks attached to the same model (``gradmask.attach``) also act on
    this backward pass; set ``handle.enabled = False`` around the call to get the plain LI-Map.
    """

    def __init__(self, model: Optional[nn.Module] = None, rate: float = 0.5, quantile: float = 0.5,
                 blur_sigma: float = 2.0, sigma: float = DEFAULTS.sigma,
                 kernel_size: Optional[int] = DEFAULTS.kernel_size, target_layers=None,
                 kernel: str = DEFAULTS.kernel, padding: str = DEFAULTS.padding,
                 seed: Optional[int] = None):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate!r}")
        if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 <= quantile < 1.0:
            raise ValueError(f"quantile must be in [0, 1), got {quantile!r}")
        if (isinstance(blur_sigma, bool) or not isinstance(blur_sigma, (int, float))
                or not math.isfinite(blur_sigma) or blur_sigma <= 0):
            raise ValueError(f"blur_sigma must be a finite number > 0, got {blur_sigma!r}")
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        self.rate = float(rate)
        self.quantile = float(quantile)
        self.blur_sigma = float(blur_sigma)
        self._limap_args = dict(target_layers=target_layers, sigma=sigma, kernel_size=kernel_size,
                                padding=padding, kernel=kernel)
        self.model = model
        self._limap: Optional[LIMap] = None
        self._limap_model: Optional[nn.Module] = None
        if model is not None:
            self._limap_for(model)  # validates target_layers and the LoG arguments now
        else:
            LoGFilter(sigma=sigma, kernel_size=kernel_size, kernel=kernel, padding=padding)  # validates
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def _limap_for(self, model: nn.Module) -> LIMap:
        if self._limap is None or self._limap_model is not model:
            self._limap = LIMap(model, **self._limap_args)
            self._limap_model = model
        return self._limap

    def select(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Bool ``(n,)``: which images of a batch of ``n`` get a blurred background."""
        generator = generator if generator is not None else self.generator
        expected = self.rate * n
        count = math.floor(expected)
        if expected - count > 0 and torch.rand((), generator=generator).item() < expected - count:
            count += 1
        selected = torch.zeros(n, dtype=torch.bool)
        if count:
            selected[torch.randperm(n, generator=generator)[:count]] = True
        return selected

    def keep_mask(self, images: torch.Tensor, labels=None, model: Optional[nn.Module] = None) -> torch.Tensor:
        """Bool ``(N, H, W)``: ``|F| > Q`` per image (eq. 24-25), True = important (kept sharp)."""
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("model: LIBackgroundBlur needs a model, at construction or at call time")
        field = self._limap_for(model).attribute(images, labels).abs_()  # (N, H, W)
        n, h, w = field.shape
        if self.quantile == 0.0:
            return torch.ones(n, h, w, dtype=torch.bool, device=field.device)
        flat = field.view(n, h * w)
        threshold = kth_smallest(flat, math.floor(self.quantile * (h * w - 1)) + 1).to(flat.device)
        return (flat > threshold).view(n, h, w)

    def apply(self, images: torch.Tensor, labels=None, model: Optional[nn.Module] = None,
              generator: Optional[torch.Generator] = None) -> BlurResult:
        """The augmented batch with the selection and the masks (see :class:`BlurResult`)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a floating-point tensor (N, C, H, W), got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        n, _, h, w = images.shape
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != (n,):
                raise ValueError(f"labels must hold one class index per image ({n}), got shape "
                                 f"{tuple(labels.shape)}")
        selected = self.select(n, generator)
        keep = torch.ones(n, h, w, dtype=torch.bool, device=images.device)
        out = images.detach().clone()
        index = selected.nonzero().squeeze(1).to(images.device)
        if len(index):
            part = out[index]
            part_keep = self.keep_mask(part, None if labels is None else labels.to(images.device)[index], model)
            blurred = gaussian_blur(part, self.blur_sigma)
            out[index] = torch.where(part_keep.unsqueeze(1), part, blurred)
            keep[index] = part_keep
        return BlurResult(out, selected.to(images.device), keep)

    def __call__(self, images: torch.Tensor, labels=None, model: Optional[nn.Module] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The augmented batch ``(N, C, H, W)`` (a new tensor, same dtype)."""
        return self.apply(images, labels, model, generator).images

    augment = __call__

    def __repr__(self) -> str:
        return (f"LIBackgroundBlur(rate={self.rate}, quantile={self.quantile}, "
                f"blur_sigma={self.blur_sigma}, {self._limap_args})")
