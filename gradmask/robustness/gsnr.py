"""Gradient signal-to-noise ratio (Liu et al., ICLR 2020; the paper's Fig. 7).

For each parameter element ``j`` and per-sample gradients ``g_1j .. g_nj`` of the loss:

    GSNR_j = mean_j^2 / (var_j + eps),   var_j = sum_i (g_ij - mean_j)^2 / (n - ddof)

``ddof=1`` (the unbiased sample variance, n >= 2 samples) by default; ``eps = 1e-30`` keeps an
element whose per-sample gradients are all identical (variance exactly 0) finite: its GSNR is
``mean^2 / 1e-30`` (e.g. 1e30 for a mean of 1), and an element with zero gradient everywhere gets 0.
Moments are merged across chunks in float64; the result is float64.

Per-sample gradients come from ``torch.func``: ``vmap(grad(loss of one sample))`` over chunks of
``chunk_size`` samples (memory: ``chunk_size`` x the measured parameters, float32). Each chunk's
mean and variance come from one ``torch.var_mean`` pass (Welford), chunks are merged in float64
with Chan et al.'s pairwise mean / sum-of-squared-deviations update, so chunked and unchunked
results agree to rounding and identical gradients give a variance of exactly 0.

The model runs in **eval mode** (restored afterwards): BatchNorm uses its running statistics, so
each sample's gradient depends on that sample only (batch statistics would couple the samples, and
per-sample gradients need them independent).

The gradient mask: tensor hooks (what :func:`gradmask.attach` installs) do not work under ``vmap``
(the mask's LoG / order-statistic kernels have no batching rule: ``aten::bmm.out``, numpy). So with
a mask the per-sample gradients are computed through a functional re-implementation of the hook:
forward hooks on the targets return ``MaskGrad.apply(output)``, an identity whose backward applies
the :class:`GradientMask` to the incoming gradient. Under ``vmap`` that backward receives the whole
chunk of per-sample activation gradients at once (a custom ``vmap`` rule) and applies the mask to
them as one batch, which is exact because a sample's mask depends only on its own gradient
(quantile per sample). The result equals one masked backward per sample with the real hooks
(tested). ``gradient_mask="auto"`` (default) uses the enabled MaskHandles found on the model
(their GradientMask and targets), so during training the probe measures the gradients the
optimiser sees; ``None`` measures plain gradients; a ``GradientMask`` is applied at
``mask_targets`` (default: every residual block but the last ``skip_last``). The model's own
handles are switched off during the measurement and restored.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from tqdm import tqdm

from ..data.augment import as_images
from ..hooks import mask_handles, no_gradient_mask, resolve_targets
from ..mask import GradientMask
from ..models import eval_mode, model_device
from ..util.files import write_atomic

DEFAULT_EPS = 1e-30
GSNR_FILE = "gsnr.jsonl"


# --------------------------------------------------------------------- the mask under vmap

class _ApplyMask(torch.autograd.Function):
    """``gradient_mask(grad)`` on a real ``(N, C, H, W)`` tensor; under ``vmap`` the batch of
    per-sample gradients ``(B, N, C, H, W)`` is flattened to ``(B*N, C, H, W)`` and masked at once
    (exact: each sample's mask depends on its own gradient only). First order only."""

    @staticmethod
    def forward(g: torch.Tensor, gradient_mask: GradientMask) -> torch.Tensor:
        return gradient_mask(g)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad_output):
        raise RuntimeError("gradmask GSNR: the masked gradient is not differentiable (first order only)")

    @staticmethod
    def vmap(info, in_dims, g, gradient_mask):
        dim = in_dims[0]
        if dim is None:
            return _ApplyMask.apply(g, gradient_mask), None
        g = g.movedim(dim, 0)
        flat = g.reshape(g.shape[0] * g.shape[1], *g.shape[2:])
        return _ApplyMask.apply(flat, gradient_mask).reshape(g.shape), 0


class MaskGrad(torch.autograd.Function):
    """Identity forward; backward = the gradient mask applied to the incoming gradient. Works under
    ``torch.func.grad`` / ``vmap`` (the functional twin of :class:`gradmask.MaskHandle`'s hook)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, gradient_mask: GradientMask) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.gradient_mask = inputs[1]

    @staticmethod
    def backward(ctx, grad_output):
        return _ApplyMask.apply(grad_output, ctx.gradient_mask), None


@contextlib.contextmanager
def functional_mask(pairs: Sequence[tuple[nn.Module, GradientMask]]):
    """Forward hooks making each ``(module, gradient_mask)``'s output ``MaskGrad.apply(output)``
    inside the block. Several masks on one module act in the given order in backward, as tensor
    hooks registered in that order would."""
    by_module: dict[int, tuple[nn.Module, list[GradientMask]]] = {}
    for module, gm in pairs:
        by_module.setdefault(id(module), (module, []))[1].append(gm)

    def make_hook(masks: list[GradientMask]):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 4 or not output.is_floating_point():
                raise ValueError(f"gradient mask target {type(module).__name__} must output a 4-D "
                                 f"floating-point tensor (N, C, H, W)")
            for gm in reversed(masks):  # the last applied in forward acts first in backward
                output = MaskGrad.apply(output, gm)
            return output
        return hook

    handles = [module.register_forward_hook(make_hook(masks)) for module, masks in by_module.values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _mask_pairs(model: nn.Module, gradient_mask, mask_targets, skip_last: int
                ) -> list[tuple[str, nn.Module, GradientMask]]:
    if gradient_mask is None:
        return []
    if isinstance(gradient_mask, str):
        if gradient_mask != "auto":
            raise ValueError(f"gradient_mask must be 'auto', None or a gradmask.GradientMask, got {gradient_mask!r}")
        names = {id(m): n for n, m in model.named_modules()}
        pairs = []
        for handle in mask_handles(model):
            if handle.enabled:
                pairs += [(names.get(id(m), name), m, handle.gradient_mask) for name, m in handle.targets.items()]
        return pairs
    if not isinstance(gradient_mask, GradientMask):
        raise ValueError(f"gradient_mask must be 'auto', None or a gradmask.GradientMask, "
                         f"got {type(gradient_mask).__name__}")
    return [(n, m, gradient_mask) for n, m in resolve_targets(model, mask_targets, skip_last).items()]


# --------------------------------------------------------------------- GSNR

@contextlib.contextmanager
def _per_sample(model: nn.Module, loss_fn: Optional[Callable], params, gradient_mask, mask_targets, skip_last: int):
    """Yields ``(fn, names, pairs)``: ``fn(x_chunk, y_chunk) -> {name: (B, *shape)}`` per-sample
    gradients of the selected parameters, with the model in eval mode, its own mask handles off and
    the functional mask at ``pairs`` on (all restored on exit)."""
    loss_fn = loss_fn or F.cross_entropy
    names = _select(model, params)
    pairs = _mask_pairs(model, gradient_mask, mask_targets, skip_last)
    chosen = set(names)
    frozen = {k: v.detach() for k, v in model.named_parameters() if k not in chosen}
    frozen.update(dict(model.named_buffers()))
    weights = {k: v.detach() for k, v in model.named_parameters() if k in chosen}

    def sample_loss(p, x, y):
        out = functional_call(model, (p, frozen), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    batched = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(model))
        stack.enter_context(no_gradient_mask(model))
        stack.enter_context(functional_mask([(m, gm) for _, m, gm in pairs]))
        yield (lambda x, y: batched(weights, x, y)), names, pairs


def per_sample_gradients(model: nn.Module, loss_fn: Optional[Callable], inputs: torch.Tensor,
                         targets: torch.Tensor, chunk_size: int = 64, *, params=None,
                         gradient_mask: Union[str, GradientMask, None] = "auto", mask_targets=None,
                         skip_last: int = 2) -> dict[str, torch.Tensor]:
    """``{name: (N, *param.shape)}``: every sample's gradient, as :func:`gsnr` computes them (eval
    mode, the gradient mask as ``gradient_mask`` says). Holds all N of them: for small N."""
    inputs = as_images(inputs, "inputs") if inputs.dim() == 4 else inputs
    targets = torch.as_tensor(targets)
    out: dict[str, list] = {}
    with _per_sample(model, loss_fn, params, gradient_mask, mask_targets, skip_last) as (fn, names, _):
        device = model_device(model)
        inputs, targets = inputs.to(device), targets.to(device)
        for start in range(0, inputs.shape[0], chunk_size):
            g = fn(inputs[start:start + chunk_size], targets[start:start + chunk_size])
            for k in names:
                out.setdefault(k, []).append(g[k])
    return {k: torch.cat(v) for k, v in out.items()}


class GSNRResult(dict):
    """``{parameter name: per-element GSNR (float64, the parameter's shape)}`` with attributes
    ``n_samples``, ``masked`` (the mask targets' names, empty without a mask) and ``eps``, ``ddof``."""

    n_samples: int = 0
    masked: list
    eps: float = DEFAULT_EPS
    ddof: int = 1


def _select(model: nn.Module, params) -> list[str]:
    named = [(n, p) for n, p in model.named_parameters()]
    if params is None or params == "all":
        chosen = [n for n, p in named if p.requires_grad]
    elif params == "conv":
        modules = dict(model.named_modules())
        chosen = [n for n, _ in named if n.endswith(".weight")
                  and isinstance(modules.get(n.rsplit(".", 1)[0]), nn.modules.conv._ConvNd)]
    elif callable(params):
        chosen = [n for n, p in named if params(n, p)]
    else:
        wanted = [params] if isinstance(params, str) else list(params)
        known = {n for n, _ in named}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise ValueError(f"params names no parameter of {type(model).__name__}: {unknown[:5]}")
        chosen = [n for n, _ in named if n in wanted]
    if not chosen:
        raise ValueError(f"params={params!r} selects no parameter of {type(model).__name__}")
    return chosen


def gsnr(model: nn.Module, loss_fn: Optional[Callable], inputs: torch.Tensor, targets: torch.Tensor,
         chunk_size: int = 64, *, params: Union[None, str, Sequence[str], Callable] = None,
         gradient_mask: Union[str, GradientMask, None] = "auto", mask_targets=None, skip_last: int = 2,
         eps: float = DEFAULT_EPS, ddof: int = 1, progress: bool = False) -> GSNRResult:
    """Per-element GSNR of ``model``'s parameters over the samples ``inputs`` / ``targets``.

    ``loss_fn(logits of one sample (1, ...), its target (1, ...)) -> scalar`` (default / None:
    cross-entropy); ``inputs`` images in [0, 1] ``(N, C, H, W)`` (uint8 is divided by 255);
    ``chunk_size`` samples per ``vmap`` call (bounds memory). ``params``: None / ``"all"`` (every
    trainable parameter), ``"conv"`` (convolution weights), a list of names or a predicate
    ``f(name, param)``. ``gradient_mask``: ``"auto"`` (the model's enabled MaskHandles), None
    (plain gradients) or a :class:`GradientMask` at ``mask_targets``. See the module docstring for
    the estimator, ``eps`` and ``ddof``. The model runs in eval mode, restored afterwards;
    parameters' ``.grad`` are untouched.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 (population variance) or 1 (sample variance), got {ddof!r}")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1:
        raise ValueError(f"inputs must be a tensor with a sample dimension, got {type(inputs).__name__}")
    if inputs.dim() == 4:
        inputs = as_images(inputs, "inputs")
    targets = torch.as_tensor(targets)
    n = inputs.shape[0]
    if targets.shape[:1] != (n,):
        raise ValueError(f"targets must have one entry per input ({n}), got shape {tuple(targets.shape)}")
    if n <= ddof:
        raise ValueError(f"inputs must hold at least {ddof + 1} samples for a variance (ddof={ddof}), got {n}")
    count = 0
    mean: dict[str, torch.Tensor] = {}
    m2: dict[str, torch.Tensor] = {}
    with _per_sample(model, loss_fn, params, gradient_mask, mask_targets, skip_last) as (per_sample, names, pairs):
        inputs, targets = inputs.to(model_device(model)), targets.to(model_device(model))
        chunks = range(0, n, chunk_size)
        for start in tqdm(chunks, desc="GSNR", unit="chunk", disable=not progress, leave=False):
            g = per_sample(inputs[start:start + chunk_size], targets[start:start + chunk_size])
            b = next(iter(g.values())).shape[0]
            for k in names:
                # the chunk's mean and sum of squared deviations in one pass (Welford; on CPU it
                # accumulates float32 in double): exactly 0 for identical gradients
                var_b, m_b = torch.var_mean(g[k], dim=0, correction=0)
                m_b, m2_b = m_b.to(torch.float64), var_b.to(torch.float64) * b
                if k not in mean:
                    mean[k], m2[k] = m_b, m2_b
                else:  # Chan, Golub & LeVeque: merge (count, mean, m2) with (b, m_b, m2_b)
                    delta = m_b - mean[k]
                    total = count + b
                    mean[k] = mean[k] + delta * (b / total)
                    m2[k] = m2[k] + m2_b + delta.square() * (count * b / total)
            count += b
            del g
    result = GSNRResult()
    result.n_samples, result.masked, result.eps, result.ddof = count, [name for name, _, _ in pairs], float(eps), ddof
    for k in names:
        var = m2[k] / (count - ddof)
        result[k] = mean[k].square() / (var + eps)
    return result


def layer_of(param_name: str) -> str:
    """The module a parameter belongs to (``"layer1.0.conv1.weight"`` -> ``"layer1.0.conv1"``)."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def gsnr_summary(result: dict) -> dict[str, float]:
    """``{layer: mean GSNR over the layer's measured elements, ..., "network": mean over all
    measured elements}`` (layers in parameter order; a layer is a parameter's owning module)."""
    sums: dict[str, list] = {}
    for name, values in result.items():
        entry = sums.setdefault(layer_of(name), [0.0, 0])
        entry[0] += float(values.to(torch.float64).sum())
        entry[1] += values.numel()
    out = {layer: (s / c if c else math.nan) for layer, (s, c) in sums.items()}
    total = sum(c for _, c in sums.values())
    out["network"] = sum(s for s, _ in sums.values()) / total if total else math.nan
    return out


# --------------------------------------------------------------------- training callback

class GSNRProbe:
    """A :func:`gradmask.train.train` callback: every ``every`` epochs, the GSNR of the
    convolution weights (``params``) on fixed probe samples, appended to ``<run>/gsnr.jsonl``
    (``out_dir`` overrides the folder) as ``{"epoch", "network", "layers": {layer: value},
    "n_samples", "masked"}``; the network value also goes into the epoch's metrics record as
    ``gsnr_network``. The model is measured as it trains: with its gradient mask when the run has
    one (``gradient_mask="auto"``). Only the main process measures and writes. At the start of a
    run, records of epochs after the starting epoch are dropped (a fresh run starts an empty file;
    a resumed one continues it).

        train(config, callbacks=[GSNRProbe(images[:512], labels[:512], every=5)])
        plot_gsnr(["runs/none-seed0", "runs/lateral-seed0"], "gsnr.png")
    """

    def __init__(self, probe_images: torch.Tensor, probe_labels: torch.Tensor, every: int = 1,
                 out_dir: Union[str, os.PathLike, None] = None, *, loss_fn: Optional[Callable] = None,
                 chunk_size: int = 64, params="conv", gradient_mask="auto", progress: bool = False):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1 (epochs between measurements), got {every!r}")
        self.images = as_images(probe_images, "probe_images").detach()
        self.labels = torch.as_tensor(probe_labels).detach()
        if self.labels.shape[:1] != self.images.shape[:1] or self.images.shape[0] < 2:
            raise ValueError(f"probe_images ({self.images.shape[0]}) and probe_labels ({tuple(self.labels.shape)}) "
                             f"must hold the same number (>= 2) of samples")
        self.every, self.out_dir = every, out_dir
        self.loss_fn, self.chunk_size, self.params = loss_fn, chunk_size, params
        self.gradient_mask, self.progress = gradient_mask, progress

    def _path(self, ctx) -> Path:
        folder = Path(self.out_dir) if self.out_dir is not None else Path(ctx.run_dir.path)
        return folder / GSNR_FILE

    def on_train_start(self, ctx) -> None:
        if not ctx.is_main:
            return
        path = self._path(ctx)
        if path.is_file():
            keep = [r for r in read_gsnr(path) if r.get("epoch", 0) <= ctx.epoch]
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))

    def measure(self, model: nn.Module) -> dict:
        result = gsnr(model, self.loss_fn, self.images, self.labels, self.chunk_size, params=self.params,
                      gradient_mask=self.gradient_mask, progress=self.progress)
        summary = gsnr_summary(result)
        network = summary.pop("network")
        return {"network": network, "layers": summary, "n_samples": result.n_samples, "masked": result.masked}

    def on_epoch_end(self, ctx, record: dict) -> None:
        if not ctx.is_main or ctx.epoch % self.every:
            return
        entry = {"epoch": ctx.epoch, **self.measure(ctx.model)}
        record["gsnr_network"] = entry["network"]
        path = self._path(ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_finite(entry)) + "\n")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read_gsnr(path_or_run_dir: Union[str, os.PathLike]) -> list[dict]:
    """The records of a ``gsnr.jsonl`` (or of the one in a run directory); [] if there is none."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        path = path / GSNR_FILE
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    warnings.warn(f"{path}: skipping a damaged line", RuntimeWarning, stacklevel=2)
    return records


__all__ = ["DEFAULT_EPS", "GSNRProbe", "GSNRResult", "GSNR_FILE", "MaskGrad",
           "functional_mask", "gsnr", "per_sample_gradients", "gsnr_summary", "layer_of", "read_gsnr"]
