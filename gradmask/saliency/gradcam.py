"""Grad-CAM (Selvaraju et al., 2017) and Grad-CAM++ (Chattopadhay et al., 2018), the baselines of
Table 3. Both take one ``target_layer`` (a module or its name); a module called several times per
forward contributes the sum of the per-call maps."""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from .base import SaliencyMethod, register_method, resize


class _CAM(SaliencyMethod):
    """``ReLU(sum_c w_c A_c)`` per recorded call, resized to the input, summed over calls."""

    needs_activations = True
    layer_arg = "target_layer"

    def __init__(self, model: nn.Module, target_layer: Union[str, nn.Module]):
        if not isinstance(target_layer, (str, nn.Module)):
            raise ValueError(f"target_layer must be a module or a module name, got "
                             f"{type(target_layer).__name__}")
        super().__init__(model, [target_layer])

    def weights(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """``(N, C, 1, 1)`` channel weights."""
        raise NotImplementedError

    def compute(self, activations, gradients, input_size):
        total = None
        for a, g in zip(activations, gradients):
            dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
            a, g = a.to(dtype), g.to(dtype)
            cam = resize((self.weights(a, g) * a).sum(dim=1).clamp_min_(0), input_size)
            total = cam if total is None else total + cam
        return total


@register_method("gradcam", needs_layer=True)
class GradCAM(_CAM):
    """Grad-CAM: ``w_c = mean_ij dP/dA_cij`` (P the target logit), map ``ReLU(sum_c w_c A_c)``,
    bilinear to the input, min-max normalised per image.

    ``GradCAM(model, "layer4")(images)``: images ``(N, 3, H, W)`` in [0, 1] -> maps ``(N, H, W)`` in
    [0, 1] (``A`` the layer's output ``(N, C, h, w)``; targets: the classes given, else the predicted one)."""

    def weights(self, activation, gradient):
        return gradient.mean(dim=(2, 3), keepdim=True)


@register_method("gradcam++", needs_layer=True)
class GradCAMPlusPlus(_CAM):
    """Grad-CAM++ in its closed form (score ``exp(P)``, as the paper and pytorch-grad-cam):
    ``alpha_cij = g^2 / (2 g^2 + sum_ab A_cab g^3)`` (0 where ``g = 0``; ``eps=1e-6`` added to
    the denominator as pytorch-grad-cam), ``w_c = sum_ij alpha_cij ReLU(g_cij)``, ``g = dP/dA``.
    The ``exp(P)`` factors cancel in ``alpha`` and scale ``w`` uniformly, removed by normalising.

    Shapes as :class:`GradCAM`: images ``(N, 3, H, W)`` -> maps ``(N, H, W)`` in [0, 1]."""

    eps = 1e-6

    def weights(self, activation, gradient):
        g2 = gradient.square()
        g3 = g2 * gradient
        sum_a = activation.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + self.eps)
        alpha = torch.where(gradient != 0, alpha, torch.zeros_like(alpha))
        return (alpha * gradient.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
