"""The base of every saliency method: hooks, the template method, normalisation.

A method is a small subclass of :class:`SaliencyMethod` that implements
``compute(activations, gradients, input_size) -> (N, H, W)``. Everything else lives here:

- :class:`ActivationsAndGradients` (the one place hooks are made): a forward hook on each target
  module records the output of every call and registers ``output.register_hook`` on it, so the
  gradient with respect to that output is captured even when a later in-place op
  (``ReLU(inplace=True)``, ``out += identity``) rewrites the tensor. A module called several times
  per forward (a ``self.relu`` reused inside a block) gives one record per call.
  ``release()`` / ``with`` removes the hooks.
- :meth:`SaliencyMethod.attribute`, the template method: validate ``images``, switch the model to
  eval mode, forward the whole batch, pick the targets (default: the predicted class), backprop
  the sum of the selected logits once (exact per-sample gradients: in eval mode samples do not
  interact), ``compute``, then restore every module's training flag. The backward is
  ``torch.autograd.grad`` with respect to a detached copy of the images, so no parameter's
  ``.grad`` is touched and no ``requires_grad`` flag is changed; no hook outlives the call.
- :meth:`SaliencyMethod.__call__`: ``attribute`` then per-image min-max normalisation to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..hooks import TokenGrid, declared_token_grid, resolve_targets, token_grid_for, unwrap_model
from ..models import eval_mode
from ..models.resnet import Normalize

Layer = Union[str, type, nn.Module]


def relu_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.ReLU`` module of ``model`` (each counted once; every call of it is recorded)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}


def input_channels(model: nn.Module) -> Optional[int]:
    """The channel count the model expects, from its first ``Normalize`` or ``Conv2d`` in
    registration order; ``None`` when neither is found."""
    for m in model.modules():
        if isinstance(m, Normalize):
            return m.mean.numel()
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, h, w) -> (N, H, W)``, bilinear (``align_corners=False``); identity when equal."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max per image to [0, 1]; a constant map becomes zeros. ``(N, H, W)``."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    out = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, torch.ones_like(span)),
                      torch.zeros_like(flat))
    return out.view_as(maps)


class ActivationsAndGradients:
    """Forward hooks on ``layers`` recording, per call, the output (optionally a copy) and the
    gradient with respect to it (via ``output.register_hook``).

    ``strict=True``: a target whose output is not a 4-D floating-point tensor raises a
    ``ValueError`` naming ``arg_name``; ``strict=False`` skips such calls (used for the default
    ReLU layers, where a ReLU in a fully connected head is not a spatial map). Token outputs
    ``(N, T, D)`` (a vision transformer's blocks) are recorded on their patch grid as
    ``(N, D, H, W)`` maps (prefix tokens dropped; ``token_grid`` / ``prefix_tokens`` as in
    :func:`gradmask.attach`); under ``strict=False`` those whose ``T`` fits no grid are skipped.
    After backward, ``gradients[i]`` is the gradient of call ``i`` (``None`` if the output did not
    reach the score).
    """

    def __init__(self, layers: dict[str, nn.Module], keep_activations: bool = False,
                 strict: bool = True, arg_name: str = "target_layers",
                 token_grid: Optional[tuple[int, int]] = None, prefix_tokens: Optional[int] = None):
        self.token_grid, self.prefix_tokens = token_grid, prefix_tokens
        self.keep_activations = keep_activations
        self.strict = strict
        self.arg_name = arg_name
        self.names: list[str] = []
        self.activations: list[Optional[torch.Tensor]] = []
        self.gradients: list[Optional[torch.Tensor]] = []
        self._like: list[torch.Tensor] = []  # an empty tensor per call: dtype, device
        self._shapes: list[torch.Size] = []
        self._handles = [module.register_forward_hook(self._forward_hook(name))
                         for name, module in layers.items()]

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs, output):
            grid = None
            if isinstance(output, torch.Tensor) and output.dim() == 3 and output.is_floating_point():
                try:
                    grid = token_grid_for(name, module, output.shape, self.token_grid, self.prefix_tokens,
                                          "stated by the model")
                except ValueError as error:
                    if not self.strict:
                        return
                    raise ValueError(f"{self.arg_name}: {error}") from None
            recorded = output if grid is None else grid.to_map(output)  # (N, C, H, W)
            if not isinstance(output, torch.Tensor) or recorded.dim() != 4 or not output.is_floating_point():
                if not self.strict:
                    return
                got = (f"{tuple(output.shape)} {output.dtype}" if isinstance(output, torch.Tensor)
                       else type(output).__name__)
                raise ValueError(f"{self.arg_name}: layer {name!r} ({type(module).__name__}) must "
                                 f"output a 4-D floating-point tensor (N, C, H, W) or tokens (N, T, D), "
                                 f"got {got}")
            index = len(self.names)
            self.names.append(name)
            # a copy: a later in-place op (ReLU(inplace=True) after a conv target) would rewrite it
            self.activations.append(recorded.detach().clone() if self.keep_activations else None)
            self.gradients.append(None)
            self._shapes.append(recorded.shape)
            self._like.append(output.new_empty(0))
            if output.requires_grad:
                output.register_hook(lambda grad: self._store(index, grad, grid))
        return hook

    def _store(self, index: int, grad: torch.Tensor, grid: Optional[TokenGrid]) -> None:
        self.gradients[index] = (grad if grid is None else grid.to_map(grad)).detach()

    def filled_gradients(self) -> list[torch.Tensor]:
        """The gradients, zeros for a call whose output did not reach the score."""
        return [g if g is not None else like.new_zeros(shape)
                for g, like, shape in zip(self.gradients, self._like, self._shapes)]

    def release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "ActivationsAndGradients":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class SaliencyMethod:
    """Base class: ``method(images, targets=None) -> (N, H, W)`` maps in [0, 1].

    Args:
        model: takes images ``(N, C, H, W)`` (in [0, 1] for gradmask models) and returns logits
            ``(N, classes)``. DDP / DataParallel / ``torch.compile`` wrappers are unwrapped.
        target_layers: module names, name patterns (``"layer*.0"``), module types or modules whose
            outputs are recorded (every call of each); ``None`` is the subclass's default
            (:meth:`default_layers`).

    Subclasses set ``needs_activations`` and implement :meth:`compute`. Use ``release()`` or a
    ``with`` block to drop any hook left by an interrupted call (a completed call leaves none).
    """

    needs_activations = False
    layer_arg = "target_layers"  # the argument named in error messages

    def __init__(self, model: nn.Module, target_layers: Optional[Union[Layer, Iterable[Layer]]] = None):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = unwrap_model(model)
        self.layers, self._strict = self._resolve(target_layers)
        self._token_grid, self._prefix_tokens = declared_token_grid(self.model)
        self._recorder: Optional[ActivationsAndGradients] = None

    # -- configuration -------------------------------------------------------------------------
    def default_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """Layers used when ``target_layers`` is None (subclasses may override)."""
        raise ValueError(f"{type(self).__name__} needs {self.layer_arg}")

    def _resolve(self, target_layers) -> tuple[dict[str, nn.Module], bool]:
        if target_layers is None:
            layers = self.default_layers(self.model)
            if not layers:
                raise ValueError(f"{self.layer_arg}: {type(self.model).__name__} has no default "
                                 f"layers for {type(self).__name__}; pass {self.layer_arg}=[...]")
            return layers, False
        if isinstance(target_layers, (list, tuple)) and not target_layers:
            raise ValueError(f"{self.layer_arg} must not be empty")
        try:
            return resolve_targets(self.model, target_layers), True
        except ValueError as exc:
            raise ValueError(f"{self.layer_arg}: {exc}") from None

    # -- the subclass's part ---------------------------------------------------------------------
    def compute(self, activations: Sequence[Optional[torch.Tensor]], gradients: Sequence[torch.Tensor],
                input_size: tuple[int, int]) -> torch.Tensor:
        """``(N, H, W)`` raw maps from the per-call activations and gradients."""
        raise NotImplementedError

    # -- the template method -----------------------------------------------------------------------
    def _check_images(self, images) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
            got = (f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor)
                   else type(images).__name__)
            raise ValueError(f"images must be a floating-point tensor (N, C, H, W), got {got}")
        if min(images.shape) < 1:
            raise ValueError(f"images must be non-empty (N, C, H, W), got {tuple(images.shape)}")
        channels = input_channels(self.model)
        if channels is not None and images.shape[1] != channels:
            raise ValueError(f"images must have {channels} channels for this model, got "
                             f"{images.shape[1]} (shape {tuple(images.shape)})")

    @staticmethod
    def _targets(targets, logits: torch.Tensor) -> torch.Tensor:
        n, classes = logits.shape
        if targets is None:
            return logits.detach().argmax(dim=1)
        if isinstance(targets, bool):
            raise ValueError(f"targets must be class indices, got {targets!r}")
        if isinstance(targets, int):
            chosen = torch.full((n,), targets, dtype=torch.long)
        else:
            chosen = torch.as_tensor(targets)
            if chosen.is_floating_point() or chosen.dtype == torch.bool or chosen.is_complex():
                raise ValueError(f"targets must be integer class indices, got dtype {chosen.dtype}")
            if chosen.dim() == 0:
                chosen = chosen.expand(n)
            if chosen.shape != (n,):
                raise ValueError(f"targets must be an int or hold one class index per image ({n}), "
                                 f"got shape {tuple(chosen.shape)}")
        chosen = chosen.to(device=logits.device, dtype=torch.long)
        if n and (chosen.min() < 0 or chosen.max() >= classes):
            raise ValueError(f"targets must be class indices in [0, {classes - 1}], got values in "
                             f"[{chosen.min().item()}, {chosen.max().item()}]")
        return chosen

    def attribute(self, images: torch.Tensor, targets=None) -> torch.Tensor:
        """Raw (unnormalised) maps ``(N, H, W)`` in float32 (float64 for float64 images)."""
        self._check_images(images)
        model = self.model
        try:
            with eval_mode(model), torch.enable_grad(), ActivationsAndGradients(
                    self.layers, self.needs_activations, self._strict, self.layer_arg,
                    self._token_grid, self._prefix_tokens) as recorder:
                self._recorder = recorder
                x = images.detach().requires_grad_(True)
                logits = model(x)
                if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != len(x):
                    got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                    raise ValueError(f"model must return logits (N, classes) with N={len(x)}, got {got}")
                chosen = self._targets(targets, logits)
                if not recorder.names:
                    raise ValueError(f"{self.layer_arg}: no 4-D activation was recorded in the forward "
                                     f"pass of {type(model).__name__}; pass {self.layer_arg}=[...]")
                score = logits.gather(1, chosen.view(-1, 1)).sum()
                if not score.requires_grad:
                    raise ValueError("model output does not depend differentiably on images")
                torch.autograd.grad(score, x, allow_unused=True)
                with torch.no_grad():
                    maps = self.compute(recorder.activations, recorder.filled_gradients(),
                                        tuple(images.shape[-2:]))
        finally:
            self._recorder = None
        return maps.detach()

    def __call__(self, images: torch.Tensor, targets=None) -> torch.Tensor:
        """Maps ``(N, H, W)`` in [0, 1] (min-max per image; a constant map is zeros).

        ``targets``: ``None`` (the predicted class), an int, or one class index per image."""
        return normalize_maps(self.attribute(images, targets))

    # -- hooks lifetime ------------------------------------------------------------------------------
    def release(self) -> None:
        """Remove any hook still registered (none after a completed call)."""
        if self._recorder is not None:
            self._recorder.release()
            self._recorder = None

    def __enter__(self) -> "SaliencyMethod":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, {len(self.layers)} layers)"


@dataclass(frozen=True)
class MethodEntry:
    """A registered saliency method: ``factory(model, target_layer) -> SaliencyMethod``;
    ``needs_layer``: it maps one layer (``target_layer`` None: :func:`default_cam_layer` picks it)."""

    factory: Callable[[nn.Module, Any], "SaliencyMethod"]
    needs_layer: bool


#: Saliency methods by name (results, reports and the command line use these names).
SALIENCY_METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, needs_layer: bool = False):
    """Decorator on a :class:`SaliencyMethod` subclass (or any ``factory(model, target_layer)``):
    it becomes ``make_method(name, ...)`` and a ``--methods`` choice. A new method is one module
    with this decorator, imported by :mod:`gradmask.saliency`."""
    def deco(factory):
        SALIENCY_METHODS[name] = MethodEntry(factory, needs_layer)
        return factory
    return deco
