"""One measurement of robustness (Figures 5 and 6) of models already loaded, on one evaluation set:
the L1 pruning curves and FGSM (:func:`measure`), and the helpers of a measurement over several runs
(the GSNR of each, Figure 7; their compatibility; the gradient mask a run trained with). Used by
``gradmask robustness`` (:mod:`gradmask.cli.robustness`, which loads the runs) and by reproduce's
Figures 5/6 step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..data import dataset_spec
from ..mask import GradientMask
from .fgsm import FGSMCurve, fgsm_curve
from .gsnr import gsnr, gsnr_summary
from .pruning import PruningCurve, pruning_curve


@dataclass
class Measured:
    """``pruning[name][scheme]``: each model's pruning curve per scheme; ``fgsm``: the FGSM curves."""
    pruning: dict[str, dict[str, PruningCurve]]
    fgsm: FGSMCurve


def measure(models: Mapping[str, nn.Module], loader: Iterable, sparsities: Sequence[float],
            epsilons_255: Sequence[float], schemes: Sequence[str] = ("global", "layer"), subset: str = "joint",
            recalibrate_bn: Optional[Iterable] = None, progress: bool = False,
            log: Optional[Callable[[str], Any]] = None) -> Measured:
    """Pruning curves (each model, each scheme, in that order) then FGSM of ``models`` (name ->
    model) on ``loader``; ``log`` gets a line as each starts."""
    pruning: dict[str, dict[str, PruningCurve]] = {}
    for name, model in models.items():
        pruning[name] = {}
        for scheme in schemes:
            if log is not None:
                log(f"pruning {name} ({scheme}) ...")
            pruning[name][scheme] = pruning_curve(model, loader, sparsities, scheme=scheme,
                                                  recalibrate_bn=recalibrate_bn, progress=progress)
    if log is not None:
        log("FGSM ...")
    return Measured(pruning, fgsm_curve(models, loader, epsilons_255, subset=subset, progress=progress))


def first_images(loader: Iterable, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images and labels ``loader`` yields."""
    xs, ys, seen = [], [], 0
    for x, y in loader:
        xs.append(x[: n - seen])
        ys.append(y[: n - seen])
        seen += ys[-1].shape[0]
        if seen >= n:
            break
    if not xs:
        raise ValueError("the GSNR split yielded no images")
    return torch.cat(xs), torch.cat(ys)


def run_gradient_mask(config) -> tuple[Optional[GradientMask], Optional[list], int]:
    """``(mask, targets, skip_last)`` a run (``config``, a TrainConfig) trained with; no mask: ``(None, None, 2)``."""
    if config.mask == "none":
        return None, None, 2
    targets = list(config.targets) if config.targets else None
    return GradientMask.from_settings(config.mask_settings), targets, config.skip_last


def check_compatible(loaded: list[dict], dataset: str, explicit_data: bool) -> None:
    """ValueError unless the runs (``{"path", "config", "arch", "num_classes"}`` each) can share one
    evaluation set of ``dataset``: one architecture, one number of classes, and (without data given
    explicitly) the same data and synthetic clutter."""
    first = loaded[0]
    for other in loaded[1:]:
        a, b = first["config"], other["config"]
        if a.model != b.model or first["arch"] != other["arch"]:
            what = (f"{a.model!r} vs {b.model!r}" if a.model != b.model else
                    f"{a.model!r} with different layer shapes (stem / width)")
            raise ValueError(f"runs {first['path']} and {other['path']} have different architectures ({what}); "
                             f"robustness compares models of one architecture on one shared evaluation set: "
                             f"run the command separately for each architecture")
        if first["num_classes"] != other["num_classes"]:
            raise ValueError(f"runs {first['path']} and {other['path']} predict different numbers of classes "
                             f"({first['num_classes']} vs {other['num_classes']}): they cannot share an "
                             f"evaluation set")
        if not explicit_data and (a.dataset, a.data) != (b.dataset, b.data):
            raise ValueError(f"runs {first['path']} and {other['path']} were trained on different data "
                             f"({a.dataset} {a.data or ''} vs {b.dataset} {b.data or ''}); pass --data / --dataset "
                             f"to evaluate all of them on one set")
        if "clutter" in dataset_spec(dataset).render_fields and a.synthetic_clutter != b.synthetic_clutter:
            raise ValueError(f"runs {first['path']} and {other['path']} were trained on synthetic data of different "
                             f"clutter ({a.synthetic_clutter} vs {b.synthetic_clutter}); the evaluation set is "
                             f"rendered with the first run's: evaluate them separately")


def measure_gsnr(runs: Mapping[str, tuple[nn.Module, Any]], images: torch.Tensor, labels: torch.Tensor,
                 with_mask: bool, params: str, chunk_size: int, split: str, progress: bool = False,
                 log: Optional[Callable[[str], Any]] = None) -> dict:
    """``{name: {"summary", "n_samples", "masked", "split", "eps", "ddof"}}``: the GSNR of each run
    (name -> (model, config)) on ``images``, with the run's own gradient mask when ``with_mask``;
    ``params``: "conv" (the convolution weights, as the paper) or "all"."""
    out = {}
    for name, (model, config) in runs.items():
        gm, targets, skip_last = run_gradient_mask(config) if with_mask else (None, None, 2)
        if log is not None:
            log(f"GSNR {name} ({images.shape[0]} samples{', masked' if gm else ''}) ...")
        r = gsnr(model, None, images, labels, chunk_size=chunk_size, params=None if params == "all" else "conv",
                 gradient_mask=gm, mask_targets=targets, skip_last=skip_last, progress=progress)
        out[name] = {"summary": gsnr_summary(r), "n_samples": r.n_samples, "masked": r.masked, "split": split,
                     "eps": r.eps, "ddof": r.ddof}
    return out


__all__ = ["Measured", "check_compatible", "first_images", "measure", "measure_gsnr", "run_gradient_mask"]
