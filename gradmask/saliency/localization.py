"""The localisation measure of Table 3: the box spanned by the top 15 % of a saliency map, and its
IoU with the ground-truth box.

Boxes are ``(x0, y0, x1, y1)`` in integer pixels with ``x1`` / ``y1`` exclusive (the convention of
:mod:`gradmask.data.synthetic`): a box covers columns ``x0 .. x1-1`` and rows ``y0 .. y1-1`` and
its area is ``(x1 - x0) * (y1 - y0)``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

Boxes = Union[torch.Tensor, Sequence]


def _check_fraction(top_fraction) -> float:
    if (isinstance(top_fraction, bool) or not isinstance(top_fraction, (int, float))
            or not (0.0 < top_fraction <= 1.0)):
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    return float(top_fraction)


def top_count(top_fraction: float, pixels: int) -> int:
    """How many pixels ``top_fraction`` of ``pixels`` keeps: ``ceil(top_fraction * pixels)``
    (at least one; a float error of 1e-9 does not add a pixel)."""
    return max(1, math.ceil(_check_fraction(top_fraction) * pixels - 1e-9))


def _check_maps(maps: torch.Tensor, dims: int) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != dims or not maps.is_floating_point():
        got = f"{tuple(maps.shape)} {maps.dtype}" if isinstance(maps, torch.Tensor) else type(maps).__name__
        shape = "(H, W)" if dims == 2 else "(N, H, W)"
        raise ValueError(f"maps must be a floating-point tensor {shape}, got {got}")
    if maps.shape[-1] < 1 or maps.shape[-2] < 1:
        raise ValueError(f"maps must have H, W >= 1, got {tuple(maps.shape)}")
    if torch.isnan(maps).any():
        raise ValueError("maps must not contain NaN")


def saliency_boxes(maps: torch.Tensor, top_fraction: float = 0.15) -> torch.Tensor:
    """``(N, H, W)`` maps -> ``(N, 4)`` int64 boxes spanned by each map's top pixels.

    The top ``ceil(top_fraction * H * W)`` pixels are kept; pixels tied with the last kept value
    are all kept (deterministic: a constant map gives the whole image)."""
    _check_maps(maps, 3)
    n, h, w = maps.shape
    k = top_count(top_fraction, h * w)
    flat = maps.detach().reshape(n, h * w)
    if n == 0:
        return torch.empty(0, 4, dtype=torch.int64, device=maps.device)
    threshold = flat.topk(k, dim=1).values[:, -1:]
    keep = (flat >= threshold).view(n, h, w)
    cols, rows = keep.any(dim=1), keep.any(dim=2)  # (N, W), (N, H)
    x0 = cols.int().argmax(dim=1)
    x1 = w - cols.flip(1).int().argmax(dim=1)
    y0 = rows.int().argmax(dim=1)
    y1 = h - rows.flip(1).int().argmax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1).to(torch.int64)


def saliency_box(map: torch.Tensor, top_fraction: float = 0.15) -> tuple[int, int, int, int]:
    """``(H, W)`` map -> ``(x0, y0, x1, y1)`` (ints, exclusive ends) of its top pixels."""
    _check_maps(map, 2)
    return tuple(int(v) for v in saliency_boxes(map.unsqueeze(0), top_fraction)[0])


def _as_boxes(boxes, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(boxes)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be boxes (..., 4) (x0, y0, x1, y1), got {boxes!r}") from exc
    if t.dim() == 0 or t.shape[-1] != 4 or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must be boxes (..., 4) (x0, y0, x1, y1), got shape {tuple(t.shape)}")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name} must have finite coordinates")
    if ((t[..., 2] <= t[..., 0]) | (t[..., 3] <= t[..., 1])).any():
        raise ValueError(f"{name} must have positive area (x1 > x0 and y1 > y0, ends exclusive), "
                         f"got {t.tolist()}")
    return t


def _check_inside(boxes: torch.Tensor, height: int, width: int, name: str) -> None:
    outside = ((boxes[..., 0] < 0) | (boxes[..., 1] < 0) | (boxes[..., 2] > width)
               | (boxes[..., 3] > height))
    if outside.any():
        raise ValueError(f"{name} must lie inside the {height}x{width} image "
                         f"(0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height}), got "
                         f"{boxes[outside].tolist()}")


def _area(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def box_iou(a: Boxes, b: Boxes) -> Union[float, torch.Tensor]:
    """Intersection over union of boxes ``(..., 4)`` (broadcast). Two single boxes give a
    float, batches a float64 tensor. Zero-area boxes are a ``ValueError``."""
    ta = _as_boxes(a, "a").to(torch.float64)
    tb = _as_boxes(b, "b").to(torch.float64)
    ta, tb = torch.broadcast_tensors(ta, tb.to(ta.device))
    iw = (torch.minimum(ta[..., 2], tb[..., 2]) - torch.maximum(ta[..., 0], tb[..., 0])).clamp_min(0)
    ih = (torch.minimum(ta[..., 3], tb[..., 3]) - torch.maximum(ta[..., 1], tb[..., 1])).clamp_min(0)
    inter = iw * ih
    iou = inter / (_area(ta) + _area(tb) - inter)
    return iou.item() if iou.dim() == 0 else iou


def _per_image(boxes, n: Optional[int], name: str) -> list[torch.Tensor]:
    """Boxes as one ``(k_i, 4)`` tensor per image from ``(N, 4)`` or a list of ``(4,)``/``(k, 4)``."""
    if isinstance(boxes, torch.Tensor) and boxes.dim() == 2:
        items = list(_as_boxes(boxes, name).view(-1, 1, 4)) if len(boxes) else []
    elif isinstance(boxes, (list, tuple)):
        items = [_as_boxes(b, name).reshape(-1, 4) for b in boxes]
    else:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"{name} must be an (N, 4) tensor or a list of per-image boxes, got {shape}")
    if any(len(b) == 0 for b in items):
        raise ValueError(f"{name}: every image needs at least one box")
    if n is not None and len(items) != n:
        raise ValueError(f"{name} must hold boxes for {n} images, got {len(items)}")
    return items


def _image_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in image_size)):
        raise ValueError(f"image_size must be an int or (H, W) of ints >= 1, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def localization_scores(maps: torch.Tensor, boxes: Boxes, top_fraction: float = 0.15) -> dict:
    """Table 3's measure: IoU between each map's top-``top_fraction`` box and its ground truth.

    Args:
        maps: ``(N, H, W)`` saliency maps (any scale: only the ranking matters).
        boxes: ``(N, 4)`` ground-truth boxes, or a list with one ``(4,)`` / ``(k, 4)`` per image;
            an image with several boxes scores its best IoU (use :func:`select_images` with
            ``single_object=True`` to evaluate only single-object images, as the paper's setup).
        top_fraction: share of pixels forming the box (paper: 0.15).

    Returns ``{"mean_iou": float, "frac_iou_ge_05": float, "ious": float64 tensor (N,)}``
    (NaN means for ``N = 0``).
    """
    _check_maps(maps, 3)
    n, h, w = maps.shape
    predicted = saliency_boxes(maps, top_fraction).cpu()
    if isinstance(boxes, torch.Tensor) and boxes.dim() == 2:  # one box per image: vectorised
        gt = _as_boxes(boxes, "boxes").cpu()
        if len(gt) != n:
            raise ValueError(f"boxes must hold boxes for {n} images, got {len(gt)}")
        _check_inside(gt, h, w, "boxes")
        ious = box_iou(predicted, gt) if n else torch.empty(0, dtype=torch.float64)
    else:
        gt = _per_image(boxes, n, "boxes")
        for b in gt:
            _check_inside(b, h, w, "boxes")
        ious = torch.tensor([box_iou(p.view(1, 4), g.cpu()).max().item()
                             for p, g in zip(predicted, gt)], dtype=torch.float64)
    if n == 0:
        return {"mean_iou": float("nan"), "frac_iou_ge_05": float("nan"), "ious": ious}
    return {"mean_iou": ious.mean().item(), "frac_iou_ge_05": (ious >= 0.5).double().mean().item(),
            "ious": ious}


def select_images(boxes: Boxes, image_size, single_object: bool = True,
                  max_box_fraction: Optional[float] = 0.5,
                  correct_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The images kept for the localisation evaluation, as a bool tensor ``(N,)``.

    Args:
        boxes: ``(N, 4)`` or a list with one ``(4,)`` / ``(k, 4)`` per image.
        image_size (int | tuple[int, int]): ``H`` (square) or ``(H, W)``; every box must lie inside.
        single_object: keep only images with exactly one box.
        max_box_fraction: keep only images whose (largest) box covers at most this share of the
            image (a box filling the image scores a high IoU for any map); ``None``: no limit.
        correct_mask: bool ``(N,)``, e.g. ``predictions == labels``: keep only those images.
    """
    height, width = _image_size(image_size)
    if max_box_fraction is not None and (isinstance(max_box_fraction, bool)
                                         or not isinstance(max_box_fraction, (int, float))
                                         or not (0.0 < max_box_fraction <= 1.0)):
        raise ValueError(f"max_box_fraction must be in (0, 1] or None, got {max_box_fraction!r}")
    items = _per_image(boxes, None, "boxes")
    for b in items:
        _check_inside(b, height, width, "boxes")
    keep = torch.ones(len(items), dtype=torch.bool)
    if single_object:
        keep &= torch.tensor([len(b) == 1 for b in items], dtype=torch.bool)
    if max_box_fraction is not None and items:
        largest = torch.tensor([_area(b.to(torch.float64)).max().item() for b in items])
        keep &= largest <= max_box_fraction * height * width
    if correct_mask is not None:
        correct = torch.as_tensor(correct_mask)
        if correct.dtype != torch.bool or correct.shape != (len(items),):
            raise ValueError(f"correct_mask must be a bool tensor ({len(items)},), got "
                             f"{tuple(correct.shape)} {correct.dtype}")
        keep &= correct.cpu()
    return keep
