"""A slow, obviously-correct Gradient Mask for the mask tests: one sample and one set at a time, in
float64, the LoG as ``conv2d`` with the 2-D kernel built independently of gradmask, the threshold
read from the sorted scores, and the documented rules for ties and non-finite gradients."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from gradmask import GradientMask


def reference_kernel(kernel: str, sigma: float, size: int) -> torch.Tensor:
    """The ``size x size`` float64 kernel: eq. (2) sampled, or scipy's LoG of an impulse."""
    r = size // 2
    if kernel == "authors":
        impulse = np.zeros((size, size))
        impulse[r, r] = 1
        return torch.from_numpy(ndimage.gaussian_laplace(impulse, sigma))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    d2 = (x**2 + y**2) / (2 * sigma**2)
    return torch.from_numpy(-1 / (math.pi * sigma**4) * (1 - d2) * np.exp(-d2))


def reference_mask(grad: torch.Tensor, groups: int, mode: str, rate: float, kernel: str = "log",
                   padding: str = "reflect", sigma: float = 11.0, size: int = 5):
    """``(keep (N, G, H, W) bool, scores (N, G, H, W), thresholds (N, G))``, float64.

    Per sample and set: a minicolumn (``pixel``: a value) holding a non-finite gradient is read as 0
    and scores +inf; the score is the norm (``norm``), or ``|LoG|`` of the norms (``lateral``) or of
    ``|g|`` (``pixel``); the threshold is the ``floor(rate (n - 1)) + 1``-th smallest score; kept:
    scores above it, or, when none is (it is the maximum), the scores equal to it; rate 0 keeps all.
    """
    k2 = reference_kernel(kernel, sigma, size).double()
    n, c, h, w = grad.shape
    sets = c if mode == "pixel" else groups
    per = c // sets
    keep = torch.empty(n, sets, h, w, dtype=torch.bool)
    scores = torch.empty(n, sets, h, w, dtype=torch.float64)
    thresholds = torch.empty(n, sets, dtype=torch.float64)
    for i in range(n):
        for s in range(sets):
            block = grad[i, s * per:(s + 1) * per].double()
            finite = torch.isfinite(block)
            bad = ~finite.all(dim=0)
            clean = torch.where(finite, block, torch.zeros(()))
            d = clean.abs()[0] if mode == "pixel" else clean.square().sum(dim=0).sqrt()
            d = d.masked_fill(bad, 0.0)
            if mode == "norm":
                delta = d
            else:
                x = F.pad(d[None, None], (size // 2,) * 4, mode="reflect" if padding == "reflect" else "constant")
                delta = F.conv2d(x, k2[None, None])[0, 0].abs()
            delta = delta.masked_fill(bad, math.inf)
            ordered = delta.flatten().sort().values
            threshold = ordered[math.floor(rate * (h * w - 1))]
            if rate == 0:
                kept = torch.ones_like(delta, dtype=torch.bool)
            elif ordered[-1] > threshold:
                kept = delta > threshold
            else:
                kept = delta >= threshold
            keep[i, s], scores[i, s], thresholds[i, s] = kept, delta, threshold
    return keep, scores, thresholds


def assert_agrees_except_near_ties(keep: torch.Tensor, reference, rtol: float = 1e-5) -> None:
    """``keep`` ``(N, G, H, W)`` equals the reference's, except at positions whose reference score is
    within ``rtol`` of the threshold (float32 against float64 rounding)."""
    ref_keep, scores, thresholds = reference
    differ = keep != ref_keep
    if not differ.any():
        return
    threshold = thresholds[..., None, None].expand_as(scores)
    gap = (scores - threshold).abs()
    near = gap <= rtol * threshold.abs() + 1e-30
    assert bool(near[differ].all()), (differ.nonzero()[:5].tolist(), gap[differ][:5].tolist())


class RecordingMask(GradientMask):
    """A GradientMask that keeps every gradient it saw and every compact mask it made."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def apply(self, grad):
        self.seen.append((grad.detach().clone(), self.keep_map(grad)))
        return super().apply(grad)


def grads(model):
    """The parameter gradients of ``model``, detached copies by name."""
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def run_step(model, x, y):
    """One cross-entropy backward from zeroed gradients; returns ``grads(model)``."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return grads(model)
