"""The localisation benchmark of Table 3: LI-Map, Grad-CAM and Grad-CAM++ on images with boxes,
the figure grid (image, box, one panel per method) and the report (``localization.md`` / ``.json``).

The measure (Section 3.2): the box spanned by the top ``top_fraction`` (15 %) of a map's pixels,
IoU with the object's box (:func:`~gradmask.saliency.localization_scores`). Images are filtered as
the authors did (:func:`~gradmask.saliency.select_images`): one object per image, its box at most
half the image, and the model classifying the image correctly. The map is taken for the image's
label (equal to the prediction under ``correct_only``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..data.augment import as_images
from ..hooks import residual_blocks
from ..models import eval_mode, model_device
from ..util.files import write_atomic
from ..util.reporting import SEQUENTIAL_CMAP, figure, save_figure
from . import gradcam, limap  # noqa: F401  (register "gradcam", "gradcam++", "limap")
from .base import SALIENCY_METHODS, SaliencyMethod, unwrap_model
from .localization import _per_image, box_iou, localization_scores, saliency_boxes, select_images

TRUTH_BOX = "white"        # the object's box on every panel
PREDICTED_BOX = "#E69F00"  # the top pixels' box (Okabe-Ito orange), dashed

__all__ = ["METHODS", "PAPER_TABLE3", "check_classes", "default_cam_layer", "evaluate_localization", "make_method",
           "predict", "save_figure_grid", "write_localization_report"]

#: The methods of Table 3 (the default set), by their registered names (SALIENCY_METHODS).
METHODS = ("limap", "gradcam", "gradcam++")
#: Table 3 of the paper (mean IoU), for the report.
PAPER_TABLE3 = {"PASCAL VOC 2007": {"gradcam": 0.44, "gradcam++": 0.45, "limap": 0.50},
                "ImageNet": {"gradcam": 0.46, "gradcam++": 0.46, "limap": 0.49}}
_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256, progress: bool = False,
            desc: str = "predict") -> torch.Tensor:
    """Predicted classes ``(N,)`` (int64, CPU) in eval mode, batched; images uint8 or [0, 1]."""
    device = model_device(model)
    out = []
    with eval_mode(model), torch.no_grad():
        for start in _batches(len(images), batch_size, progress, desc):
            x = as_images(images[start:start + batch_size].to(device), check_range=False)
            out.append(model(x).argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def _batches(n: int, batch_size: int, progress: bool, desc: str):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm
        return tqdm(starts, desc=desc, unit="batch", leave=False)
    return starts


def default_cam_layer(model: nn.Module, images: Optional[torch.Tensor] = None) -> str:
    """The Grad-CAM target: the output of the last residual stage.

    Found by structure first: the last residual block (the project's ``BasicBlock`` /
    ``Bottleneck``, torchvision / timm-shaped blocks, registered classes); when it is the last
    child of an ``nn.Sequential`` / ``nn.ModuleList`` stage, the stage's name (``"layer4"``, or
    ``"model.layer4"`` for a wrapped torchvision ResNet: the same tensor), else the block's name.
    A model without residual blocks is probed with one forward of ``images[:1]`` in eval mode:
    the last module (not the model itself, not a pooling layer) to finish with a 4-D output.
    """
    model = unwrap_model(model)
    blocks = residual_blocks(model)
    if blocks:
        last = list(blocks)[-1]
        parent_name, _, child = last.rpartition(".")
        if parent_name:
            parent = model.get_submodule(parent_name)
            if isinstance(parent, (nn.Sequential, nn.ModuleList)) and list(parent._modules)[-1] == child:
                return parent_name
        return last
    if images is None:
        raise ValueError(f"target_layer: {type(model).__name__} has no residual blocks; pass "
                         f"target_layer=<module name> (or images to probe the model with)")
    finished: list[str] = []

    def hook_for(name):
        def hook(module, inputs, output):
            if (isinstance(output, torch.Tensor) and output.dim() == 4 and output.is_floating_point()
                    and not isinstance(module, _POOLING)):
                finished.append(name)
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules() if n]
    try:
        with eval_mode(model), torch.no_grad():
            model(as_images(images[:1].to(model_device(model)), check_range=False))
    finally:
        for h in handles:
            h.remove()
    if not finished:
        raise ValueError(f"target_layer: no module of {type(model).__name__} outputs a 4-D map; "
                         f"pass target_layer=<module name>")
    return finished[-1]


def make_method(name: str, model: nn.Module, target_layer: Optional[Union[str, nn.Module]] = None,
                images: Optional[torch.Tensor] = None) -> SaliencyMethod:
    """The registered method ``name`` (:data:`~gradmask.saliency.base.SALIENCY_METHODS`):
    ``"limap"`` -> :class:`LIMap` (every ReLU), ``"gradcam"`` / ``"gradcam++"`` -> Grad-CAM /
    Grad-CAM++ on ``target_layer`` (default :func:`default_cam_layer`)."""
    if name not in SALIENCY_METHODS:
        raise ValueError(f"method must be one of {sorted(SALIENCY_METHODS)}, got {name!r}")
    entry = SALIENCY_METHODS[name]
    layer = target_layer
    if entry.needs_layer and layer is None:
        layer = default_cam_layer(model, images)
    return entry.factory(model, layer)


def _check_fraction(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1]{' or None' if allow_none else ''}, got {value!r}")


def evaluate_localization(model: nn.Module, images: torch.Tensor, labels, boxes,
                          methods: Union[Sequence[str], Mapping[str, Callable]] = METHODS,
                          top_fraction: float = 0.15, single_object: bool = True,
                          max_box_fraction: Optional[float] = 0.5, correct_only: bool = True,
                          batch_size: int = 64, target_layer: Optional[Union[str, nn.Module]] = None,
                          targets: str = "label", return_maps: bool = False,
                          progress: bool = False) -> dict:
    """Table 3 on ``images`` with ``boxes``: per method, the IoU of the top-``top_fraction`` box.

    Args:
        model: images in [0, 1] -> logits; evaluated in eval mode on its own device (training
            flags restored, weights and ``.grad`` untouched).
        images: ``(N, 3, H, W)`` uint8 or float in [0, 1] (kept where they are; batches move).
        labels: ``(N,)`` class indices.
        boxes: ``(N, 4)`` or a list of per-image ``(4,)`` / ``(k, 4)`` boxes, ``(x0, y0, x1, y1)``
            with exclusive ends.
        methods: names from :data:`METHODS`, or a mapping name -> ``fn(images, targets) -> (n, H,
            W)`` (e.g. a :class:`~gradmask.saliency.SaliencyMethod`).
        top_fraction: share of pixels forming the saliency box (paper: 0.15).
        single_object / max_box_fraction / correct_only: the image filters of
            :func:`~gradmask.saliency.select_images` (one box; largest box <= that share of the
            image; predicted == label).
        batch_size: images per saliency forward/backward.
        target_layer: Grad-CAM(++) layer (default :func:`default_cam_layer`).
        targets: ``"label"`` (default) or ``"predicted"``: the class whose logit is explained.
        return_maps: also return the maps of the evaluated images (``"maps"``, CPU float32).

    Returns a dict: ``methods`` {name: {``mean_iou``, ``frac_iou_ge_05``, ``n``}} (NaN means when
    no image passes), ``n_images``, ``n_correct``, ``accuracy``, ``n_evaluated``, ``excluded``
    (images failing each filter; one image can fail several), ``index`` (the evaluated images'
    positions), ``ious`` {name: list}, ``settings``; and ``maps`` with ``return_maps``.
    """
    # validates shape and dtype; each batch is converted on its own below
    as_images(images[:1] if isinstance(images, torch.Tensor) else images, check_range=False)
    n, _, h, w = images.shape
    labels = torch.as_tensor(labels).to(torch.int64).cpu()
    if labels.shape != (n,):
        raise ValueError(f"labels must hold one class index per image ({n}), got shape {tuple(labels.shape)}")
    per_image = _per_image(boxes, n, "boxes")
    _check_fraction("top_fraction", top_fraction)
    _check_fraction("max_box_fraction", max_box_fraction, allow_none=True)
    if targets not in ("label", "predicted"):
        raise ValueError(f"targets must be 'label' or 'predicted', got {targets!r}")
    if isinstance(methods, Mapping):
        method_fns = dict(methods)
    else:
        if isinstance(methods, str):
            methods = [methods]
        unknown = [m for m in methods if m not in SALIENCY_METHODS]
        if unknown or not methods:
            raise ValueError(f"methods must be a non-empty subset of {sorted(SALIENCY_METHODS)}, "
                             f"got {list(methods)}")
        method_fns = {m: make_method(m, model, target_layer, images) for m in methods}

    predictions = predict(model, images, max(batch_size, 1), progress, "predict")
    correct = predictions == labels
    keep = select_images(per_image, (h, w), single_object=single_object, max_box_fraction=max_box_fraction,
                         correct_mask=correct if correct_only else None)
    index = keep.nonzero().flatten()
    excluded = {
        "multiple_objects": int(sum(len(b) > 1 for b in per_image)) if single_object else 0,
        "large_box": int((~select_images(per_image, (h, w), single_object=False,
                                         max_box_fraction=max_box_fraction)).sum()) if max_box_fraction else 0,
        "misclassified": int((~correct).sum()) if correct_only else 0,
    }
    chosen = (labels if targets == "label" else predictions)[index]
    gt = [per_image[i] for i in index.tolist()]
    device = model_device(model)
    results: dict[str, dict] = {}
    ious: dict[str, list] = {}
    maps_out: dict[str, torch.Tensor] = {}
    for name, fn in method_fns.items():
        parts = []
        for start in _batches(len(index), batch_size, progress, name):
            pick = index[start:start + batch_size]
            x = as_images(images[pick].to(device), check_range=False)
            parts.append(fn(x, chosen[start:start + batch_size].to(device)).detach().float().cpu())
        if parts:
            maps = torch.cat(parts)
            scores = localization_scores(maps, gt, top_fraction)
            results[name] = {"mean_iou": scores["mean_iou"], "frac_iou_ge_05": scores["frac_iou_ge_05"],
                             "n": len(index)}
            ious[name] = scores["ious"].tolist()
        else:
            maps = torch.empty(0, h, w)
            results[name] = {"mean_iou": math.nan, "frac_iou_ge_05": math.nan, "n": 0}
            ious[name] = []
        if return_maps:
            maps_out[name] = maps
    out = {
        "methods": results,
        "n_images": n,
        "n_correct": int(correct.sum()),
        "accuracy": float(correct.double().mean()) if n else math.nan,
        "n_evaluated": len(index),
        "excluded": excluded,
        "index": index.tolist(),
        "ious": ious,
        "settings": {"top_fraction": top_fraction, "single_object": single_object,
                     "max_box_fraction": max_box_fraction, "correct_only": correct_only, "targets": targets,
                     "target_layer": (target_layer if isinstance(target_layer, str) or target_layer is None
                                      else type(target_layer).__name__),
                     "image_size": [h, w]},
    }
    one_layer = tuple(e.factory for e in SALIENCY_METHODS.values() if e.needs_layer and isinstance(e.factory, type))
    cams = [fn for fn in method_fns.values() if isinstance(fn, one_layer)]
    if cams and out["settings"]["target_layer"] is None:
        out["settings"]["target_layer"] = ",".join(cams[0].layers)
    if return_maps:
        out["maps"] = maps_out
    return out


# ------------------------------------------------------------------------------ figure
def _rect(ax, box, color, style="-", width=1.5):
    from matplotlib.patches import Rectangle
    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                           linestyle=style, linewidth=width))


def save_figure_grid(path: Union[str, os.PathLike], images: torch.Tensor, boxes,
                     maps_by_method: Mapping[str, torch.Tensor], n: int = 8, top_fraction: float = 0.15,
                     titles: Optional[Sequence[str]] = None) -> Path:
    """A PNG with one row per image (the first ``n``): the image, then each method's map over it.

    The ground-truth box is drawn on every panel (white); on the map panels also the box of the
    map's top ``top_fraction`` pixels (orange, dashed) with its IoU in the title; maps in
    :data:`~gradmask.util.reporting.SEQUENTIAL_CMAP` (perceptually uniform). ``images``
    ``(M, 3, H, W)`` uint8 or [0, 1]; ``boxes`` ``(M, 4)`` or per-image lists; ``maps_by_method``
    name -> ``(M, H, W)``. Returns the path."""

    images = as_images(images, check_range=False).detach().cpu()
    m = len(images)
    per_image = _per_image(boxes, m, "boxes")
    rows = min(n, m)
    if rows < 1:
        raise ValueError("save_figure_grid needs at least one image")
    names = list(maps_by_method)
    for name in names:
        if tuple(maps_by_method[name].shape) != (m, *images.shape[-2:]):
            raise ValueError(f"maps_by_method[{name!r}] must have shape {(m, *images.shape[-2:])}, got "
                             f"{tuple(maps_by_method[name].shape)}")
    cols = 1 + len(names)
    side = min(2.0, 9.2 / cols)  # one row of panels fits the page
    fig = figure(side * cols, (side + 0.25) * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        img = images[r].permute(1, 2, 0).clamp(0, 1).numpy()
        ax = axes[r][0]
        ax.imshow(img, interpolation="nearest")
        for b in per_image[r]:
            _rect(ax, b.tolist(), TRUTH_BOX, width=2.0)
        ax.set_title(titles[r] if titles else "image", fontsize=9)
        for c, name in enumerate(names, start=1):
            ax = axes[r][c]
            smap = maps_by_method[name][r].detach().float().cpu()
            ax.imshow(img.mean(axis=2), cmap="gray", interpolation="nearest")
            ax.imshow(smap.numpy(), cmap=SEQUENTIAL_CMAP, alpha=0.6, interpolation="nearest")
            pred = saliency_boxes(smap.unsqueeze(0), top_fraction)[0]
            for b in per_image[r]:
                _rect(ax, b.tolist(), TRUTH_BOX, width=2.0)
            _rect(ax, pred.tolist(), PREDICTED_BOX, "--", width=2.0)
            iou = float(box_iou(pred.view(1, 4), per_image[r]).max())
            ax.set_title(f"{name} IoU {iou:.2f}", fontsize=9)
    return save_figure(fig, path, hide_ticks=True)


# ------------------------------------------------------------------------------ report
def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def write_localization_report(out_dir: Union[str, os.PathLike], results: dict, setting: Union[str, Mapping],
                              figure: Optional[Union[str, os.PathLike]] = None) -> dict:
    """``<out_dir>/localization.md`` and ``localization.json`` from :func:`evaluate_localization`'s
    result (maps left out). ``setting``: a title string or a mapping (checkpoint, data, ...)
    printed as a list; ``figure``: the grid PNG, linked. Returns ``{"markdown", "json"[, "figure"]}``
    paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setting_map = {"setting": setting} if isinstance(setting, str) else dict(setting)
    data = {k: v for k, v in results.items() if k != "maps"}
    payload = {"setting": setting_map, **data}
    if figure is not None:
        payload["figure"] = os.path.relpath(figure, out)
    json_path = out / "localization.json"
    write_atomic(json_path, json.dumps(_jsonable(payload), indent=2) + "\n")

    lines = ["# Localization (Table 3)", ""]
    lines += [f"- {k}: {v}" for k, v in setting_map.items()]
    s = results.get("settings", {})
    lines += [f"- images: {results['n_images']}, classified correctly: {results['n_correct']} "
              f"(accuracy {_fmt(results['accuracy'])}), evaluated: {results['n_evaluated']}",
              f"- filters: single object {s.get('single_object')}, box <= {s.get('max_box_fraction')} of the "
              f"image, correct only {s.get('correct_only')}; excluded: "
              + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in results.get("excluded", {}).items()),
              f"- saliency box: top {s.get('top_fraction')} of the pixels; Grad-CAM layer "
              f"`{s.get('target_layer')}`; maps for the {s.get('targets')} class", "",
              "| method | mean IoU | IoU >= 0.5 | images |", "|---|---|---|---|"]
    for name, r in results["methods"].items():
        lines.append(f"| {name} | {_fmt(r['mean_iou'])} | {_fmt(r['frac_iou_ge_05'])} | {r['n']} |")
    lines += ["", "Paper (Table 3, mean IoU): "
              + "; ".join(f"{ds}: " + ", ".join(f"{m} {v:.2f}" for m, v in vals.items())
                          for ds, vals in PAPER_TABLE3.items()), ""]
    paths = {"markdown": out / "localization.md", "json": json_path}
    if figure is not None:
        lines += [f"![saliency maps]({os.path.relpath(figure, out)})", ""]
        paths["figure"] = Path(figure)
    write_atomic(paths["markdown"], "\n".join(lines))
    return paths


def check_classes(model, data, where: str) -> None:
    """ValueError unless ``model``'s logits cover the labels of ``data`` (a BoxDataset; ``where``: the model, named)."""
    with torch.no_grad(), eval_mode(model):
        classes = model(as_images(data.images[:1].to(model_device(model)), check_range=False)).shape[1]
    if classes < data.num_classes:
        raise ValueError(f"{where} has {classes} classes but the data has {data.num_classes} "
                         f"({data.name}); evaluate it on the data it was trained for")
