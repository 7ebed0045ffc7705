"""``TrainConfig(augment="li-blur")``: Algorithm 2 as a training augmentation, registered with the
engine's augmentation registry when this module is imported (the engine does not import saliency)."""
from __future__ import annotations

import torch
from torch import nn

from ..hooks import no_gradient_mask
from ..train.config import TrainConfig
from ..train.plugins import Augment, register_augment
from .blur import LIBackgroundBlur


@register_augment("li-blur")
def li_blur(config: TrainConfig) -> Augment:
    """Crop-flip, then Algorithm 2 (:class:`gradmask.LIBackgroundBlur`, rate 0.5, quantile 0.5,
    blur sigma 2) with the model being trained and the run's LoG settings; the gradient mask is
    off while the LI map is computed (the map needs the plain gradient of the class score)."""
    settings = config.mask_settings
    blur = LIBackgroundBlur(sigma=settings.sigma, kernel_size=settings.kernel_size, kernel=settings.kernel,
                            padding=settings.padding)

    def batch(images: torch.Tensor, labels: torch.Tensor, model: nn.Module) -> torch.Tensor:
        with no_gradient_mask(model):
            return blur(images, labels, model=model)

    return Augment(crop_flip=True, batch=batch)
