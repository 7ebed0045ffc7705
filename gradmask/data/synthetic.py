"""Built-in procedural dataset: one object per image on a cluttered background.

Each image (3, S, S) holds one object of a class with a specific form and
texture (disc, square, triangle, ring, cross, star, ellipse, diamond,
stripe-filled disc, checker-filled square) with random colour, scale, small
rotation and position, drawn over low-frequency colour noise and distractor
strokes / blobs / textured patches.  The object's ground-truth box
(x0, y0, x1, y1) (pixels, x1/y1 exclusive) and pixel mask are returned too.

Deterministic: image ``i`` depends only on (seed, split, i, parameters), so the
same seed gives bit-identical tensors and a shorter request is a prefix of a
longer one.  Rendering is vectorised over chunks of images with torch.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import ImageDataset
from .registry import Stats, register_dataset

__all__ = ["SYNTHETIC_CLASSES", "SYNTHETIC_DATA_SEED", "SyntheticRender", "render_synthetic", "make_synthetic"]

SYNTHETIC_DATA_SEED = 0  # the rendered data sets are fixed; a run's ``seed`` varies the training only

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "disc",
    "square",
    "triangle",
    "ring",
    "cross",
    "star",
    "ellipse",
    "diamond",
    "striped_disc",
    "checkered_square",
)

_SPLIT_IDS = {"train": 0, "test": 1, "val": 2}
_CHUNK_PER_CLASS = 25  # chunk = num_classes * 25 images, labels exactly balanced per chunk


class SyntheticRender(NamedTuple):
    """images uint8 (N,3,S,S); labels int64 (N,); boxes int64 (N,4) (x0,y0,x1,y1), x1/y1
    exclusive; masks bool (N,S,S), True on the object's pixels (visible ones)."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run small tensor ops on one intra-op thread (restored afterwards): the per-op
    tensors are too small to gain from threads, and OpenMP spinning collapses when
    another process shares the cores."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _chunk_generator(seed: int, split: str, chunk: int) -> torch.Generator:
    if split not in _SPLIT_IDS:
        raise ValueError(f"synthetic split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _SPLIT_IDS[split], int(chunk), 0x9A4D])
    g = torch.Generator()
    g.manual_seed(int(ss.generate_state(1, np.uint64)[0] & 0x7FFFFFFFFFFFFFFF))
    return g


def _shape_masks(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Form masks of all 10 classes. u, v: (B,S,S) object coords (radius 1). -> bool (B,10,S,S)."""
    rho = torch.sqrt(u * u + v * v)
    phi = torch.atan2(v, u)
    au, av = u.abs(), v.abs()
    disc = rho <= 0.95
    square = torch.maximum(au, av) <= 0.75
    triangle = (v <= 0.62) & (au <= 0.62 * (v + 0.95))
    ring = (rho <= 0.95) & (rho >= 0.55)
    cross = ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    star = rho <= 0.58 + 0.38 * torch.cos(5.0 * phi + math.pi / 2)
    ellipse = (u / 0.95) ** 2 + (v / 0.5) ** 2 <= 1.0
    diamond = au + av <= 0.98
    return torch.stack([disc, square, triangle, ring, cross, star, ellipse, diamond, disc, square], 1)


def _render_chunk(g: torch.Generator, n_chunk: int, num_classes: int, size: int, clutter: float):
    B, S = n_chunk, size
    rnd = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731

    labels = (torch.arange(B) % num_classes)[torch.randperm(B, generator=g)]
    coords = torch.arange(S, dtype=torch.float32) + 0.5
    yy = coords.view(1, S, 1).expand(B, S, S)
    xx = coords.view(1, 1, S).expand(B, S, S)

    # --- background: low-frequency colour noise + mid-frequency luminance noise
    low = F.interpolate(rnd(B, 3, 3, 3), size=(S, S), mode="bicubic", align_corners=True)
    mid = F.interpolate(rnd(B, 1, 8, 8) - 0.5, size=(S, S), mode="bilinear", align_corners=False)
    img = (0.15 + 0.7 * low + 0.35 * clutter * mid).clamp(0, 1)

    def paste(mask: torch.Tensor, colour: torch.Tensor) -> None:
        nonlocal img
        img = torch.where(mask.unsqueeze(1), colour, img)

    def stripes(u: torch.Tensor, v: torch.Tensor, period: torch.Tensor, angle: torch.Tensor, phase):
        ca, sa = torch.cos(angle).view(B, 1, 1), torch.sin(angle).view(B, 1, 1)
        t = (u * ca + v * sa) / period.view(B, 1, 1) + phase.view(B, 1, 1)
        return torch.frac(t) < 0.5

    # --- distractors behind the object: strokes, blobs, textured patches
    n_strokes = max(0, round(3 * clutter))
    n_blobs = max(0, round(3 * clutter))
    n_patches = max(0, round(1 * clutter))
    for _ in range(n_strokes):
        p0 = rnd(B, 2) * S
        d = (rnd(B, 2) - 0.5) * S * 0.9
        w = 0.6 + 0.9 * rnd(B)
        px, py = xx - p0[:, 0, None, None], yy - p0[:, 1, None, None]
        dd = (d * d).sum(1).clamp_min(1e-6)
        t = ((px * d[:, 0, None, None] + py * d[:, 1, None, None]) / dd[:, None, None]).clamp(0, 1)
        dist = torch.hypot(px - t * d[:, 0, None, None], py - t * d[:, 1, None, None])
        paste(dist <= w[:, None, None], rnd(B, 3, 1, 1))
    for _ in range(n_blobs):
        c = rnd(B, 2) * S
        ra = (0.06 + 0.12 * rnd(B, 2)) * S
        m = ((xx - c[:, 0, None, None]) / ra[:, 0, None, None]) ** 2 + (
            (yy - c[:, 1, None, None]) / ra[:, 1, None, None]
        ) ** 2 <= 1.0
        paste(m, rnd(B, 3, 1, 1))
    for _ in range(n_patches):
        c = rnd(B, 2) * S
        half = (0.06 + 0.08 * rnd(B, 2)) * S
        m = ((xx - c[:, 0, None, None]).abs() <= half[:, 0, None, None]) & (
            (yy - c[:, 1, None, None]).abs() <= half[:, 1, None, None]
        )
        tex = stripes(xx, yy, 2.0 + 2.0 * rnd(B), rnd(B) * math.pi, rnd(B))
        paste(m & tex, rnd(B, 3, 1, 1))

    # --- the object
    scale = (0.18 + 0.13 * rnd(B)) * S  # radius in pixels
    margin = scale * 0.9
    cx = margin + rnd(B) * (S - 2 * margin)
    cy = margin + rnd(B) * (S - 2 * margin)
    theta = (rnd(B) - 0.5) * (math.pi / 6)  # +-15 degrees: square never looks like diamond
    ct, st = torch.cos(theta).view(B, 1, 1), torch.sin(theta).view(B, 1, 1)
    dx, dy = xx - cx.view(B, 1, 1), yy - cy.view(B, 1, 1)
    r = scale.view(B, 1, 1)
    u = (dx * ct + dy * st) / r
    v = (-dx * st + dy * ct) / r
    form = _shape_masks(u, v).gather(1, labels.view(B, 1, 1, 1).expand(B, 1, S, S)).squeeze(1)

    col_a = rnd(B, 3, 1, 1)
    col_b = rnd(B, 3, 1, 1)
    # solid classes: colour with a mild linear shading; textured classes: two-colour pattern
    shade_dir = rnd(B) * 2 * math.pi
    shade = 1.0 + 0.25 * (u * torch.cos(shade_dir).view(B, 1, 1) + v * torch.sin(shade_dir).view(B, 1, 1))
    solid = (col_a * shade.unsqueeze(1)).clamp(0, 1)
    striped = stripes(dx, dy, 2.6 + 1.4 * rnd(B), rnd(B) * math.pi, rnd(B))
    cell = (2.0 + 1.5 * rnd(B)).view(B, 1, 1)
    checker = ((torch.floor(u * r / cell) + torch.floor(v * r / cell)) % 2) == 0
    two_tone = torch.where(labels.view(B, 1, 1) == 8, striped, checker)
    textured = torch.where(two_tone.unsqueeze(1), col_a, col_b)
    is_tex = (labels >= 8).view(B, 1, 1, 1)
    obj = torch.where(is_tex, textured, solid)
    img = torch.where(form.unsqueeze(1), obj, img)

    # --- sensor noise, quantise
    img = img + (0.04 * clutter) * torch.randn(B, 3, S, S, generator=g)
    images = (img.clamp(0, 1) * 255.0).round_().to(torch.uint8)

    cols = form.any(1)  # (B,S) x-occupancy
    rows = form.any(2)  # (B,S) y-occupancy
    x0 = cols.int().argmax(1)
    x1 = S - cols.flip(1).int().argmax(1)
    y0 = rows.int().argmax(1)
    y1 = S - rows.flip(1).int().argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).to(torch.int64)
    return images, labels.to(torch.int64), boxes, form


def render_synthetic(
    n: int,
    *,
    image_size: int = 32,
    num_classes: int = 10,
    seed: int = 0,
    split: str = "train",
    clutter: float = 1.0,
) -> SyntheticRender:
    """Render ``n`` images -> SyntheticRender(images uint8 (n,3,S,S), labels int64 (n,),
    boxes int64 (n,4), masks bool (n,S,S)).

    ``num_classes`` (1..10) uses the first classes of SYNTHETIC_CLASSES; ``clutter``
    scales background noise and the number of distractors (0 = plain background).
    Labels are balanced exactly within each chunk of ``25 * num_classes`` images.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"synthetic: n must be a non-negative int, got {n!r}")
    if not 1 <= num_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(f"synthetic: num_classes must be in 1..{len(SYNTHETIC_CLASSES)}, got {num_classes}")
    if image_size < 8:
        raise ValueError(f"synthetic: image_size must be >= 8, got {image_size}")
    if clutter < 0:
        raise ValueError(f"synthetic: clutter must be >= 0, got {clutter}")
    chunk = _CHUNK_PER_CLASS * num_classes
    parts = []
    with torch.no_grad(), _single_thread():
        for c in range(math.ceil(n / chunk)):
            g = _chunk_generator(seed, split, c)
            parts.append(_render_chunk(g, chunk, num_classes, int(image_size), float(clutter)))
    if not parts:
        S = int(image_size)
        return SyntheticRender(
            torch.empty(0, 3, S, S, dtype=torch.uint8),
            torch.empty(0, dtype=torch.int64),
            torch.empty(0, 4, dtype=torch.int64),
            torch.empty(0, S, S, dtype=torch.bool),
        )
    return SyntheticRender(*(torch.cat([p[i] for p in parts])[:n] for i in range(4)))


def make_synthetic(
    n: int | None = None,
    *,
    split: str = "train",
    image_size: int = 32,
    num_classes: int = 10,
    seed: int = 0,
    clutter: float = 1.0,
) -> ImageDataset:
    """The synthetic dataset as an ImageDataset (images uint8 (n,3,S,S), labels, boxes).

    Default ``n``: 20000 for "train", 5000 for "test"/"val".
    """
    if n is None:
        n = 20000 if split == "train" else 5000
    r = render_synthetic(
        n, image_size=image_size, num_classes=num_classes, seed=seed, split=split, clutter=clutter
    )
    return ImageDataset(
        images=r.images,
        labels=r.labels,
        classes=list(SYNTHETIC_CLASSES[:num_classes]),
        boxes=r.boxes,
        name="synthetic",
        split=split,
        source=f"synthetic(seed={seed}, image_size={image_size}, clutter={clutter})",
    )


@register_dataset(
    "synthetic",
    # measured on make_synthetic(20000, seed=0, clutter=1.0); depends little on seed
    stats=Stats((0.4992, 0.4998, 0.4998), (0.2155, 0.2155, 0.2154)),
    needs_root=False, rendered=True, render_fields=("clutter",), image_size=32, num_classes=len(SYNTHETIC_CLASSES),
)
def _load_synthetic(root=None, split="train", cache_dir=None, **kw) -> ImageDataset:
    """kw: n, image_size, num_classes, seed, clutter (see make_synthetic). Not cached:
    rendering is fast and deterministic."""
    return make_synthetic(split=split, **kw)
