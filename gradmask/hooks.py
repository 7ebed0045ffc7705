"""Attaching a :class:`GradientMask` to modules of a model: target discovery, token grids, hooks.

Default targets: the output of every residual block but the last ``skip_last``, a residual block
being recognised by what it computes (:func:`is_residual_block`). Targets whose output is a map
``(N, C, H, W)`` are masked as they are; targets whose output is a token sequence ``(N, T, D)``
(a vision transformer's blocks) are masked on their patch grid (:class:`TokenGrid`).

The hook pattern is a forward hook that calls ``output.register_hook``: the tensor hook sees
the gradient with respect to the module's output even when a later in-place op (``ReLU
(inplace=True)``, ``+=``) rewrites that tensor, where module backward hooks fail. The tensor hook
calls the operator ``torch.ops.gradmask.mask`` (``GradientMask.apply``; run eagerly, its kernel
directly) and adds the call's statistics, one ``(8,)`` float64 tensor, into the target's running
totals on the gradient's device with one in-place add; it has no other side effect, so
``torch.compile`` (torch releases whose Dynamo traces hooks on intermediate tensors, 2.13 here)
traces it into the backward graph with the operator as one node: no graph break. On older releases
Dynamo breaks the graph at each target, and the hook runs eagerly, masking alike.
"""
from __future__ import annotations

import contextlib
import functools
import math
import operator
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import fx, nn

from .mask import CALLS, ENERGY, ENERGY_CALLS, KEPT, MAPS, NONFINITE, POSITIONS, TIED, TOTALS, GradientMask

Target = Union[str, type, nn.Module]

# Filled by register_residual_block (the project's ResNet blocks register themselves in models.resnet).
_RESIDUAL_BLOCK_TYPES: list[type] = []


def register_residual_block(cls: type) -> type:
    """Declare a user's block class as a residual block for the default targets (whatever its
    forward computes; for blocks that :func:`is_residual_block` does not recognise)."""
    _RESIDUAL_BLOCK_TYPES.append(cls)
    return cls


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that really runs: ``DistributedDataParallel`` / ``DataParallel`` and
    ``torch.compile`` wrappers removed (so target names are the bare model's)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


# --- residual blocks by structure -----------------------------------------------------------

_ADD_FUNCTIONS = frozenset({operator.add, operator.iadd, torch.add})
_ADD_METHODS = frozenset({"add", "add_"})
# element-wise maps that may follow the sum (``relu(x + f(x))``) or sit on the shortcut
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU,
                        nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Identity,
                        nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_ELEMENTWISE_MODULE_NAMES = frozenset({  # parameter-free activation classes of other libraries (timm)
    "relu", "relu6", "gelu", "gelutanh", "quickgelu", "silu", "swish", "swishme", "mish", "mishme",
    "hardswish", "hardswishme", "hardmish", "hardmishme", "identity", "dropout"})
_ELEMENTWISE_FUNCTIONS = frozenset({torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.gelu, F.silu,
                                    F.mish, F.hardswish, F.leaky_relu, F.elu, F.selu, F.celu, F.dropout,
                                    torch.tanh})
_ELEMENTWISE_METHODS = frozenset({"relu", "relu_", "tanh", "contiguous"})


class _OneLevelTracer(fx.Tracer):
    """Traces a module's own ``forward`` only: every submodule call stays one ``call_module`` node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _trace_one_level(module: nn.Module) -> Optional[fx.Graph]:
    """``module.forward`` as an fx graph of its own operations and submodule calls, or None when it
    does not trace (data-dependent control flow, ``**kwargs``, ...). Attributes a forward sets on
    the module while traced (caches, fx constants) are put back as they were."""
    saved = dict(module.__dict__)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _OneLevelTracer(autowrap_modules=(), autowrap_functions=()).trace(module)
    except Exception:  # noqa: BLE001 - any failure means "not known by structure": the fallbacks decide
        return None
    finally:
        for key in set(module.__dict__) - set(saved):
            del module.__dict__[key]
        module.__dict__.update(saved)


def _is_add(node: fx.Node) -> bool:
    return (len(node.args) >= 2 and ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
                                     or (node.op == "call_method" and node.target in _ADD_METHODS)))


def _is_elementwise(node: fx.Node, submodule: Optional[nn.Module]) -> bool:
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if submodule is not None:
        return (isinstance(submodule, _ELEMENTWISE_MODULES)
                or (type(submodule).__name__.lower() in _ELEMENTWISE_MODULE_NAMES
                    and next(submodule.parameters(), None) is None))
    return ((node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS)
            or (node.op == "call_method" and node.target in _ELEMENTWISE_METHODS))


def _returns_input_plus_branch(module: nn.Module, graph: fx.Graph) -> bool:
    """Whether the traced forward returns ``shortcut + branch`` (possibly followed by element-wise
    activations) where, with ``x`` the first input:

    - ``shortcut`` is ``x`` itself, ``x`` passed through submodule calls only (a projection
      such as ``downsample(x)``), or again such a sum (the second residual of a transformer block);
    - ``branch`` depends on ``x`` through at least one submodule that holds parameters (so
      ``x + self.pos_embed`` or a parameter-only ``x + bias * g(x)`` is not a residual block).
    """
    nodes = list(graph.nodes)
    source = next((n for n in nodes if n.op == "placeholder"), None)
    if source is None:
        return False
    submodules = dict(module.named_modules())
    depends, through_module, shortcut = {source}, set(), {source}  # shortcut: x, projections, residual sums
    result = None
    for node in nodes:
        if node.op == "output":
            result = node.args[0]
            continue
        inputs = [a for a in node.all_input_nodes if a in depends]
        if node is source or not inputs:
            continue
        depends.add(node)
        sub = submodules.get(node.target) if node.op == "call_module" else None
        if any(a in through_module for a in inputs) or (sub is not None and next(sub.parameters(), None) is not None):
            through_module.add(node)
        if _is_elementwise(node, sub):
            if node.args[0] in shortcut:
                shortcut.add(node)
        elif _is_add(node):
            a, b = node.args[0], node.args[1]
            if a is not b and ((a in shortcut and b in through_module) or (b in shortcut and a in through_module)):
                shortcut.add(node)  # a residual sum
        elif sub is not None and len(node.all_input_nodes) == 1 and inputs[0] in shortcut:
            shortcut.add(node)
    while (isinstance(result, fx.Node) and not _is_add(result)
           and _is_elementwise(result, submodules.get(result.target) if result.op == "call_module" else None)):
        result = result.args[0]
    return isinstance(result, fx.Node) and _is_add(result) and result in shortcut


def _attribute_rule(module: nn.Module) -> bool:
    """torchvision/timm ResNet shape: ``conv1`` and ``conv2`` convolutions plus a ``downsample``
    attribute (the shortcut, possibly None)."""
    return (hasattr(module, "downsample") and isinstance(getattr(module, "conv1", None), nn.Conv2d)
            and isinstance(getattr(module, "conv2", None), nn.Conv2d))


def is_residual_block(module: nn.Module) -> bool:
    """Whether ``module`` is a residual block: a registered type, else what its forward computes
    (traced one level deep with ``torch.fx``: it returns its input plus a branch, see
    :func:`_returns_input_plus_branch`: ``x + f(x)``, ``relu(x + f(x))``,
    ``x + drop_path(gamma * f(x))``, ``proj(x) + f(x)``, a pre-norm transformer block); when the
    forward does not trace, the ResNet attribute rule (``conv1``, ``conv2``, ``downsample``).
    PyTorch's own modules (``nn.Conv2d``, ``nn.Sequential``, ...) and modules without submodules
    or parameters (no branch to compute) are never residual blocks, and are not traced."""
    if isinstance(module, tuple(_RESIDUAL_BLOCK_TYPES)):
        return True
    if (type(module).__module__.startswith("torch.") or next(module.children(), None) is None
            or next(module.parameters(), None) is None):
        return False
    graph = _trace_one_level(module)
    return _attribute_rule(module) if graph is None else _returns_input_plus_branch(module, graph)


def residual_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Every residual block of ``model`` in definition order, by qualified name; of nested ones
    (a stage that is itself ``x + blocks(x)``) only the innermost. Modules are examined from the
    innermost out, and one that holds a residual block is not traced."""
    found: dict[str, nn.Module] = {}
    holding: set[str] = set()  # names of modules with a residual block inside
    for name, module in reversed(list(unwrap_model(model).named_modules())):
        if name not in holding and is_residual_block(module):
            found[name] = module
            parts = name.split(".")
            holding.update(".".join(parts[:i]) for i in range(len(parts)))
    return dict(reversed(found.items()))


def default_targets(model: nn.Module, skip_last: int = 2) -> dict[str, nn.Module]:
    """The outputs of every residual block except the last ``skip_last`` (the paper: "every
    bottleneck except the last two")."""
    blocks = residual_blocks(model)
    if not blocks:
        raise ValueError(f"{type(unwrap_model(model)).__name__} has no residual blocks to find default "
                         f"targets in (none of its modules returns its input plus a branch); pass "
                         f"targets=[...] (module names, name patterns or module types), or "
                         f"gradmask.register_residual_block(YourBlock)")
    names = list(blocks)[: max(len(blocks) - skip_last, 0)]
    if not names:
        raise ValueError(f"{type(unwrap_model(model)).__name__} has {len(blocks)} residual blocks and "
                         f"skip_last={skip_last} leaves none; pass targets=[...] or a smaller skip_last")
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
    dots), module types or modules. Names are those of the bare model (DDP / compile unwrapped)."""
    model = unwrap_model(model)
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


# --- token sequences on their patch grid ------------------------------------------------------

@dataclass(frozen=True)
class TokenGrid:
    """Where a ``(N, T, D)`` token output's patches lie: ``T = prefix + height * width``, the
    first ``prefix`` tokens (class / register / distillation) then the patches in row-major order.
    The patches are masked as the map ``(N, D, height, width)`` (embedding dimensions as
    channels); the prefix tokens' gradients pass untouched."""

    height: int
    width: int
    prefix: int

    def to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, T, D)`` -> the patch tokens as ``(N, D, H, W)`` (a view, channels-last strides)."""
        return tokens[:, self.prefix:].transpose(1, 2).unflatten(2, (self.height, self.width))

    def to_tokens(self, maps: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """``(N, D, H, W)`` patches and the ``(N, prefix, D)`` prefix tokens -> ``(N, T, D)``."""
        patches = maps.flatten(2).transpose(1, 2)
        return patches if self.prefix == 0 else torch.cat([prefix, patches], dim=1)


def declared_token_grid(model: nn.Module) -> tuple[Optional[tuple[int, int]], Optional[int]]:
    """``(grid, prefix tokens)`` where the model states them, else ``(None, None)``: timm-style
    ``patch_embed.grid_size`` and ``num_prefix_tokens`` (timm's and this project's ViTs), or
    torchvision's ``VisionTransformer`` (``image_size // patch_size`` squared, one class token)."""
    for m in unwrap_model(model).modules():
        grid = getattr(getattr(m, "patch_embed", None), "grid_size", None)
        if grid is not None:
            prefix = getattr(m, "num_prefix_tokens", None)
            return (int(grid[0]), int(grid[1])), (None if prefix is None else int(prefix))
        image_size, patch_size = getattr(m, "image_size", None), getattr(m, "patch_size", None)
        if isinstance(image_size, int) and isinstance(patch_size, int) and hasattr(m, "class_token"):
            return (image_size // patch_size, image_size // patch_size), 1
    return None, None


def _check_token_grid(token_grid, prefix_tokens) -> None:
    if token_grid is not None and (not isinstance(token_grid, (tuple, list)) or len(token_grid) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in token_grid)):
        raise ValueError(f"token_grid must be None or (height, width) with positive integers, got {token_grid!r}")
    if prefix_tokens is not None and (isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int)
                                      or prefix_tokens < 0):
        raise ValueError(f"prefix_tokens must be None or an integer >= 0, got {prefix_tokens!r}")


def token_grid_for(name: str, module: nn.Module, shape: torch.Size, token_grid: Optional[tuple[int, int]],
                    prefix_tokens: Optional[int], source: str) -> TokenGrid:
    """The grid of a target's ``(N, T, D)`` output: ``token_grid`` / ``prefix_tokens`` as given
    (``source`` says where from), else a square grid of ``T - prefix`` tokens; a clear error when
    ``T`` does not fit."""
    tokens = shape[1]
    prefix = prefix_tokens or 0
    where = f"gradmask target {name!r} ({type(module).__name__}) outputs tokens {tuple(shape)} (N, T, D)"
    how = "pass attach(..., token_grid=(H, W), prefix_tokens=P) with T = P + H*W"
    if token_grid is not None:
        height, width = token_grid
        if prefix + height * width != tokens:
            raise ValueError(f"{where}, but token_grid={tuple(token_grid)} and prefix_tokens={prefix} "
                             f"({source}) need T = {prefix + height * width}; {how}")
        return TokenGrid(height, width, prefix)
    side = math.isqrt(max(tokens - prefix, 0))
    if tokens <= prefix or side * side != tokens - prefix:
        raise ValueError(f"{where}: T - prefix_tokens = {tokens} - {prefix} is not a square grid and no "
                         f"token_grid is known; {how}")
    return TokenGrid(side, side, prefix)


def _module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (CPU when it has none)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _new_totals(device: torch.device) -> torch.Tensor:
    """A target's running totals: the sum over its backward calls of each call's statistics
    (``MaskedGradient.totals``, slots ``gradmask.mask.CALLS`` ... ``TIED``), float64 on its device."""
    return torch.zeros(TOTALS, dtype=torch.float64, device=device)


class MaskHandle:
    """The hooks that apply a :class:`GradientMask` to the outputs of target modules.

    ``enabled`` switches the mask off without removing hooks; ``remove()`` (or leaving the
    ``with`` block) removes them and ``reattach()`` puts them back; ``stats()`` reports per target
    the kept fraction (mean over calls), the number of backward calls and the last gradient shape
    (for a token target: its patch grid as a map ``(N, D, H, W)``).

    ``token_grid`` / ``prefix_tokens``: the layout of targets that output tokens ``(N, T, D)``
    (see :class:`TokenGrid`; None: a square grid of ``T - prefix_tokens`` patches), ``grid_source``
    where they came from (for error messages). A module that already carries another handle's
    hooks is an error: two masks on one output would mask its gradient twice.
    Under ``torch.compile`` the hooks are traced into the graphs (see the module docstring), and
    ``enabled`` is read when the forward runs (eagerly: also when the backward runs); since Dynamo
    does not guard on module hooks, attaching or removing drops the code it has compiled in this
    process (if any), so the next call recompiles with the hooks as they are.
    """

    def __init__(self, gradient_mask: GradientMask, targets: dict[str, nn.Module],
                 token_grid: Optional[tuple[int, int]] = None, prefix_tokens: Optional[int] = None,
                 grid_source: str = "given to attach"):
        _check_token_grid(token_grid, prefix_tokens)
        self.gradient_mask = gradient_mask
        self.targets = dict(targets)
        self.token_grid = None if token_grid is None else tuple(token_grid)
        self.prefix_tokens = prefix_tokens
        self.grid_source = grid_source
        self.enabled = True
        # per target: running totals (see _new_totals) on the target's device, and the last gradient shape;
        # both exist before the first forward (a compiled graph may not create what its backward updates, and
        # Dynamo guards on a dict's keys)
        self._totals = {name: _new_totals(_module_device(module)) for name, module in self.targets.items()}
        self._shapes: dict[str, Optional[tuple]] = dict.fromkeys(self.targets)
        self._handles: list = []
        self.reattach()

    def reattach(self) -> None:
        """Register the hooks again after :meth:`remove` (statistics are kept)."""
        if self._handles:
            raise ValueError("this MaskHandle is attached; remove() it before reattach()")
        for name, module in self.targets.items():
            other = _attached_handle(module)
            if other is not None:
                raise ValueError(f"gradmask target {name!r} ({type(module).__name__}) already has a gradient "
                                 f"mask attached ({other!r}): two masks on one output would mask its gradient "
                                 f"twice; remove() that handle first, or leave this module out of targets")
        self._handles = [module.register_forward_hook(self._forward_hook(name))
                         for name, module in self.targets.items()]
        _forget_compiled_code()

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs, output):
            tensor = isinstance(output, torch.Tensor) and output.is_floating_point()
            if not tensor or output.dim() not in (3, 4):
                got = (f"{tuple(output.shape)} {output.dtype}" if isinstance(output, torch.Tensor)
                       else type(output).__name__)
                raise ValueError(f"gradmask target {name!r} ({type(module).__name__}) must output a "
                                 f"4-D floating-point tensor (N, C, H, W) or tokens (N, T, D), got {got}")
            grid = None if output.dim() == 4 else token_grid_for(
                name, module, output.shape, self.token_grid, self.prefix_tokens, self.grid_source)
            try:  # at the first forward, not at the first backward
                self.gradient_mask.maps_per_sample(output.shape[1] if grid is None else output.shape[2])
            except ValueError as error:
                raise ValueError(f"gradmask target {name!r} ({type(module).__name__}): {error}") from None
            if self.enabled and output.requires_grad:
                if self._totals[name].device != output.device:  # the model moved since attach
                    self._move_totals(name, output.device)
                self._shapes[name] = (tuple(output.shape) if grid is None else
                                      (output.shape[0], output.shape[2], grid.height, grid.width))
                output.register_hook(functools.partial(self._mask_gradient, name, grid))
        hook.gradmask_handle = self  # lets mask_handles() find the handle from the model
        return hook

    @torch.compiler.disable  # a graph breaks here only at the first call after the model moved
    def _move_totals(self, name: str, device: torch.device) -> None:
        self._totals[name] = self._totals[name].to(device)

    def _mask_gradient(self, name: str, grid: Optional[TokenGrid], grad: torch.Tensor) -> Optional[torch.Tensor]:
        """The tensor hook: ``grad`` masked (a token target's ``(N, T, D)``: the patch tokens as the
        map ``(N, D, H, W)``, Algorithm 1 unchanged, the prefix tokens' gradient passed untouched),
        its statistics added to the target's totals on the device (no host sync)."""
        if not self.enabled:
            return None
        if grid is None:
            result = self.gradient_mask.apply(grad)
            self._totals[name].add_(result.totals)  # one in-place add on the device
            return result.gradient
        result = self.gradient_mask.apply(grid.to_map(grad))
        self._totals[name].add_(result.totals)
        return grid.to_tokens(result.gradient, grad[:, :grid.prefix])

    def stats(self) -> dict[str, dict]:
        """``{target: {"kept_fraction", "energy_kept", "calls", "shape", "maps", "nonfinite_maps",
        "tied_maps"}}`` since attach or ``reset_stats()``: ``energy_kept`` is the mean over calls of
        ``||masked||^2 / ||grad||^2`` (calls with an all-zero or non-finite gradient left out; None
        when there is none), ``maps`` counts the (sample, set) masks made,
        ``nonfinite_maps`` those whose gradient held a NaN or inf (kept there unchanged: the
        optimizer's or GradScaler's check sees it), ``tied_maps`` those where no position scored
        above the threshold (kept at the maximum, e.g. an all-zero gradient); see GradientMask."""
        result = {}
        for name, totals in self._totals.items():
            t = totals.tolist()  # one host sync per target
            calls = int(t[CALLS])
            result[name] = {"kept_fraction": t[KEPT] / t[POSITIONS] if t[POSITIONS] else None,
                            "energy_kept": t[ENERGY] / t[ENERGY_CALLS] if t[ENERGY_CALLS] else None,
                            "calls": calls, "shape": self._shapes[name] if calls else None, "maps": int(t[MAPS]),
                            "nonfinite_maps": int(t[NONFINITE]), "tied_maps": int(t[TIED])}
        return result

    def reset_stats(self) -> None:
        """Start the statistics again (new zero totals: a backward still running adds to the old ones)."""
        for name, totals in self._totals.items():  # the same dict (compiled code reads it)
            self._totals[name] = torch.zeros_like(totals)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        _forget_compiled_code()

    def __enter__(self) -> "MaskHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"MaskHandle({len(self.targets)} targets, enabled={self.enabled}, {self.gradient_mask})"


def _forget_compiled_code() -> None:
    """Drop the code ``torch.compile`` has compiled in this process, if any, so the next call
    compiles again with the hooks as they are now: Dynamo does not guard on module hooks
    (``torch._dynamo.config.skip_nnmodule_hook_guards``), so code compiled before hooks were added
    (or removed) would keep running without them (or with them)."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None and dynamo.convert_frame.FRAME_COUNTER:
        dynamo.reset()


def _attached_handle(module: nn.Module) -> Optional[MaskHandle]:
    """The :class:`MaskHandle` whose hook is on ``module``, or None."""
    for hook in module._forward_hooks.values():
        handle = getattr(hook, "gradmask_handle", None)
        if handle is not None:
            return handle
    return None


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
    for an attack or a saliency map); each handle's ``enabled`` is restored on exit. It acts on the
    models given only, never globally: with none it is a ``ValueError`` (as is an argument that is
    not a module)."""
    if not models:
        raise ValueError("no_gradient_mask() needs the models whose masks to switch off, e.g. "
                         "no_gradient_mask(model); it is not global (with none it would switch off nothing)")
    for model in models:
        if not isinstance(model, nn.Module):
            raise ValueError(f"no_gradient_mask() takes modules (no_gradient_mask(model_a, model_b)), got a "
                             f"{type(model).__name__}")
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
           skip_last: int = 2, token_grid: Optional[tuple[int, int]] = None,
           prefix_tokens: Optional[int] = None) -> MaskHandle:
    """Mask the gradient flowing into the outputs of ``targets`` of ``model``.

    ``targets=None``: every residual block except the last ``skip_last``; otherwise module names,
    name patterns, module types or modules (see :func:`resolve_targets`). ``model`` may be wrapped
    in DDP or ``torch.compile`` (names are the bare model's).
    Targets that output tokens ``(N, T, D)`` are masked on their patch grid: ``token_grid=(H, W)``
    and ``prefix_tokens=P`` (``T = P + H*W``) default to what the model states
    (:func:`declared_token_grid`), else to a square grid without prefix tokens.
    Returns a :class:`MaskHandle`, usable as a context manager.
    """
    if not isinstance(gradient_mask, GradientMask):
        raise ValueError(f"gradient_mask must be a gradmask.GradientMask, got {type(gradient_mask).__name__}")
    _check_token_grid(token_grid, prefix_tokens)
    model = unwrap_model(model)
    resolved = resolve_targets(model, targets, skip_last)
    declared_grid, declared_prefix = declared_token_grid(model)
    given = token_grid is not None or prefix_tokens is not None
    return MaskHandle(gradient_mask, resolved,
                      token_grid=token_grid if token_grid is not None else declared_grid,
                      prefix_tokens=prefix_tokens if prefix_tokens is not None else declared_prefix,
                      grid_source="given to attach" if given else "stated by the model")
