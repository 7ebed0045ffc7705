"""Batched augmentation on the training device (no Python loop over images).

All functions take images (N, 3, H, W) as uint8 (0..255) or float (already in
[0, 1]) on any device and return float (N, 3, H, W) in [0, 1] on the same
device.  Randomness comes from an explicit ``torch.Generator``; random values are
drawn on the generator's device and then moved to the images' device, so a CPU
generator gives the same augmentation on CPU and GPU.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["to_float", "sample_crop_flip", "crop_flip", "random_crop_flip", "RandomCropFlip"]

PAD_MODES = ("zeros", "reflect")


def to_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float in [0,1] (divided by 255); float input is only cast."""
    if x.dtype == torch.uint8:
        return x.to(dtype).div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")
    return x.to(dtype)


def as_images(images: torch.Tensor, name: str = "images", check_range: bool = True) -> torch.Tensor:
    """Validated float images ``(N, C, H, W)``: uint8 is divided by 255, float is returned as it is.
    ``check_range``: also reject float values outside [0, 1] (normalisation is the model's first
    layer, not the data's); this reads the min and max back to the host (one sync), so hot loops
    over batches of known-good data pass ``False``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a tensor (N, C, H, W) of images in [0, 1], got {shape}")
    if images.dtype == torch.uint8:
        return to_float(images)
    if not images.is_floating_point():
        raise ValueError(f"{name} must be float images in [0, 1] or uint8, got {images.dtype}")
    if check_range and images.numel():
        low, high = torch.stack(torch.aminmax(images)).tolist()
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(f"{name} must lie in [0, 1] (got values in [{low:.3g}, {high:.3g}]): pass "
                             f"unnormalised images, the model's first layer normalises")
    return images


def sample_crop_flip(
    n: int,
    padding: int,
    *,
    flip: bool = True,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device | str] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random parameters for :func:`crop_flip`: (dy (n,), dx (n,), flips (n,) bool).

    dy/dx in [0, 2*padding] are the crop's top-left corner in the padded image;
    draws happen on ``generator``'s device (CPU if None), results go to ``device``.
    Order of draws: dy, dx, flips.
    """
    gdev = generator.device if generator is not None else torch.device("cpu")
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev)
    if flip:
        flips = torch.rand(n, generator=generator, device=gdev) < 0.5
    else:
        flips = torch.zeros(n, dtype=torch.bool, device=gdev)
    if device is not None:
        dy, dx, flips = dy.to(device), dx.to(device), flips.to(device)
    return dy, dx, flips


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = torch.where(idx < 0, -idx, idx)
    return torch.where(idx >= size, 2 * (size - 1) - idx, idx)


def crop_flip(
    x: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    flips: torch.Tensor,
    padding: int,
    pad_mode: str = "zeros",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Crop (H, W) windows at (dy, dx) from ``x`` padded by ``padding`` on every side
    (zeros, or reflect without repeating the edge, like ``F.pad(mode="reflect")``),
    then mirror horizontally where ``flips``.  One gather, no padded copy.

    x: (N,3,H,W) uint8 or float; dy, dx: int (N,) in [0, 2*padding]; flips: bool (N,).
    Returns float (N,3,H,W) in [0,1], contiguous.
    """
    if x.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    n, _, h, w = x.shape
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if pad_mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding ({padding}) must be smaller than the image ({h}x{w})")
    dev = x.device
    dy, dx, flips = dy.to(dev), dx.to(dev), flips.to(dev)
    rows = dy.view(n, 1) - padding + torch.arange(h, device=dev)  # (N,H) source row per output row
    cols = dx.view(n, 1) - padding + torch.arange(w, device=dev)  # (N,W)
    cols = torch.where(flips.view(n, 1), cols.flip(1), cols)
    valid = None
    if pad_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    elif padding > 0:
        vr = (rows >= 0) & (rows < h)
        vc = (cols >= 0) & (cols < w)
        valid = (vr.view(n, 1, h, 1) & vc.view(n, 1, 1, w))
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    batch = torch.arange(n, device=dev).view(n, 1, 1)
    out = x[batch, :, rows.view(n, h, 1), cols.view(n, 1, w)]  # (N,H,W,C), still uint8 if x is
    out = to_float(out.permute(0, 3, 1, 2), dtype)
    if valid is not None:
        out = out * valid
    return out.contiguous()


def random_crop_flip(
    x: torch.Tensor,
    padding: int = 4,
    *,
    pad_mode: str = "zeros",
    flip: bool = True,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Random crop with ``padding`` and random horizontal flip (p=0.5) of a batch.
    (N,3,H,W) uint8/float -> float (N,3,H,W) in [0,1]."""
    dy, dx, flips = sample_crop_flip(x.shape[0], padding, flip=flip, generator=generator, device=x.device)
    return crop_flip(x, dy, dx, flips, padding, pad_mode, dtype)


class RandomCropFlip:
    """Callable ``aug(x, generator) -> float`` form of :func:`random_crop_flip`, for
    :class:`gradmask.data.loader.TensorLoader`."""

    def __init__(self, padding: int = 4, pad_mode: str = "zeros", flip: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding, self.pad_mode, self.flip, self.dtype = padding, pad_mode, flip, dtype

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return random_crop_flip(x, self.padding, pad_mode=self.pad_mode, flip=self.flip,
                                generator=generator, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, pad_mode={self.pad_mode!r}, flip={self.flip})"
