"""Kernel agreement: how far the paper's lateral mask is from a plain blur of the minicolumn norms.

With sigma 11 on a 5x5 window every tap of eq. (2) is negative and nearly equal (the LoG's zero
crossing is at ``sqrt(2) sigma`` = 15.6 px, far outside the window), so ``|LoG(norms)|`` is a
weighted blur of the norms. This script measures what that means for the masks: on real activation
gradients of the narrow ResNet-18 (CIFAR stem, 10 classes) at the default mask targets (every
residual block but the last two), it computes per sample and channel set the keep-masks of

- ``lateral``: the paper's mask (:class:`gradmask.GradientMask`: sigma 11, 5x5 eq. 2, reflect
  padding, rate 0.5, ``--groups`` sets);
- ``box``: a plain 5x5 box blur (mean) of the minicolumn norms, with the same padding,
  thresholded by the same rule (:func:`keep_of_scores`: the ``rate`` quantile per sample and set,
  ``torch.quantile``'s definition, ties dropped unless the threshold is the map's maximum);
- ``centre-surround``: the lateral mask with sigma 1 (5x5): negative centre, positive surround;
- ``norm``: the minicolumn norms thresholded directly (Table 2's "without LI"),

and reports the agreement of every pair (share of positions where two masks agree; two
independent masks that keep half of each map agree on 50% by chance) per target and pooled over
all targets' positions, as mean, standard deviation, min and max over batches. Measured at
initialisation and after a short plain training (SGD, no mask: ``--train-images`` images x
``--epochs``, crop-flip). Gradients are those of ordinary backpropagation (no mask attached) of the
mean cross-entropy, in train mode (batch statistics, as in training), on a fixed draw of the test
split. It also prints the 5x5 taps of eq. (2) for sigma 11 and sigma 1.

Data: the CIFAR-10 archive given with ``--data`` (e.g. ``cifar10-jpeg.tar.gz``, or the python
release); without it the built-in synthetic data (the output says which).

    OMP_NUM_THREADS=1 python benchmarks/kernel_agreement.py --data ../shared/data/cifar10-jpeg.tar.gz \\
        --json kernel-agreement.json
    python benchmarks/kernel_agreement.py --train-images 0     # synthetic data, initialisation only
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

import gradmask
from gradmask.data import load_dataset, make_synthetic, random_crop_flip, subset_index, to_float
from gradmask.laplacian import LoGFilter, filter_matrix
from gradmask.selection import kth_smallest_and_max
from gradmask.util.files import write_atomic

MASKS = ("lateral", "box", "centre-surround", "norm")
PAIRS = tuple(itertools.combinations(MASKS, 2))
KERNEL_SIZE = 5
_MINUS_INF = torch.tensor(-math.inf, dtype=torch.float64)


# --- the masks ----------------------------------------------------------------------------------

def minicolumn_norms(grad: torch.Tensor, groups: int) -> torch.Tensor:
    """``grad`` ``(N, C, H, W)`` -> float64 ``(N, groups, H, W)``: per sample, set of ``C/groups``
    consecutive channels and pixel the L2 norm of the set's gradients (eq. 12-13)."""
    n, c, h, w = grad.shape
    if c % groups:
        raise ValueError(f"groups={groups} must divide the channel count C={c}")
    return torch.linalg.vector_norm(grad.reshape(n, groups, c // groups, h, w), dim=2, dtype=torch.float64)


def box_blur(maps: torch.Tensor, size: int = KERNEL_SIZE, padding: str = "reflect") -> torch.Tensor:
    """``maps`` ``(..., H, W)`` -> same shape and dtype: the mean over the ``size x size`` window,
    with the border handled as gradmask's LoG does (``padding="reflect"``: mirror without repeating
    the edge, scipy's ``mode="mirror"``; ``"zero"``: zeros). A separable filter: two matrix
    products with :func:`gradmask.laplacian.filter_matrix`'s matrices."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be an odd integer >= 1, got {size}")
    height, width = maps.shape[-2:]
    taps = np.full(size, 1.0 / size)
    rows = torch.as_tensor(filter_matrix(taps, height, padding), dtype=maps.dtype, device=maps.device)
    cols = torch.as_tensor(filter_matrix(taps, width, padding), dtype=maps.dtype, device=maps.device)
    return rows @ maps @ cols.T


def keep_of_scores(scores: torch.Tensor, rate: float) -> torch.Tensor:
    """Scores ``(N, G, H, W)`` (finite, >= 0) -> boolean keep-mask of the same shape, by
    :class:`gradmask.GradientMask`'s rule per sample and set: the threshold is the ``rate``
    quantile of the map (``torch.quantile``'s linear interpolation, i.e. the order statistic of rank
    ``floor(rate (n - 1)) + 1``), a position is kept where its score is above it; in a map where no
    score is above it (the threshold is the maximum) the positions equal to it are kept."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return torch.ones_like(scores, dtype=torch.bool)
    n, g, h, w = scores.shape
    flat = scores.reshape(n * g, h * w)
    rank = math.floor(rate * (h * w - 1)) + 1
    threshold, largest = kth_smallest_and_max(flat, rank, nonnegative=True)
    keep_above = torch.minimum(threshold, torch.nextafter(largest, _MINUS_INF.to(largest.dtype)))
    return (flat > keep_above).view(n, g, h, w)


def box_blur_keep(grad: torch.Tensor, groups: int, rate: float, size: int = KERNEL_SIZE,
                  padding: str = "reflect") -> torch.Tensor:
    """``grad`` ``(N, C, H, W)`` -> boolean ``(N, groups, H, W)``: the ``size x size`` box blur of
    the minicolumn norms, thresholded per sample and set by :func:`keep_of_scores`."""
    return keep_of_scores(box_blur(minicolumn_norms(grad, groups), size, padding), rate)


def mask_makers(groups: int, rate: float, sigma: float = 11.0, surround_sigma: float = 1.0) -> dict:
    """``{mask name: fn(grad (N, C, H, W)) -> bool (N, groups, H, W)}`` for :data:`MASKS`."""
    common = dict(groups=groups, kernel_size=KERNEL_SIZE, padding="reflect", inhibition_rate=rate)
    lateral = gradmask.GradientMask(sigma=sigma, mode="lateral", **common)
    surround = gradmask.GradientMask(sigma=surround_sigma, mode="lateral", **common)
    norm = gradmask.GradientMask(sigma=sigma, mode="norm", **common)
    return {"lateral": lambda g: lateral.keep_map(g)[:, :, 0],
            "box": lambda g: box_blur_keep(g, groups, rate),
            "centre-surround": lambda g: surround.keep_map(g)[:, :, 0],
            "norm": lambda g: norm.keep_map(g)[:, :, 0]}


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of positions where two boolean masks of the same shape agree."""
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a == b).double().mean().item()


def agreement_matrix(masks: list) -> np.ndarray:
    """``M`` boolean masks of one shape -> ``(M, M)`` symmetric matrix of pairwise agreement."""
    out = np.ones((len(masks), len(masks)))
    for i, j in itertools.combinations(range(len(masks)), 2):
        out[i, j] = out[j, i] = agreement(masks[i], masks[j])
    return out


# --- the LoG taps ---------------------------------------------------------------------------------

def log_taps(sigma: float, size: int = KERNEL_SIZE) -> np.ndarray:
    """The ``size x size`` taps of eq. (2) that gradmask filters with (float64)."""
    return LoGFilter(sigma=sigma, kernel_size=size).kernel2d(size, size)


def zero_crossing(sigma: float) -> float:
    """Radius (px) where eq. (2) changes sign: ``1 - r^2 / (2 sigma^2) = 0``."""
    return math.sqrt(2.0) * sigma


# --- the measurement ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """A figure over batches: mean, sample standard deviation (0 for one batch), min, max."""
    mean: float
    std: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list) -> "Spread":
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                   min(values), max(values))


@dataclass(frozen=True)
class TargetAgreement:
    """One target (``"all"``: every target's positions pooled): agreement per pair
    (``"lateral~box"``), the kept fraction per mask, over batches."""
    target: str
    shape: Optional[tuple]          # (C, H, W) of the activation, None for "all"
    channels_per_set: Optional[int]
    agreement: dict
    kept: dict


@dataclass(frozen=True)
class TrainingSummary:
    images: int
    epochs: int
    batch_size: int
    lr: float
    loss: float                     # mean training loss of the last epoch
    accuracy: float                 # running training accuracy of the last epoch
    seconds: float


@dataclass(frozen=True)
class Phase:
    """The measurement at one state of the weights."""
    name: str                       # "init" or "trained"
    training: Optional[TrainingSummary]
    eval_accuracy: float            # eval-mode accuracy on the measured images
    targets: list                   # TargetAgreement per target, then "all"


def pair_name(a: str, b: str) -> str:
    return f"{a}~{b}"


def target_gradients(model: torch.nn.Module, targets: dict, images: torch.Tensor,
                     labels: torch.Tensor) -> dict:
    """``{name: dL/d output (N, C, H, W)}`` at each target's output for the mean cross-entropy of
    one batch (plain backpropagation, the model's current mode)."""
    outputs = {}
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
               for name, module in targets.items()]
    try:
        loss = F.cross_entropy(model(images), labels)
    finally:
        for handle in handles:
            handle.remove()
    grads = torch.autograd.grad(loss, [outputs[name] for name in targets])
    return dict(zip(targets, grads))


def measure(model: torch.nn.Module, batches: list, groups: int, rate: float) -> list:
    """Agreement of the :data:`MASKS` at every default target, per batch -> TargetAgreement per
    target and pooled ("all"). Runs on a copy of ``model`` in train mode (its running statistics are
    not touched)."""
    model = copy.deepcopy(model).train()
    targets = gradmask.default_targets(model)
    makers = mask_makers(groups, rate)
    per_target = {name: {"agree": {p: [] for p in PAIRS}, "kept": {m: [] for m in MASKS}} for name in targets}
    pooled = {p: [] for p in PAIRS}
    pooled_kept = {m: [] for m in MASKS}
    shapes = {}
    for images, labels in batches:
        grads = target_gradients(model, targets, images, labels)
        agree_count = dict.fromkeys(PAIRS, 0)
        kept_count = dict.fromkeys(MASKS, 0)
        positions = 0
        for name, grad in grads.items():
            if not torch.isfinite(grad).all():
                raise ValueError(f"the gradient at {name} holds NaN or inf")
            shapes[name] = tuple(grad.shape[1:])
            masks = {m: make(grad) for m, make in makers.items()}
            for a, b in PAIRS:
                agree = (masks[a] == masks[b]).sum().item()
                per_target[name]["agree"][(a, b)].append(agree / masks[a].numel())
                agree_count[(a, b)] += agree
            for m, keep in masks.items():
                per_target[name]["kept"][m].append(keep.double().mean().item())
                kept_count[m] += keep.sum().item()
            positions += masks["lateral"].numel()
        for p in PAIRS:
            pooled[p].append(agree_count[p] / positions)
        for m in MASKS:
            pooled_kept[m].append(kept_count[m] / positions)

    def row(target, shape, agree, kept):
        return TargetAgreement(target, shape, None if shape is None else shape[0] // groups,
                               {pair_name(*p): Spread.of(v) for p, v in agree.items()},
                               {m: Spread.of(v) for m, v in kept.items()})

    return ([row(name, shapes[name], v["agree"], v["kept"]) for name, v in per_target.items()]
            + [row("all", None, pooled, pooled_kept)])


def eval_accuracy(model: torch.nn.Module, batches: list) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in batches)
    return correct / sum(len(y) for _, y in batches)


def train_briefly(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int,
                  batch_size: int, lr: float, seed: int) -> TrainingSummary:
    """Plain SGD (momentum 0.9, weight decay 5e-4, constant ``lr``, no mask) on uint8 ``images``
    ``(N, 3, H, W)`` with random crop (4 px) and flip, ``epochs`` passes in a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        losses, correct = [], 0
        for index in torch.randperm(len(images), generator=generator).split(batch_size):
            x = random_crop_flip(images[index], generator=generator)
            logits = model(x)
            loss = F.cross_entropy(logits, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item() * len(index))
            correct += (logits.argmax(1) == labels[index]).sum().item()
    return TrainingSummary(len(images), epochs, batch_size, lr, sum(losses) / len(images), correct / len(images),
                           time.perf_counter() - start)


# --- output ---------------------------------------------------------------------------------------

def _cell(s: Spread) -> str:
    return f"{100 * s.mean:5.1f} [{100 * s.low:5.1f}, {100 * s.high:5.1f}]"


def phase_table(phase: Phase) -> str:
    """A markdown table: one row per target and the pooled row, one column per pair
    (mean [min, max] over batches, %)."""
    header = ["target", "map", "ch/set"] + [pair_name(*p) for p in PAIRS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in phase.targets:
        if t.shape is None:
            cells = ["all targets, pooled", "", ""]
        else:
            cells = [t.target, f"{t.shape[1]}x{t.shape[2]}", str(t.channels_per_set)]
        lines.append("| " + " | ".join(cells + [_cell(t.agreement[pair_name(*p)]) for p in PAIRS]) + " |")
    return "\n".join(lines)


def taps_text(sigma: float, taps: np.ndarray) -> str:
    scaled = taps / np.abs(taps).max()
    rows = "\n".join("    " + " ".join(f"{v:+.3f}" for v in row) for row in scaled)
    sign = ("every tap negative" if (taps < 0).all() else
            f"{int((taps < 0).sum())} negative, {int((taps > 0).sum())} positive, {int((taps == 0).sum())} zero")
    return (f"eq. (2), sigma {sigma:g}, {taps.shape[0]}x{taps.shape[1]}, divided by max |tap| "
            f"({np.abs(taps).max():.3e}): {sign}; scaled taps from {scaled.min():+.3f} to {scaled.max():+.3f}; "
            f"zero crossing at r = sqrt(2) sigma = {zero_crossing(sigma):.2f} px (farthest tap: r = "
            f"{math.hypot(*(np.array(taps.shape) // 2)):.2f} px)\n{rows}")


def revision() -> Optional[str]:
    """The checkout's commit (with "+dirty" when files differ from it), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def load_images(data: Optional[str], split: str, limit: int, seed: int) -> tuple:
    """``(images uint8 (n, 3, 32, 32), labels, description)``: a fixed draw of ``limit`` images of
    CIFAR-10's ``split`` from the archive ``data``, or of the synthetic data without it."""
    if data is None:
        ds = make_synthetic(limit, split=split, seed=seed)
        return ds.images, ds.labels, f"built-in synthetic data ({ds.source}, {split} split)"
    ds = load_dataset("cifar10", root=data, split=split)
    index = subset_index(len(ds), limit, seed)
    ds = ds if index is None else ds.subset(index)
    return ds.images, ds.labels, f"CIFAR-10 from {data} ({split} split)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="CIFAR-10 archive or folder (default: built-in synthetic data)")
    parser.add_argument("--batches", type=int, default=8, help="measured batches (default 8)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per measured batch (default 128)")
    parser.add_argument("--groups", type=int, default=4, help="channel sets (default 4: 4/8/16 channels per set)")
    parser.add_argument("--rate", type=float, default=0.5, help="inhibition rate in [0, 1) (default 0.5)")
    parser.add_argument("--train-images", type=int, default=10000,
                        help="training images for the short training (default 10000; 0: initialisation only)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the short training (default 1)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    for name in ("batches", "batch_size", "groups", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.train_images < 0:
        parser.error(f"--train-images must be >= 0, got {args.train_images}")
    if not 0.0 < args.rate < 1.0:
        parser.error(f"--rate must be in (0, 1), got {args.rate}")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.data is not None and not Path(args.data).exists():
        parser.error(f"--data {args.data} does not exist")
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        parser.error(f"--json {args.json}: its folder does not exist")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = gradmask.create_model("resnet18_narrow", 10, stem="cifar")
    probe = target_gradients(model, gradmask.default_targets(model), torch.rand(2, 3, 32, 32), torch.zeros(2).long())
    for name, grad in probe.items():  # fail before any work
        if grad.shape[1] % args.groups:
            raise SystemExit(f"--groups {args.groups} must divide the {grad.shape[1]} channels of target {name}")
    test_images, test_labels, source = load_images(args.data, "test", args.batches * args.batch_size, args.seed)
    if len(test_images) < args.batches * args.batch_size:
        raise SystemExit(f"the test split has {len(test_images)} images, fewer than --batches x --batch-size")
    batches = [(to_float(x), y) for x, y in zip(test_images.split(args.batch_size), test_labels.split(args.batch_size))]
    command = " ".join(["python benchmarks/kernel_agreement.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"kernel agreement: resnet18_narrow (CIFAR stem, 10 classes), default targets, groups {args.groups}, "
          f"rate {args.rate}, 5x5 windows, reflect padding; {args.batches} batches x {args.batch_size} images of "
          f"{source}; torch {torch.__version__}, {torch.get_num_threads()} threads; code {revision()}")
    print("two independent masks that each keep a share k of positions agree on k^2 + (1-k)^2 of them by chance "
          "(50% at k = 0.5)\n")
    taps = {sigma: log_taps(sigma) for sigma in (11.0, 1.0)}
    for sigma, t in taps.items():
        print(taps_text(sigma, t) + "\n")

    phases = []
    start = time.perf_counter()
    phases.append(Phase("init", None, eval_accuracy(model, batches), measure(model, batches, args.groups, args.rate)))
    if args.train_images:
        train_images, train_labels, _ = load_images(args.data, "train", args.train_images, args.seed)
        training = train_briefly(model, train_images, train_labels, args.epochs, 128, args.lr, args.seed)
        phases.append(Phase("trained", training, eval_accuracy(model, batches),
                            measure(model, batches, args.groups, args.rate)))
    for phase in phases:
        if phase.training is None:
            title = "at initialisation"
        else:
            t = phase.training
            title = (f"after training: {t.images} images x {t.epochs} epoch(s), plain SGD lr {t.lr:g} momentum 0.9, "
                     f"batch {t.batch_size}, crop-flip, no mask; last-epoch train loss {t.loss:.3f}, "
                     f"running accuracy {100 * t.accuracy:.1f}%, {t.seconds:.0f} s")
        print(f"## {phase.name}: {title}; eval accuracy on the measured images {100 * phase.eval_accuracy:.1f}%")
        print("agreement, % of positions: mean [min, max] over batches\n")
        print(phase_table(phase) + "\n")
        kept = phase.targets[-1].kept
        print("kept share (all targets): " + ", ".join(f"{m} {100 * kept[m].mean:.2f}%" for m in MASKS) + "\n")
    print(f"measured in {time.perf_counter() - start:.0f} s")

    result = {"command": command, "revision": revision(), "data": source, "model": "resnet18_narrow",
              "groups": args.groups, "rate": args.rate, "batches": args.batches, "batch_size": args.batch_size,
              "seed": args.seed, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "masks": {"lateral": "GradientMask sigma 11, 5x5 eq. 2, reflect",
                        "box": "5x5 box blur of the minicolumn norms, reflect, same threshold rule",
                        "centre-surround": "GradientMask sigma 1, 5x5 eq. 2, reflect",
                        "norm": "GradientMask mode norm"},
              "taps": {f"sigma={sigma:g}": {"taps": t.tolist(), "scaled": (t / np.abs(t).max()).tolist(),
                                            "zero_crossing_px": zero_crossing(sigma)} for sigma, t in taps.items()},
              "phases": [asdict(p) for p in phases]}
    if args.json is not None:
        write_atomic(args.json, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
