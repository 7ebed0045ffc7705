"""gradmask: Gradient Mask (lateral inhibition in backpropagation) for PyTorch.

    gm = gradmask.GradientMask(groups=16, sigma=11.0, kernel_size=5, inhibition_rate=0.5)
    with gradmask.attach(model, gm) as handle:
        loss.backward()   # gradients at the targets' outputs are masked
"""
from .hooks import MaskHandle, attach, default_targets, register_residual_block, residual_blocks
from .laplacian import LoGFilter
from .mask import GradientMask
from .models import Normalized, create_model, list_models
from .robustness import (GSNRProbe, fgsm, fgsm_curve, gsnr, gsnr_summary, no_gradient_mask, plot_gsnr,
                         pruning_curve)
from .saliency import (GradCAM, GradCAMPlusPlus, LIBackgroundBlur, LIMap, box_iou, localization_scores,
                       saliency_box, saliency_boxes, select_images)

__version__ = "0.1.0"

__all__ = ["GSNRProbe", "fgsm", "fgsm_curve", "gsnr", "gsnr_summary", "no_gradient_mask", "plot_gsnr",
           "pruning_curve", "GradCAM", "GradCAMPlusPlus", "GradientMask", "LIBackgroundBlur", "LIMap", "LoGFilter",
           "MaskHandle", "Normalized", "attach", "box_iou", "create_model", "default_targets",
           "list_models", "localization_scores", "register_residual_block", "residual_blocks",
           "saliency_box", "saliency_boxes", "select_images"]
