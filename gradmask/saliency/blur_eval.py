"""Accuracy with a blurred background (Section 3.4, Figure 10): everything outside the object
boxes is replaced by a Gaussian-blurred copy of the image, for a range of blur sigmas; one curve
of accuracy against sigma per model.

The foreground of an image is the union of its boxes (``(x0, y0, x1, y1)``, exclusive ends); its
pixels are left exactly as they are. The blur is :func:`gaussian_blur` of the whole image (reflect
padding, radius ``int(4 sigma + 0.5)``), so the background near a box mixes in object pixels, as
blurring a photograph would; ``sigma = 0`` is the unmodified image.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..data.augment import as_images
from ..models import eval_mode, model_device
from ..util.files import write_atomic
from ..util.reporting import arm_colors, figure, save_figure
from .blur import gaussian_blur
from .evaluate import _batches, _jsonable
from .localization import _per_image

__all__ = ["blur_background", "blurred_background_accuracy", "box_masks", "plot_blur_curves",
           "write_blur_report"]


def box_masks(boxes, height: int, width: int, n: Optional[int] = None) -> torch.Tensor:
    """Bool ``(N, H, W)``: True inside any of an image's boxes. ``boxes``: ``(N, 4)`` or a list of
    per-image ``(4,)`` / ``(k, 4)``; boxes are clipped to the image."""
    items = _per_image(boxes, n, "boxes")
    mask = torch.zeros(len(items), height, width, dtype=torch.bool)
    for i, b in enumerate(items):
        for x0, y0, x1, y1 in b.to(torch.int64).tolist():
            mask[i, max(y0, 0):max(min(y1, height), 0), max(x0, 0):max(min(x1, width), 0)] = True
    return mask


def _check_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"blur sigmas must be finite numbers >= 0, got {sigma!r}")
    return float(sigma)


def blur_background(images: torch.Tensor, boxes, sigma: float) -> torch.Tensor:
    """``images`` (uint8 or [0, 1] float, ``(N, C, H, W)``) as float with every pixel outside the
    boxes taken from ``gaussian_blur(images, sigma)``; ``sigma = 0``: unchanged (as float)."""
    sigma = _check_sigma(sigma)
    x = as_images(images, check_range=False)
    n, _, h, w = x.shape
    if sigma == 0:
        return x.clone() if x is images else x
    keep = box_masks(boxes, h, w, n).to(x.device).unsqueeze(1)
    return torch.where(keep, x, gaussian_blur(x, sigma))


def blurred_background_accuracy(model: nn.Module, images: torch.Tensor, labels, boxes,
                                blur_sigmas: Sequence[float] = (0, 1, 2, 4, 8), batch_size: int = 256,
                                progress: bool = False) -> list[tuple[float, float]]:
    """``[(sigma, accuracy)]``: top-1 accuracy of ``model`` (eval mode, training flags restored)
    on ``images`` with the background outside ``boxes`` blurred by each sigma (Figure 10).

    ``images`` ``(N, 3, H, W)`` uint8 or [0, 1] (left where they are; each batch is blurred on
    the model's device); ``labels`` ``(N,)``; ``boxes`` ``(N, 4)`` or per-image ``(k, 4)``."""
    sigmas = [_check_sigma(s) for s in blur_sigmas]
    if not sigmas:
        raise ValueError("blur_sigmas must not be empty")
    as_images(images[:1] if isinstance(images, torch.Tensor) else images, check_range=False)
    n, _, h, w = images.shape
    if n == 0:
        raise ValueError("images must hold at least one image")
    labels = torch.as_tensor(labels).to(torch.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels must hold one class index per image ({n}), got shape {tuple(labels.shape)}")
    masks = box_masks(boxes, h, w, n)
    device = model_device(model)
    correct = torch.zeros(len(sigmas), dtype=torch.int64)
    with eval_mode(model), torch.no_grad():
        for start in _batches(n, batch_size, progress, "blur-eval"):
            x = as_images(images[start:start + batch_size].to(device), check_range=False)
            keep = masks[start:start + batch_size].to(device).unsqueeze(1)
            y = labels[start:start + batch_size].to(device)
            for j, sigma in enumerate(sigmas):
                xb = x if sigma == 0 else torch.where(keep, x, gaussian_blur(x, sigma))
                correct[j] += int((model(xb).argmax(dim=1) == y).sum())
    return [(s, float(c) / n) for s, c in zip(sigmas, correct.tolist())]


def plot_blur_curves(path: Union[str, os.PathLike], curves: Mapping[str, Sequence[tuple[float, float]]],
                     title: str = "Accuracy with a blurred background (Figure 10)") -> Path:
    """One line per model: accuracy against the background blur sigma."""
    fig = figure(6, 4)
    ax = fig.subplots()
    colors = arm_colors(curves)
    for label, curve in curves.items():
        xs, ys = zip(*curve) if curve else ((), ())
        ax.plot(xs, ys, marker="o", color=colors[label], label=label)
    ax.set_xlabel("background blur sigma (pixels)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def write_blur_report(out_dir: Union[str, os.PathLike], curves: Mapping[str, Sequence[tuple[float, float]]],
                      setting: Union[str, Mapping]) -> dict:
    """``blur.json``, ``blur.md`` (a table: sigma x model) and ``blur.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setting_map = {"setting": setting} if isinstance(setting, str) else dict(setting)
    data = {"setting": setting_map,
            "curves": {k: [{"sigma": s, "accuracy": a} for s, a in v] for k, v in curves.items()}}
    json_path = out / "blur.json"
    write_atomic(json_path, json.dumps(_jsonable(data), indent=2) + "\n")
    png = plot_blur_curves(out / "blur.png", curves)
    names = list(curves)
    sigmas = sorted({s for v in curves.values() for s, _ in v})
    lines = ["# Accuracy with a blurred background (Figure 10)", ""]
    lines += [f"- {k}: {v}" for k, v in setting_map.items()]
    lines += ["- pixels outside the object boxes replaced by a Gaussian blur of the image (sigma in pixels)", "",
              "| sigma | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in sigmas:
        cells = [next((f"{a:.4f}" for t, a in curves[m] if t == s), "") for m in names]
        lines.append(f"| {s:g} | " + " | ".join(cells) + " |")
    lines += ["", "![accuracy against blur](blur.png)", ""]
    md = out / "blur.md"
    write_atomic(md, "\n".join(lines))
    return {"markdown": md, "json": json_path, "figure": png}
