"""LI-Map (Section 3.2, eq. 18-20): lateral inhibition on the gradients of a class score."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..hooks import residual_blocks
from ..laplacian import LoGFilter
from ..settings import DEFAULTS
from .base import SaliencyMethod, register_method, relu_layers, resize

ABSOLUTE = ("layer", "sum")


@register_method("limap")
class LIMap(SaliencyMethod):
    """LI-Map: ``F = sum_l |LoG(D^l)|`` resized to the input, normalised to [0, 1] per image.

    For every activation layer ``l`` (every call of every target module), with ``P`` the logit of
    the target class (not the loss) and ``K = 1`` (one minicolumn over all channels):
    ``D^l = ||dP/dA^l||_2`` over channels per pixel (eq. 13), ``delta^l = LoG(D^l)`` (eq. 18, the
    :class:`~gradmask.laplacian.LoGFilter`), resized bilinearly to the input's ``H x W`` (eq. 19)
    and summed over layers (eq. 20).

    Choices where the paper is silent or ambiguous:

    - ``|delta|`` or ``delta``: eq. (18) writes ``delta = LoG(D)`` (signed) and eq. (20) sums it, but
      the importance the paper defines everywhere else is the magnitude: ``|delta|`` in eq. (16),
      ``delta = |Laplacian of dL/da|`` in Section 2.2, and ``|F|`` in Algorithm 2 (eq. 25). Table 3
      then takes "the largest F values". With the default 5x5 window (sigma=11) every LoG tap is
      negative, so ``delta <= 0`` everywhere and the signed ``F`` would rank the *least* salient
      pixels first; ``|delta|`` is the reading under which the paper is consistent. Default
      ``absolute="layer"``: ``F = sum_l |delta^l|``; ``absolute="sum"``: ``F = |sum_l delta^l|``
      (Algorithm 2's ``|F|`` of the signed sum). The two are identical whenever no ``delta^l``
      changes sign: always when every tap is negative (both kernels at 5x5, sigma=11), and they
      can only differ for windows wide enough to hold positive taps (``kernel_size=None``,
      radius > sqrt(2) sigma).
    - Default layers: the output of every ``nn.ReLU`` module, each *call* counted as one
      activation layer (a ``self.relu`` used twice in a block is two layers). Functional ``F.relu``
      calls are invisible to hooks: pass ``target_layers`` for such models. ReLU outputs that are
      not 4-D (a fully connected head) are skipped. A model without ``nn.ReLU`` modules (a vision
      transformer with GELUs) uses the output of every residual block instead; token outputs
      ``(N, T, D)`` are taken on their patch grid as ``(N, D, H, W)`` maps (prefix tokens dropped),
      so ``K = 1`` is the norm over the embedding dimensions at each patch.
    - Maps too small for the window with reflect padding (a 5x5 kernel needs a side >= 3; a
      ResNet's last stage at 32x32 input is 4x4, 2x2 or 1x1): the window is shrunk to the largest
      odd size that fits, ``min(kernel_size, 2 * min(h, w) - 1)`` (for ``kernel="log"`` this is the
      5x5 kernel cropped to its centre, and a 1x1 map is just scaled by the centre tap). Explicit
      ``padding="zero"`` or ``kernel_size=None`` crop inside ``LoGFilter`` as usual.
    - Resize: ``F.interpolate(mode="bilinear", align_corners=False)``.

    Args:
        model: images ``(N, C, H, W)`` -> logits ``(N, classes)``.
        target_layers (Optional[Sequence]): see :class:`~gradmask.saliency.base.SaliencyMethod`;
            default every ReLU.
        sigma: the LoG's standard deviation (:class:`~gradmask.laplacian.LoGFilter`, as the next three).
        kernel_size: the LoG window.
        padding: ``"reflect"`` or ``"zero"``.
        kernel: ``"log"`` or ``"authors"``.
        absolute: ``"layer"`` (default) or ``"sum"``, see above.
    """

    def __init__(self, model: nn.Module, target_layers=None, sigma: float = DEFAULTS.sigma,
                 kernel_size: Optional[int] = DEFAULTS.kernel_size, padding: str = DEFAULTS.padding,
                 kernel: str = DEFAULTS.kernel,
                 absolute: str = "layer"):
        if absolute not in ABSOLUTE:
            raise ValueError(f"absolute must be one of {ABSOLUTE}, got {absolute!r}")
        self.log_filter = LoGFilter(sigma=sigma, kernel_size=kernel_size, kernel=kernel, padding=padding)
        self.absolute = absolute
        self._filters: dict[int, LoGFilter] = {}
        super().__init__(model, target_layers)

    def default_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        return relu_layers(model) or residual_blocks(model)

    def filter_for(self, height: int, width: int) -> LoGFilter:
        """The LoG used on an ``height x width`` map (the window shrunk to fit, see above)."""
        f = self.log_filter
        if f.kernel_size is None or f.padding != "reflect" or f.kernel_size <= 2 * min(height, width) - 1:
            return f
        size = 2 * min(height, width) - 1
        if size not in self._filters:
            self._filters[size] = LoGFilter(sigma=f.sigma, kernel_size=size, kernel=f.kernel, padding=f.padding)
        return self._filters[size]

    def compute(self, activations, gradients, input_size):
        total = None
        for grad in gradients:
            dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
            norm = grad.to(dtype).square().sum(dim=1).sqrt_()  # D^l: (N, h, w), K = 1
            delta = self.filter_for(*norm.shape[-2:])(norm)       # eq. (18)
            if self.absolute == "layer":
                delta = delta.abs_()
            delta = resize(delta, input_size)                       # eq. (19)
            total = delta if total is None else total + delta      # eq. (20)
        return total.abs_() if self.absolute == "sum" else total
