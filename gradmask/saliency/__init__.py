"""Saliency maps and what they are used for.

- :class:`LIMap` (Section 3.2), :class:`GradCAM`, :class:`GradCAMPlusPlus`: ``method(images,
  targets=None) -> (N, H, W)`` in [0, 1]; one base class (:class:`SaliencyMethod`) owns hooks,
  eval mode, targets, backward and normalisation. Each registers itself by name
  (:func:`register_method`, ``SALIENCY_METHODS``): a new method is one module, imported here.
- :mod:`~gradmask.saliency.localization`: the IoU measure of Table 3.
- :class:`LIBackgroundBlur`: the data enhancement of Section 3.4 (Algorithm 2).
"""
from .base import SALIENCY_METHODS, ActivationsAndGradients, SaliencyMethod, normalize_maps, register_method
from .blur import BlurResult, LIBackgroundBlur, gaussian_blur
from .gradcam import GradCAM, GradCAMPlusPlus
from .limap import LIMap
from .localization import box_iou, localization_scores, saliency_box, saliency_boxes, select_images

__all__ = ["SALIENCY_METHODS", "ActivationsAndGradients", "BlurResult", "GradCAM", "GradCAMPlusPlus",
           "LIBackgroundBlur", "LIMap", "SaliencyMethod", "box_iou", "gaussian_blur", "localization_scores",
           "normalize_maps", "register_method", "saliency_box", "saliency_boxes", "select_images"]
