"""L1 magnitude pruning and the accuracy-vs-sparsity curve of Fig. 5.

The pruning itself is ``torch.nn.utils.prune``'s: ``scheme="layer"`` prunes the ``sparsity``
fraction of smallest-magnitude weights in every Conv / Linear layer separately
(``prune.l1_unstructured``); ``scheme="global"`` prunes that fraction of all those weights
together, by one magnitude threshold over the whole network (``prune.global_unstructured`` with
``prune.L1Unstructured``). Biases, BatchNorm and the input normalisation are not pruned. Each count
is ``round(sparsity * n)`` weights (``torch.nn.utils.prune``'s rule).

Always on a deep copy (the caller's model is untouched); the pruning is made permanent on the copy
(``prune.remove``: plain ``weight`` tensors with zeros). BatchNorm running statistics are left as
trained unless ``recalibrate_bn=loader`` asks to re-estimate them on the pruned network.
"""
from __future__ import annotations

import copy
import math
import numbers
from typing import Iterable, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import prune
from tqdm import tqdm

from ..hooks import no_gradient_mask, strip_mask_hooks
from ..models import eval_mode, model_device
from .fgsm import iterate_batches

SCHEMES = ("global", "layer")
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def check_sparsities(sparsities) -> list[float]:
    """``sparsities`` as floats: a non-empty sequence of numbers in [0, 1)."""
    if isinstance(sparsities, numbers.Real):
        sparsities = [sparsities]
    try:
        values = list(sparsities)
    except TypeError:
        raise ValueError(f"sparsities must be a sequence of numbers in [0, 1), got {sparsities!r}") from None
    if not values:
        raise ValueError("sparsities must not be empty (numbers in [0, 1), e.g. [0, 0.5, 0.9])")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not (0.0 <= s < 1.0):
            raise ValueError(f"sparsities must be numbers in [0, 1) (the fraction of weights set to zero), "
                             f"got {s!r} in {values!r}")
    return [float(s) for s in values]


def _check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES} (global: one threshold over the network; "
                         f"layer: the same fraction in every layer), got {scheme!r}")
    return scheme


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(module name, module)`` of every Conv / Linear layer with a ``weight``, in order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None), torch.Tensor)]


def weight_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros per prunable layer and ``"total"`` over all of them."""
    out, zeros, total = {}, 0, 0
    for name, m in prunable_weights(model):
        w = m.weight.detach()
        z = int((w == 0).sum())
        out[name] = z / w.numel()
        zeros += z
        total += w.numel()
    out["total"] = zeros / total if total else math.nan
    return out


def recalibrate_batchnorm(model: nn.Module, loader: Iterable) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``loader`` (in place): reset them, run
    the batches in train mode without gradients with a cumulative average (``momentum=None``),
    then eval mode. Mask hooks on the model are switched off meanwhile."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    device = model_device(model)
    model.train()
    seen = 0
    try:
        with torch.no_grad(), no_gradient_mask(model):
            for images, _ in iterate_batches(loader, device):
                model(images)
                seen += images.shape[0]
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    if seen == 0:
        raise ValueError("recalibrate_bn: the loader yielded no images")
    return model


def prune_model(model: nn.Module, sparsity: float, scheme: str = "global",
                recalibrate_bn: Optional[Iterable] = None) -> nn.Module:
    """A pruned deep copy of ``model`` (in eval mode, no mask hooks): ``sparsity`` of the Conv /
    Linear weights set to zero by L1 magnitude, per layer (``scheme="layer"``) or by one global
    threshold (``"global"``); BatchNorm statistics re-estimated on ``recalibrate_bn`` if given."""
    sparsity = check_sparsities([sparsity])[0]
    _check_scheme(scheme)
    pruned = copy.deepcopy(model)
    strip_mask_hooks(pruned)  # a deep copy shares the original's hook functions (and handles)
    layers = prunable_weights(pruned)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv / Linear weights to prune")
    if scheme == "layer":
        for _, m in layers:
            prune.l1_unstructured(m, "weight", amount=sparsity)
    else:
        prune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured,
                                  amount=sparsity)
    for _, m in layers:
        prune.remove(m, "weight")
    if recalibrate_bn is not None:
        recalibrate_batchnorm(pruned, recalibrate_bn)
    return pruned.eval()


def accuracy(model: nn.Module, loader: Iterable) -> tuple[float, int]:
    """``(top-1 accuracy, images)`` of ``model`` on ``loader`` (eval mode, restored; no grad)."""
    device = model_device(model)
    hits, total = torch.zeros((), dtype=torch.int64, device=device), 0
    with eval_mode(model), torch.no_grad():
        for images, labels in iterate_batches(loader, device):
            hits += (model(images).argmax(1) == labels).sum()  # summed on the device: no sync per batch
            total += labels.shape[0]
    return (int(hits) / total if total else math.nan), total


class PruningCurve(list):
    """``[(sparsity, accuracy), ...]`` with ``scheme``, ``n_images`` and ``achieved`` (the measured
    fraction of zero weights at each sparsity) as attributes."""

    scheme: str = "global"
    n_images: int = 0
    achieved: list

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "n_images": self.n_images,
                "points": [[s, a] for s, a in self], "achieved_sparsity": list(self.achieved)}


def pruning_curve(model: nn.Module, loader: Iterable, sparsities: Sequence[float] = (0, 0.5, 0.9),
                  scheme: str = "global", recalibrate_bn: Optional[Iterable] = None,
                  progress: bool = False) -> PruningCurve:
    """Top-1 accuracy of ``model`` L1-pruned to each of ``sparsities`` (fractions in [0, 1)) on
    ``loader`` (any iterable of ``(images in [0, 1], labels)`` batches). ``scheme``: ``"global"``
    or ``"layer"`` (see :func:`prune_model`); ``recalibrate_bn``: a loader to re-estimate the
    BatchNorm statistics of each pruned network on (off by default). The caller's model is never
    modified. Returns a :class:`PruningCurve` ``[(sparsity, accuracy), ...]``."""
    values = check_sparsities(sparsities)
    _check_scheme(scheme)
    result = PruningCurve()
    result.scheme, result.achieved = scheme, []
    bar = tqdm(values, desc=f"pruning ({scheme})", unit="sparsity", disable=not progress, leave=False)
    for s in bar:
        pruned = prune_model(model, s, scheme, recalibrate_bn)
        acc, n = accuracy(pruned, loader)
        result.append((s, acc))
        result.achieved.append(weight_sparsity(pruned)["total"])
        result.n_images = n
        del pruned
    return result


__all__ = ["PRUNABLE", "PruningCurve", "SCHEMES", "accuracy", "check_sparsities", "prunable_weights",
           "prune_model", "pruning_curve", "recalibrate_batchnorm", "weight_sparsity"]
