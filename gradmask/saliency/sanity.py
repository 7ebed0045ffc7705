"""Sanity checks for saliency maps (Adebayo et al. 2018, "Sanity checks for saliency maps"): the
cascading model-parameter randomization test of the paper's Appendix A.

From the output layer down, the parameters of one more group of layers are re-initialised at each
step (on a deep copy: the caller's model is never touched), the maps are recomputed, and each is
compared with the trained model's map by the Spearman rank correlation and SSIM. A method that
explains the model gives maps that degrade as the model is randomized; one that does not
(an edge detector) keeps them.

Groups (``granularity="block"``, the default): the *parametrised layers* (modules with parameters
of their own: conv, linear, batch norm, ...) in reverse registration order, grouped per top-level
block. The top level is the model's trunk: wrappers holding a single parametrised child
(``Normalized(model)``, DDP) are descended into. A top-level child that is an
``nn.Sequential`` / ``nn.ModuleList`` / ``nn.ModuleDict`` of blocks (a ResNet stage) is split into
its blocks; any other child (a stem ``Sequential`` of plain layers, ``fc``) is one group. For the
gradmask ResNets: ``fc``, ``layer4.1``, ``layer4.0``, ..., ``layer1.0``, ``stem`` (the shortcut
``downsample`` belongs to its block). ``granularity="layer"`` randomizes one parametrised layer
per step.

Re-initialisation: each module's own ``reset_parameters()`` (PyTorch's initial state: conv /
linear weights redrawn, batch norm to weight 1, bias 0, running mean 0, var 1), drawn from
torch's RNG seeded by ``(seed, step)`` inside ``torch.random.fork_rng`` (the global RNG is left as
it was); a parametrised module without ``reset_parameters`` gets N(0, 0.01^2) parameters.

Metrics per image, then the mean over images: Spearman's rank correlation of the two maps'
pixels (:func:`scipy.stats.spearmanr`, ties averaged; a constant map gives NaN, left out of the
mean and counted) and SSIM (:func:`ssim`). The target class is the trained model's prediction
(or ``targets``), kept fixed through all steps.
"""
from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import as_images
from ..models import model_device
from ..util.files import write_atomic
from ..util.reporting import SEQUENTIAL_CMAP, arm_colors, figure, save_figure
from .base import unwrap_model
from .evaluate import _fmt, _jsonable, predict

__all__ = ["cascading_randomization", "gaussian_window", "plot_sanity", "randomization_groups",
           "save_sanity_maps", "spearman", "ssim", "write_sanity_report"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


# ------------------------------------------------------------------------------ metrics
def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> torch.Tensor:
    """The normalised 2-D Gaussian window ``(size, size)`` of Wang et al. (sum 1)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03, reduction: str = "none") -> torch.Tensor:
    """Structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004) of two images or batches.

    ``x``, ``y``: ``(H, W)``, ``(N, H, W)`` or ``(N, C, H, W)``, same shape. Local means,
    variances and covariance come from a Gaussian window (``window_size`` 11, ``sigma`` 1.5)
    applied without padding (only positions where the window fits, Wang et al.'s ``'valid'``),
    ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` with ``L = data_range``, population (biased) variances;
    the SSIM of an image is the mean of its SSIM map (over channels too). Equal to scikit-image's
    ``structural_similarity(x, y, data_range=L, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``. Computed in float64.

    Returns ``(N,)`` per image (a 0-d tensor for ``(H, W)`` input) with ``reduction="none"``,
    their mean with ``"mean"``. An image smaller than the window is a ``ValueError``.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape:
        raise ValueError(f"x and y must be tensors of one shape, got "
                         f"{getattr(x, 'shape', type(x))} and {getattr(y, 'shape', type(y))}")
    if x.dim() not in (2, 3, 4):
        raise ValueError(f"x must be (H, W), (N, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    if reduction not in ("none", "mean"):
        raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be an odd int >= 1, got {window_size!r}")
    if not (isinstance(data_range, (int, float)) and data_range > 0):
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    single = x.dim() == 2
    a = x.reshape(1, 1, *x.shape) if single else (x.unsqueeze(1) if x.dim() == 3 else x)
    b = y.reshape(1, 1, *y.shape) if single else (y.unsqueeze(1) if y.dim() == 3 else y)
    n, c, h, w = a.shape
    if h < window_size or w < window_size:
        raise ValueError(f"images must be at least {window_size}x{window_size} for SSIM, got {h}x{w}")
    a = a.to(torch.float64).reshape(n * c, 1, h, w)
    b = b.to(device=a.device, dtype=torch.float64).reshape(n * c, 1, h, w)
    win = gaussian_window(window_size, sigma, device=a.device).view(1, 1, window_size, window_size)
    stack = torch.cat([a, b, a * a, b * b, a * b], dim=1).view(n * c * 5, 1, h, w)
    filt = F.conv2d(stack, win).view(n * c, 5, h - window_size + 1, w - window_size + 1)
    mu_a, mu_b, aa, bb, ab = filt.unbind(1)
    var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    per_image = smap.reshape(n, -1).mean(dim=1)
    if reduction == "mean":
        return per_image.mean()
    return per_image[0] if single else per_image


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per image of ``(N, H, W)`` (or ``(N, ...)``) maps -> float64
    ``(N,)``: :func:`scipy.stats.spearmanr` on the flattened pixels (average ranks for ties);
    NaN where either map is constant."""
    from scipy.stats import spearmanr

    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape or x.dim() < 2:
        raise ValueError(f"x and y must be tensors (N, ...) of one shape, got "
                         f"{getattr(x, 'shape', type(x))} and {getattr(y, 'shape', type(y))}")
    a = x.detach().reshape(len(x), -1).double().cpu().numpy()
    b = y.detach().reshape(len(y), -1).double().cpu().numpy()
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        if np.ptp(a[i]) == 0 or np.ptp(b[i]) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[i] = spearmanr(a[i], b[i]).statistic
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------ groups
def _has_own_params(m: nn.Module) -> bool:
    return next(m.parameters(recurse=False), None) is not None


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def _trunk(model: nn.Module) -> tuple[str, nn.Module]:
    """``(prefix, module)``: descend through wrappers with a single parametrised child."""
    prefix, trunk = "", model
    while not _has_own_params(trunk):
        children = [(n, c) for n, c in trunk.named_children() if _has_params(c)]
        if len(children) != 1 or not any(True for _ in children[0][1].children()):
            break
        prefix, trunk = prefix + children[0][0] + ".", children[0][1]
    return prefix, trunk


def _is_stage(container: nn.Module) -> bool:
    """A container of blocks: one of its children has parametrised sub-modules of its own."""
    return isinstance(container, _CONTAINERS) and any(
        _has_params(c) and any(True for _ in c.children()) for c in container.children())


def randomization_groups(model: nn.Module, granularity: str = "block") -> list[tuple[str, list[str]]]:
    """``[(group name, [layer names])]`` in randomization order (top layer first); names are
    qualified in ``model`` (after unwrapping DDP / ``torch.compile``). See the module docstring."""
    if granularity not in ("block", "layer"):
        raise ValueError(f"granularity must be 'block' or 'layer', got {granularity!r}")
    model = unwrap_model(model)
    layers = [n for n, m in model.named_modules() if _has_own_params(m)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no parameters to randomize")
    if granularity == "layer":
        return [(n or "(model)", [n]) for n in reversed(layers)]
    prefix, trunk = _trunk(model)
    groups: dict[str, list[str]] = {}
    for name in layers:
        rel = name[len(prefix):] if name.startswith(prefix) else name
        if not name.startswith(prefix) or rel == "" or name == prefix.rstrip("."):
            key = name or "(model)"
        else:
            parts = rel.split(".")
            top = trunk.get_submodule(parts[0])
            key = prefix + (f"{parts[0]}.{parts[1]}" if len(parts) > 1 and _is_stage(top) else parts[0])
        groups.setdefault(key, []).append(name)
    return [(k, list(reversed(v))) for k, v in reversed(list(groups.items()))]


def _reinitialize(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
        module.reset_parameters()
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.normal_(0.0, 0.01)


# ------------------------------------------------------------------------------ the test
def _maps(method_factory: Callable, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
          batch_size: int) -> torch.Tensor:
    method = method_factory(model)
    device = model_device(model)
    parts = []
    for start in range(0, len(images), batch_size):
        x = as_images(images[start:start + batch_size].to(device), check_range=False)
        parts.append(method(x, targets[start:start + batch_size].to(device)).detach().float().cpu())
    release = getattr(method, "release", None)
    if callable(release):
        release()
    return torch.cat(parts)


def _mean(values: torch.Tensor) -> tuple[float, float, int]:
    ok = values[~torch.isnan(values)]
    if len(ok) == 0:
        return math.nan, math.nan, len(values)
    std = float(ok.std(unbiased=False)) if len(ok) > 1 else 0.0
    return float(ok.mean()), std, int(len(values) - len(ok))


def cascading_randomization(model: nn.Module, images: torch.Tensor, method_factory: Callable[[nn.Module], Callable],
                            targets=None, seed: int = 0, granularity: str = "block", batch_size: int = 64,
                            return_maps: bool = False, progress: bool = False) -> list[dict]:
    """The cascading randomization test (Adebayo et al. 2018, Section 3.1 / Fig. 2).

    Args:
        model: the trained model (never modified: every step works on one deep copy).
        images: ``(N, 3, H, W)`` uint8 or [0, 1] float (maps must be >= 11x11 for SSIM).
        method_factory: ``model -> method`` with ``method(images, targets) -> (N, H, W)`` maps in
            [0, 1], e.g. ``lambda m: LIMap(m)`` or ``lambda m: GradCAM(m, "layer4")``.
        targets: class per image (or an int); ``None``: the trained model's predictions. Fixed
            for every step.
        seed: the re-initialisation draws (step ``k`` seeded by ``(seed, k)``: the same
            randomized weights for every method).
        granularity: ``"block"`` (default) or ``"layer"`` (see :func:`randomization_groups`).
        return_maps: keep each step's maps (``"maps"``, CPU ``(N, H, W)``).

    Returns one dict per step, step 0 the trained model itself: ``step``, ``randomized`` (the
    group re-initialised at this step, ``"original"`` at step 0), ``layers`` (its layer names),
    ``spearman`` / ``ssim`` (means over images), ``spearman_std`` / ``ssim_std``,
    ``spearman_undefined`` (images with a constant map, left out of the Spearman mean),
    ``spearman_images`` / ``ssim_images`` (per image).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    as_images(images[:1] if isinstance(images, torch.Tensor) else images, check_range=False)
    if len(images) == 0:
        raise ValueError("images must hold at least one image")
    groups = randomization_groups(model, granularity)
    work = copy.deepcopy(unwrap_model(model)).eval()
    n = len(images)
    if targets is None:
        targets = predict(work, images, batch_size)
    else:
        targets = torch.as_tensor(targets, dtype=torch.int64).cpu()
        if targets.dim() == 0:
            targets = targets.expand(n)
        if targets.shape != (n,):
            raise ValueError(f"targets must be an int or hold one class per image ({n}), got {tuple(targets.shape)}")
    device = model_device(work)
    fork_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    original = _maps(method_factory, work, images, targets, batch_size)
    steps = []
    plan = [("original", [])] + groups
    iterator = range(len(plan))
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc="cascading randomization", unit="step", leave=False)
    for k in iterator:
        name, layers = plan[k]
        if k == 0:
            maps = original  # the trained model's maps, computed above
        else:
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(seed * 1_000_003 + k)
                for layer in layers:
                    _reinitialize(work.get_submodule(layer))
            maps = _maps(method_factory, work, images, targets, batch_size)
        rho = spearman(original, maps)
        sim = ssim(original, maps, data_range=1.0)
        rho_mean, rho_std, undefined = _mean(rho)
        ssim_mean, ssim_std, _ = _mean(sim)
        record = {"step": k, "randomized": name, "layers": list(layers), "spearman": rho_mean,
                  "spearman_std": rho_std, "spearman_undefined": undefined, "ssim": ssim_mean,
                  "ssim_std": ssim_std, "spearman_images": rho.tolist(), "ssim_images": sim.tolist()}
        if return_maps:
            record["maps"] = maps
        steps.append(record)
    return steps


# ------------------------------------------------------------------------------ plots, report
def plot_sanity(path: Union[str, os.PathLike], results_by_method: Mapping[str, list]) -> Path:
    """Adebayo et al. Fig. 2 style: mean rank correlation (left) and SSIM (right) against the
    randomization depth (x: the group randomized last, top layer first), one line per method."""
    fig = figure(9.4, 4.6)
    axes = fig.subplots(1, 2, sharex=True)
    labels = None
    low = [-0.2, -0.2]
    colors = arm_colors(results_by_method)
    for method, steps in results_by_method.items():
        xs = [s["step"] for s in steps]
        labels = labels or [s["randomized"] for s in steps]
        for ax, key in zip(axes, ("spearman", "ssim")):
            mean = np.array([s[key] if s[key] is not None else np.nan for s in steps], dtype=float)
            std = np.array([s.get(f"{key}_std") or 0.0 for s in steps], dtype=float)
            line, = ax.plot(xs, mean, marker="o", color=colors[method], label=method)
            ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
            if np.isfinite(mean - std).any():
                i = 0 if key == "spearman" else 1
                low[i] = max(-1.05, min(low[i], float(np.nanmin(mean - std)) - 0.05))
    for ax, title, bottom in zip(axes, ("Spearman rank correlation", "SSIM"), low):
        ax.set_title(title)
        ax.axhline(0.0, color="gray", linewidth=0.8)
        ax.set_ylim(bottom, 1.05)
        ax.set_xticks(range(len(labels or [])))
        ax.set_xticklabels(labels or [], rotation=60, ha="right")
        ax.set_xlabel("cascading randomization (top layer first)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("similarity to the trained model's map")
    axes[1].legend()
    return save_figure(fig, path)


def save_sanity_maps(path: Union[str, os.PathLike], images: torch.Tensor, steps: list, n: int = 4,
                     method: str = "saliency") -> Path:
    """The ``method`` maps of the first ``n`` images (rows) at every step (columns: the trained
    model, then after randomizing each group top-down, labelled by step number and group; needs
    ``return_maps``), with the map's colour scale."""
    import textwrap

    if not steps or "maps" not in steps[0]:
        raise ValueError("steps must come from cascading_randomization(..., return_maps=True)")
    images = as_images(images, check_range=False).detach().cpu()
    rows, cols = min(n, len(images)), 1 + len(steps)
    side = min(1.5, 8.6 / cols)  # every column on the page; column titles are step numbers (key below)
    fig = figure(side * cols + 0.8, side * rows + 1.6)
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1.0] * cols + [0.08])
    shown = None
    for r in range(rows):
        for c in range(cols):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.imshow(images[r].permute(1, 2, 0).clamp(0, 1).numpy())
                label = "image"
            else:
                step = steps[c - 1]
                shown = ax.imshow(step["maps"][r].numpy(), cmap=SEQUENTIAL_CMAP, vmin=0, vmax=1)
                label = str(step["step"])
            if r == 0:
                ax.set_title(label, fontsize=10)
    fig.colorbar(shown, cax=fig.add_subplot(grid[:, cols]), label="map value (normalised)")
    fig.suptitle(f"{method} under cascading randomization (column k: groups up to k re-initialised, top-down)",
                 fontsize=10)
    key = "; ".join(f"{s['step']}: " + ("trained" if s["step"] == 0 else s["randomized"]) for s in steps)
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap("Columns: " + key, 110)), fontsize=9, va="bottom")
    return save_figure(fig, path)


def write_sanity_report(out_dir: Union[str, os.PathLike], results_by_method: Mapping[str, list],
                        setting: Union[str, Mapping]) -> dict:
    """``sanity.json`` (every step, per-image values included, maps left out), ``sanity.md`` (the
    means per step and method) and ``sanity.png`` (:func:`plot_sanity`) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setting_map = {"setting": setting} if isinstance(setting, str) else dict(setting)
    clean = {m: [{k: v for k, v in s.items() if k != "maps"} for s in steps]
             for m, steps in results_by_method.items()}
    json_path = out / "sanity.json"
    write_atomic(json_path, json.dumps(_jsonable({"setting": setting_map, "methods": clean}), indent=2) + "\n")
    png = plot_sanity(out / "sanity.png", clean)
    methods = list(clean)
    lines = ["# Cascading randomization (Adebayo et al. 2018)", ""]
    lines += [f"- {k}: {v}" for k, v in setting_map.items()]
    lines += ["- each cell: mean over images of Spearman rank correlation / SSIM between the trained "
              "model's map and the map after randomizing every group down to this row", ""]
    lines.append("| step | randomized | " + " | ".join(methods) + " |")
    lines.append("|---|---|" + "---|" * len(methods))
    first = clean[methods[0]] if methods else []
    for i, s in enumerate(first):
        cells = []
        for m in methods:
            t = clean[m][i]
            cells.append(f"{_fmt(t['spearman'])} / {_fmt(t['ssim'])}")
        lines.append(f"| {s['step']} | {s['randomized']} | " + " | ".join(cells) + " |")
    lines += ["", "![cascading randomization](sanity.png)", ""]
    md = out / "sanity.md"
    write_atomic(md, "\n".join(lines))
    return {"markdown": md, "json": json_path, "figure": png}
