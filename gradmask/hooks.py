"""Attaching a :class:`GradientMask` to modules of a model: target discovery and hooks.

The hook pattern is a forward hook that calls ``output.register_hook``: the tensor hook sees
the gradient with respect to the module's output even when a later in-place op (``ReLU
(inplace=True)``, ``+=``) rewrites that tensor, where module backward hooks fail.
"""
from __future__ import annotations

import contextlib
import re
from typing import Iterable, Iterator, Optional, Union

import torch
from torch import nn

from .mask import GradientMask
from .models.resnet import BasicBlock, Bottleneck

Target = Union[str, type, nn.Module]

_RESIDUAL_BLOCK_TYPES: list[type] = [BasicBlock, Bottleneck]


def register_residual_block(cls: type) -> type:
    """Declare a user's block class as a residual block for the default targets."""
    _RESIDUAL_BLOCK_TYPES.append(cls)
    return cls


def is_residual_block(module: nn.Module) -> bool:
    """A registered block type, or the torchvision/timm block structure: ``conv1`` and
    ``conv2`` convolutions plus a ``downsample`` attribute (the shortcut, possibly None)."""
    if isinstance(module, tuple(_RESIDUAL_BLOCK_TYPES)):
        return True
    return (hasattr(module, "downsample") and isinstance(getattr(module, "conv1", None), nn.Conv2d)
            and isinstance(getattr(module, "conv2", None), nn.Conv2d))


def residual_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Every residual block of ``model`` in definition order, by qualified name."""
    return {name: m for name, m in model.named_modules() if is_residual_block(m)}


def default_targets(model: nn.Module, skip_last: int = 2) -> dict[str, nn.Module]:
    """The outputs of every residual block except the last ``skip_last`` (the paper: "every
    bottleneck except the last two")."""
    blocks = residual_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no residual blocks to find default targets in; "
                         f"pass targets=[...] (module names, name patterns or module types), or "
                         f"gradmask.register_residual_block(YourBlock)")
    names = list(blocks)[: max(len(blocks) - skip_last, 0)]
    if not names:
        raise ValueError(f"{type(model).__name__} has {len(blocks)} residual blocks and skip_last="
                         f"{skip_last} leaves none; pass targets=[...] or a smaller skip_last")
    return {name: blocks[name] for name in names}


def _pattern(pattern: str) -> re.Pattern:
    """Glob over dotted module names: ``*`` and ``?`` stay within one name, ``**`` crosses dots."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wildcards = {"**": ".*", "*": "[^.]*", "?": "[^.]"}
    return re.compile("".join(wildcards.get(p, re.escape(p)) for p in parts) + r"\Z")


def resolve_targets(model: nn.Module, targets: Optional[Iterable[Target]],
                    skip_last: int = 2) -> dict[str, nn.Module]:
    """Targets as ``{name: module}``: ``None`` for the default residual blocks, else a list of
    exact module names, name patterns (``"layer*.0"``: ``*`` within one name, ``**`` across
    dots), module types or modules."""
    if targets is None:
        return default_targets(model, skip_last)
    if isinstance(targets, (str, type, nn.Module)):
        targets = [targets]
    named = dict(model.named_modules())
    by_id = {id(m): n for n, m in named.items()}
    found: dict[str, nn.Module] = {}
    for target in targets:
        if isinstance(target, type):
            hits = {n: m for n, m in named.items() if isinstance(m, target)}
        elif isinstance(target, nn.Module):
            hits = {by_id[id(target)]: target} if id(target) in by_id else {}
        elif isinstance(target, str):
            hits = ({target: named[target]} if target in named else
                    {n: m for n, m in named.items() if n and _pattern(target).match(n)})
        else:
            raise ValueError(f"targets entries must be module names, name patterns, module types or "
                             f"modules, got {target!r}")
        if not hits:
            raise ValueError(f"target {target!r} matches no module of {type(model).__name__}")
        found.update(hits)
    return found


class _TargetStats:
    __slots__ = ("kept", "positions", "calls", "shape")

    def __init__(self):
        self.kept: Optional[torch.Tensor] = None  # device tensor: no host sync in the hook
        self.positions = 0
        self.calls = 0
        self.shape: Optional[tuple] = None


class MaskHandle:
    """The hooks that apply a :class:`GradientMask` to the outputs of target modules.

    ``enabled`` switches the mask off without removing hooks; ``remove()`` (or leaving the
    ``with`` block) removes them; ``stats()`` reports per target the kept fraction (mean over
    calls), the number of backward calls and the last gradient shape.
    """

    def __init__(self, gradient_mask: GradientMask, targets: dict[str, nn.Module]):
        self.gradient_mask = gradient_mask
        self.targets = dict(targets)
        self.enabled = True
        self._stats = {name: _TargetStats() for name in self.targets}
        self._handles = [module.register_forward_hook(self._forward_hook(name))
                         for name, module in self.targets.items()]

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 4 or not output.is_floating_point():
                got = (f"{tuple(output.shape)} {output.dtype}" if isinstance(output, torch.Tensor)
                       else type(output).__name__)
                raise ValueError(f"gradmask target {name!r} ({type(module).__name__}) must output a "
                                 f"4-D floating-point tensor (N, C, H, W), got {got}")
            if self.enabled and output.requires_grad:
                output.register_hook(lambda grad: self._mask_gradient(name, grad))
        hook.gradmask_handle = self  # lets mask_handles() find the handle from the model
        return hook

    def _mask_gradient(self, name: str, grad: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.enabled:
            return None
        masked, kept_fraction = self.gradient_mask.apply(grad)
        stats = self._stats[name]
        kept = kept_fraction * grad.numel()  # float64 on the device: no host sync in the hook
        stats.kept = kept if stats.kept is None else stats.kept + kept
        stats.positions += grad.numel()
        stats.calls += 1
        stats.shape = tuple(grad.shape)
        return masked

    def stats(self) -> dict[str, dict]:
        """``{target: {"kept_fraction", "calls", "shape"}}`` since attach or ``reset_stats()``."""
        return {name: {"kept_fraction": (s.kept.item() / s.positions) if s.positions else None,
                       "calls": s.calls, "shape": s.shape}
                for name, s in self._stats.items()}

    def reset_stats(self) -> None:
        self._stats = {name: _TargetStats() for name in self.targets}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "MaskHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"MaskHandle({len(self.targets)} targets, enabled={self.enabled}, {self.gradient_mask})"


def mask_handles(model: nn.Module) -> list[MaskHandle]:
    """Every :class:`MaskHandle` with a live hook on ``model`` or its submodules (enabled or not)."""
    found: list[MaskHandle] = []
    for module in model.modules():
        for hook in module._forward_hooks.values():
            handle = getattr(hook, "gradmask_handle", None)
            if handle is not None and all(handle is not h for h in found):
                found.append(handle)
    return found


def strip_mask_hooks(model: nn.Module) -> int:
    """Remove every MaskHandle forward hook from ``model`` in place (meant for deep copies, which
    share the original's hooks); returns how many were removed."""
    removed = 0
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "gradmask_handle", None) is not None:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                removed += 1
    return removed


@contextlib.contextmanager
def no_gradient_mask(*models: nn.Module) -> Iterator[list[MaskHandle]]:
    """Switch off every gradient mask attached to ``models`` inside the block (plain backprop, e.g.
    for an attack or a saliency map); each handle's ``enabled`` is restored on exit."""
    handles: list[MaskHandle] = []
    for model in models:
        for handle in mask_handles(model):
            if all(handle is not h for h in handles):
                handles.append(handle)
    previous = [h.enabled for h in handles]
    for h in handles:
        h.enabled = False
    try:
        yield handles
    finally:
        for h, was in zip(handles, previous):
            h.enabled = was


def attach(model: nn.Module, gradient_mask: GradientMask, targets: Optional[Iterable[Target]] = None,
           skip_last: int = 2) -> MaskHandle:
    """Mask the gradient flowing into the outputs of ``targets`` of ``model``.

    ``targets=None``: every residual block except the last ``skip_last``; otherwise module names,
    name patterns, module types or modules (see :func:`resolve_targets`).
    Returns a :class:`MaskHandle`, usable as a context manager.
    """
    if not isinstance(gradient_mask, GradientMask):
        raise ValueError(f"gradient_mask must be a gradmask.GradientMask, got {type(gradient_mask).__name__}")
    return MaskHandle(gradient_mask, resolve_targets(model, targets, skip_last))
