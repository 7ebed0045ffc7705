"""gradmask: Gradient Mask (lateral inhibition in backpropagation) for PyTorch.

    gm = gradmask.GradientMask(groups=16, sigma=11.0, kernel_size=5, inhibition_rate=0.5)
    with gradmask.attach(model, gm) as handle:
        loss.backward()   # gradients at the targets' outputs are masked
"""
from .hooks import MaskHandle, attach, default_targets, register_residual_block, residual_blocks
from .laplacian import LoGFilter
from .mask import GradientMask
from .models import Normalized, create_model, list_models

__version__ = "0.1.0"

__all__ = ["GradientMask", "LoGFilter", "MaskHandle", "Normalized", "attach", "create_model",
           "default_targets", "list_models", "register_residual_block", "residual_blocks"]
