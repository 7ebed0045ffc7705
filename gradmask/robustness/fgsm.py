"""FGSM (Goodfellow et al. 2015) and the accuracy-vs-epsilon curve of Fig. 6, plus the helpers every
robustness measurement shares: finding and switching off the gradient mask hooks on a model, eval
mode with restore, batches on the model's device.

``fgsm(model, images, labels, epsilon)``: ``clamp(x + epsilon * sign(grad_x CE(model(x), y)), 0, 1)``
with ``epsilon`` in image units (images in [0, 1]; ``8 / 255`` is eight grey levels).

``fgsm_curve(models, loader, epsilons)``: ``epsilons`` in **1/255 units** (``[0, 1, 2, 4, 8]``);
accuracy under attack per model on the images that *every* model classifies correctly (the paper's
protocol, ``subset="joint"``) or on all images (``subset="all"``).

Gradient mask hooks: an attack must use the model's true input gradient, so every live
:class:`gradmask.MaskHandle` on the model is switched off (``enabled = False``) for the duration
of each measurement and restored afterwards (:func:`no_gradient_mask`). The handles are found
through the models' forward hooks (a handle's hook is a closure over the handle), so no registry is
needed and a handle the caller forgot about is found too.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.augment import as_images
from ..hooks import no_gradient_mask
from ..models import eval_mode, model_device

SUBSETS = ("joint", "all")


# ------------------------------------------------------------------------------------ batches

def unpack_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images in [0, 1], labels)`` of a ``(images, labels, ...)`` batch (uint8 -> float)."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(f"loader must yield (images, labels) batches, got {type(batch).__name__}")
    return as_images(batch[0]), torch.as_tensor(batch[1])


def iterate_batches(loader: Iterable, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images in [0, 1], labels)`` on ``device`` from any iterable of ``(images, labels, ...)``."""
    for batch in loader:
        images, labels = unpack_batch(batch)
        yield images.to(device), labels.to(device)


def _total(loader) -> Optional[int]:
    try:
        return len(loader)
    except TypeError:
        return None


# ------------------------------------------------------------------------------------ FGSM

def _check_epsilon(epsilon, name: str = "epsilon") -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not math.isfinite(epsilon) \
            or epsilon < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {epsilon!r}")
    return float(epsilon)


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   loss_fn: Optional[Callable] = None) -> torch.Tensor:
    """``d loss / d images`` with the model as it is (mode, hooks): ``loss_fn(logits, labels)``,
    default the summed cross-entropy (a positive scale of the mean: same sign, no underflow).
    Parameters' ``.grad`` are untouched (``torch.autograd.grad`` w.r.t. the images only)."""
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = (F.cross_entropy(logits, labels, reduction="sum") if loss_fn is None
                else loss_fn(logits, labels))
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float,
         loss_fn: Optional[Callable] = None) -> torch.Tensor:
    """Untargeted FGSM: ``clamp(images + epsilon * sign(grad_images CE(model(images), labels)), 0, 1)``.

    ``images`` in [0, 1] ``(N, C, H, W)`` (normalisation is the model's first layer), ``epsilon``
    in image units (``8 / 255`` = eight grey levels; :func:`fgsm_curve` takes 1/255 units).
    The model runs in eval mode (restored afterwards) with every gradient mask on it switched off
    (:func:`no_gradient_mask`); parameters' ``.grad`` are untouched. Returns detached adversarial
    images, same shape and dtype, on the model's device.
    """
    epsilon = _check_epsilon(epsilon)
    device = model_device(model)
    images = as_images(images).to(device)
    with eval_mode(model), no_gradient_mask(model):
        grad = input_gradient(model, images, torch.as_tensor(labels).to(device), loss_fn)
    return (images.detach() + epsilon * grad.sign()).clamp_(0.0, 1.0)


def check_epsilons(epsilons) -> list[float]:
    """``epsilons`` as floats (1/255 units): a non-empty sequence of finite numbers >= 0."""
    if isinstance(epsilons, numbers.Real):
        epsilons = [epsilons]
    try:
        values = list(epsilons)
    except TypeError:
        raise ValueError(f"epsilons must be a sequence of numbers >= 0 (in 1/255 units), got {epsilons!r}") from None
    if not values:
        raise ValueError("epsilons must not be empty (numbers >= 0 in 1/255 units, e.g. [0, 1, 2, 4, 8])")
    for e in values:
        if isinstance(e, bool) or not isinstance(e, numbers.Real) or not math.isfinite(e) or e < 0:
            raise ValueError(f"epsilons must be finite numbers >= 0 (in 1/255 units, e.g. [0, 1, 2, 4, 8]), "
                             f"got {e!r} in {values!r}")
    return [float(e) for e in values]


class FGSMCurve(dict):
    """``{model name: [(epsilon in 1/255 units, accuracy), ...]}`` plus what it was measured on:

    - ``subset``: ``"joint"`` (images every model classifies correctly) or ``"all"``;
    - ``n_images``: images the accuracies are over; ``n_total``: images seen;
      ``n_joint``: images every model classifies correctly (whatever the subset);
    - ``clean_accuracy``: ``{model: accuracy on all n_total images}``;
    - ``warning``: a sentence when nothing could be measured (no jointly-correct image), else None;
      the accuracies are then NaN.
    """

    subset: str = "joint"
    n_images: int = 0
    n_total: int = 0
    n_joint: int = 0
    clean_accuracy: dict
    warning: Optional[str] = None

    def to_dict(self) -> dict:
        return {"subset": self.subset, "n_images": self.n_images, "n_total": self.n_total,
                "n_joint": self.n_joint, "clean_accuracy": dict(self.clean_accuracy),
                "warning": self.warning, "epsilon_unit": "1/255",
                "curves": {name: [[e, a] for e, a in curve] for name, curve in self.items()}}


def _check_models(models) -> dict[str, nn.Module]:
    if isinstance(models, nn.Module):
        return {"model": models}
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models must be a non-empty dict name -> model, got {type(models).__name__}")
    for name, m in models.items():
        if not isinstance(m, nn.Module):
            raise ValueError(f"models[{name!r}] must be an nn.Module, got {type(m).__name__}")
    return {str(k): v for k, v in models.items()}


def fgsm_curve(models: Mapping[str, nn.Module], loader: Iterable, epsilons: Sequence[float] = (0, 1, 2, 4, 8),
               subset: str = "joint", progress: bool = False) -> FGSMCurve:
    """Accuracy under FGSM for several models on one set of images (Fig. 6).

    ``models``: ``{name: model}`` (images in [0, 1] -> logits); ``loader``: any iterable of
    ``(images, labels)`` batches (a TensorLoader, a list); ``epsilons`` in **1/255 units** (an
    attack of ``e`` moves each pixel by ``e / 255``); ``subset="joint"`` evaluates on the images
    that every model classifies correctly (the paper's protocol: accuracy 1 at epsilon 0),
    ``"all"`` on every image. Each model's input gradient is computed once per batch (eval mode,
    mask hooks off) and reused for every epsilon.

    Returns an :class:`FGSMCurve` (a dict ``{name: [(epsilon, accuracy), ...]}`` with the image
    counts as attributes). No jointly-correct image: a ``RuntimeWarning``, NaN accuracies and
    ``result.warning`` set.
    """
    models = _check_models(models)
    eps = check_epsilons(epsilons)
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    names = list(models)
    correct = {n: torch.zeros(len(eps), dtype=torch.float64) for n in names}
    clean = {n: 0 for n in names}
    devices = {n: model_device(models[n]) for n in names}
    n_total = n_joint = n_images = 0
    with contextlib.ExitStack() as stack:
        for m in models.values():
            stack.enter_context(eval_mode(m))
        stack.enter_context(no_gradient_mask(*models.values()))
        bar = tqdm(loader, total=_total(loader), desc="FGSM", unit="batch", disable=not progress, leave=False)
        for batch in bar:
            images, labels = unpack_batch(batch)
            hits = {}
            for n in names:
                device = devices[n]
                with torch.no_grad():
                    hits[n] = (models[n](images.to(device)).argmax(1) == labels.to(device)).cpu()
                clean[n] += int(hits[n].sum())
            joint = torch.stack([hits[n] for n in names]).all(0)
            n_total += joint.numel()
            n_joint += int(joint.sum())
            keep = joint if subset == "joint" else torch.ones_like(joint)
            if not bool(keep.any()):
                continue
            n_images += int(keep.sum())
            index = keep.nonzero().squeeze(1)
            kept_images, kept_labels = images[index.to(images.device)], labels[index.to(labels.device)]
            for n in names:
                model = models[n]
                x, y = kept_images.to(devices[n]), kept_labels.to(devices[n])
                grad_sign = input_gradient(model, x, y).sign_()
                with torch.no_grad():
                    for i, e in enumerate(eps):
                        if e == 0:
                            ok = hits[n][index]
                        else:
                            adv = (x + (e / 255.0) * grad_sign).clamp_(0.0, 1.0)
                            ok = (model(adv).argmax(1) == y).cpu()
                        correct[n][i] += int(ok.sum())
    result = FGSMCurve()
    result.subset, result.n_images, result.n_total, result.n_joint = subset, n_images, n_total, n_joint
    result.clean_accuracy = {n: (clean[n] / n_total if n_total else math.nan) for n in names}
    if n_images == 0:
        result.warning = (f"no image to attack: none of the {n_total} images is classified correctly by "
                          f"every model ({', '.join(names)})" if subset == "joint" and n_total
                          else "the loader yielded no images")
        warnings.warn(f"fgsm_curve: {result.warning}; accuracies are NaN", RuntimeWarning, stacklevel=2)
    for n in names:
        result[n] = [(e, (float(correct[n][i]) / n_images) if n_images else math.nan) for i, e in enumerate(eps)]
    return result


__all__ = ["FGSMCurve", "SUBSETS", "check_epsilons", "fgsm", "fgsm_curve", "input_gradient", "iterate_batches",
           "unpack_batch"]
