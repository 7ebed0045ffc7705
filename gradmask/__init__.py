"""gradmask: Gradient Mask (lateral inhibition in backpropagation) for PyTorch.

    gm = gradmask.GradientMask(groups=16, sigma=11.0, kernel_size=5, inhibition_rate=0.5)
    with gradmask.attach(model, gm) as handle:
        loss.backward()   # gradients at the targets' outputs are masked

``import gradmask`` loads the core only (the mask, the LoG, selection, hooks: torch and numpy);
the rest of the names below (models, saliency, robustness) are imported on first use.
"""
# No ``from __future__ import annotations`` and no plain ``import x`` here: both would bind a name
# (``gradmask.annotations``, ``gradmask.importlib``) outside ``__all__``.
from importlib import import_module as _import_module

from .hooks import MaskHandle, attach, default_targets, no_gradient_mask, register_residual_block, residual_blocks
from .laplacian import LoGFilter
from .mask import GradientMask
from .settings import MaskSettings

__version__ = "0.1.0"

# name -> module that defines it, imported by ``__getattr__`` the first time the name is used.
_LAZY = {
    **dict.fromkeys(["Normalized", "create_model", "list_models"], "gradmask.models"),
    **dict.fromkeys(["GSNRProbe", "gsnr", "gsnr_summary"], "gradmask.robustness.gsnr"),
    **dict.fromkeys(["fgsm", "fgsm_curve"], "gradmask.robustness.fgsm"),
    "pruning_curve": "gradmask.robustness.pruning",
    "plot_gsnr": "gradmask.robustness.report",
    **dict.fromkeys(["GradCAM", "GradCAMPlusPlus"], "gradmask.saliency.gradcam"),
    "LIMap": "gradmask.saliency.limap",
    "LIBackgroundBlur": "gradmask.saliency.blur",
    **dict.fromkeys(["box_iou", "localization_scores", "saliency_box", "saliency_boxes", "select_images"],
                    "gradmask.saliency.localization"),
}

__all__ = ["GSNRProbe", "GradCAM", "GradCAMPlusPlus", "GradientMask", "LIBackgroundBlur", "LIMap", "LoGFilter",
           "MaskHandle", "MaskSettings", "Normalized", "attach", "box_iou", "create_model", "default_targets", "fgsm",
           "fgsm_curve",
           "gsnr", "gsnr_summary", "list_models", "localization_scores", "no_gradient_mask", "plot_gsnr",
           "pruning_curve", "register_residual_block", "residual_blocks", "saliency_box", "saliency_boxes",
           "select_images"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'gradmask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
