"""CIFAR-10 objects placed on backgrounds made of other CIFAR-10 images, with their boxes
(dataset ``"cifar10-placed"``): real objects with known boxes for Table 3 (saliency box IoU) and
Figure 10 (accuracy with the background blurred), built at run time from the CIFAR-10 release
the user gives (``root``: anything the ``cifar10`` reader accepts; nothing is downloaded).

Image ``i`` of a split (canvas ``S x S``, default 32):

* **object**: the split's image ``order[i mod M]`` (``order`` a seeded permutation of its ``M``
  images, so the first ``M`` images show ``M`` different objects), resized (bilinear, antialiased)
  to a square of side ``round(u * S)``, ``u`` uniform in ``scale`` (default 0.4-0.7: the box
  covers 16-49% of the image, so every image passes Table 3's "box at most half the image"
  filter), pasted at a uniform random position wholly inside the canvas. Label: the object's
  class. Box ``(x0, y0, x1, y1)`` (x1/y1 exclusive): the pasted square, i.e. the whole CIFAR
  photo with its own surroundings (CIFAR objects are centred and mostly fill their frame; no
  tighter box exists).
* **background**: a ``background_tiles x background_tiles`` grid; each tile a random square crop
  of side ``32 / background_zoom`` of a random image of *another* class, resized to the tile;
  then a Gaussian blur of ``background_blur`` sigma (0: none). Default: one tile at zoom 2, a
  16-px crop magnified to the canvas (real colours and textures, coarser than the object, no whole
  distractor object); ``background_tiles=2, background_zoom=1`` is a mosaic of four whole images
  of other classes (distractors as large as the object).

Objects and backgrounds come from the requested split only (train from CIFAR-10's training
images, test from its test images), so no test image is seen in training. Deterministic: image
``i`` depends only on (seed, split, i, parameters, the release's images); a shorter request is a
prefix of a longer one (rendered in chunks of 256, each from its own generator).
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import cifar  # noqa: F401  (registers "cifar10", the source of the objects)
from .dataset import ImageDataset
from .registry import dataset_spec, need_root, register_dataset
from .synthetic import _single_thread

__all__ = ["PLACED", "PlacedRender", "place_objects", "make_placed"]

PLACED = "cifar10-placed"
_SPLIT_IDS = {"train": 0, "test": 1}
_CHUNK = 256
_DEFAULT_BOX_IMAGES = 1000


class PlacedRender(NamedTuple):
    """images uint8 (N,3,S,S); labels int64 (N,); boxes int64 (N,4) (x0,y0,x1,y1), x1/y1
    exclusive; objects int64 (N,): the source image pasted; backgrounds int64 (N,T*T): the source
    image of each background tile (row-major)."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    objects: torch.Tensor
    backgrounds: torch.Tensor


def _generator(seed: int, split: str, *stream: int) -> torch.Generator:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _SPLIT_IDS[split], *stream, 0x91ACED])
    g = torch.Generator()
    g.manual_seed(int(ss.generate_state(1, np.uint64)[0] & 0x7FFFFFFFFFFFFFFF))
    return g


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,C,H,W) float images, radius ceil(3 sigma), edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                 groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                    groups=c)


def _resize(images: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B,3,h0,w0) float -> (B,3,h,w), bilinear, antialiased when shrinking."""
    return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def _check(n, image_size, scale, tiles, zoom, blur, split, source_side: Optional[int]) -> None:
    """Every parameter, before any work (``n`` None: the split's size; ``source_side`` None: not
    known yet, the zoom's upper bound is checked later)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"{PLACED}: n must be a non-negative int, got {n!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"{PLACED}: image_size (the canvas side) must be an int >= 8, got {image_size!r}")
    lo, hi = scale if isinstance(scale, (tuple, list)) and len(scale) == 2 else (None, None)
    if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo <= hi <= 1):
        raise ValueError(f"{PLACED}: scale must be (low, high) with 0 < low <= high <= 1 (the object's side as a "
                         f"share of the canvas side), got {scale!r}")
    if isinstance(tiles, bool) or not isinstance(tiles, int) or not 1 <= tiles <= image_size:
        raise ValueError(f"{PLACED}: background_tiles must be an int in 1..{image_size} (the canvas side), "
                         f"got {tiles!r}")
    side = math.inf if source_side is None else source_side
    if isinstance(zoom, bool) or not (isinstance(zoom, (int, float)) and 1 <= zoom <= side):
        raise ValueError(f"{PLACED}: background_zoom must be a number >= 1 and at most the source images' side "
                         f"({source_side or 32}; a tile is cropped from a {source_side or 32}-px source image at "
                         f"side / zoom px), got {zoom!r}")
    if isinstance(blur, bool) or not (isinstance(blur, (int, float)) and math.isfinite(blur) and blur >= 0):
        raise ValueError(f"{PLACED}: background_blur must be a number >= 0 (a Gaussian sigma in pixels; 0: none), "
                         f"got {blur!r}")
    if split not in _SPLIT_IDS:
        raise ValueError(f"{PLACED}: split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")


def place_objects(source_images: torch.Tensor, source_labels: torch.Tensor, n: int, *, image_size: int = 32,
                  scale: tuple = (0.4, 0.7), background_tiles: int = 1, background_zoom: float = 2.0,
                  background_blur: float = 0.0, seed: int = 0, split: str = "train") -> PlacedRender:
    """Render ``n`` images from one split's ``source_images`` uint8 (M,3,H,W) and ``source_labels``
    int64 (M,) -> :class:`PlacedRender` (canvas ``image_size``; the rest as in the module
    docstring). The split needs images of at least two classes (backgrounds are of other classes)."""
    if source_images.dtype != torch.uint8 or source_images.dim() != 4 or source_images.shape[1] != 3:
        raise ValueError(f"{PLACED}: source images must be uint8 (M, 3, H, W), got {source_images.dtype} "
                         f"{tuple(source_images.shape)}")
    _check(n, image_size, scale, background_tiles, background_zoom, background_blur, split,
           min(source_images.shape[2:]))
    present = torch.unique(source_labels)
    if len(present) < 2:
        raise ValueError(f"{PLACED}: the {split} split must hold images of at least two classes (the background "
                         f"is made of other classes than the object's), found classes {present.tolist()}")
    S, T = int(image_size), int(background_tiles)
    members = [torch.nonzero(source_labels == c).flatten() for c in present]
    counts = torch.tensor([len(m) for m in members])
    by_class = torch.zeros(len(members), int(counts.max()), dtype=torch.int64)
    for k, m in enumerate(members):
        by_class[k, :len(m)] = m
    position = torch.full((int(source_labels.max()) + 1,), -1, dtype=torch.int64)
    position[present] = torch.arange(len(present))
    order = torch.randperm(len(source_labels), generator=_generator(seed, split, 1 << 20))
    h0, w0 = source_images.shape[2:]
    crop = max(1, round(min(h0, w0) / background_zoom))
    edges = [round(j * S / T) for j in range(T + 1)]
    parts = []
    with torch.no_grad(), _single_thread():
        for start in range(0, n, _CHUNK):
            g = _generator(seed, split, start // _CHUNK)
            ids = order[torch.arange(start, start + _CHUNK) % len(order)]
            parts.append(_render_chunk(g, ids, source_images, source_labels, S, T, scale, crop, edges,
                                       float(background_blur), present, position, counts, by_class))
    if not parts:
        return PlacedRender(torch.empty(0, 3, S, S, dtype=torch.uint8), torch.empty(0, dtype=torch.int64),
                            torch.empty(0, 4, dtype=torch.int64), torch.empty(0, dtype=torch.int64),
                            torch.empty(0, T * T, dtype=torch.int64))
    return PlacedRender(*(torch.cat([p[i] for p in parts])[:n] for i in range(5)))


def _render_chunk(g, ids, images, labels, S, T, scale, crop, edges, blur, present, position, counts, by_class):
    B, tiles = len(ids), T * T
    lo, hi = float(scale[0]), float(scale[1])
    side = (S * (lo + (hi - lo) * torch.rand(B, generator=g, dtype=torch.float64))).round().long().clamp(1, S)
    x0 = (torch.rand(B, generator=g, dtype=torch.float64) * (S - side + 1)).floor().long()
    y0 = (torch.rand(B, generator=g, dtype=torch.float64) * (S - side + 1)).floor().long()
    # each tile from another class: a class offset 1..P-1 from the object's among the P present
    P = len(present)
    offset = torch.randint(1, P, (B, tiles), generator=g)
    cls = (position[labels[ids]].unsqueeze(1) + offset) % P
    member = (torch.rand(B, tiles, generator=g, dtype=torch.float64) * counts[cls]).floor().long()
    backgrounds = by_class[cls, member]
    h0, w0 = images.shape[2:]
    cy = (torch.rand(B, tiles, generator=g, dtype=torch.float64) * (h0 - crop + 1)).floor().long()
    cx = (torch.rand(B, tiles, generator=g, dtype=torch.float64) * (w0 - crop + 1)).floor().long()
    canvas = torch.empty(B, 3, S, S)
    for t in range(tiles):  # one batched resize per tile position
        (r0, r1), (c0, c1) = edges[t // T: t // T + 2], edges[t % T: t % T + 2]
        patches = torch.stack([images[backgrounds[b, t], :, cy[b, t]:cy[b, t] + crop, cx[b, t]:cx[b, t] + crop]
                               for b in range(B)]).float()
        canvas[:, :, r0:r1, c0:c1] = _resize(patches, r1 - r0, c1 - c0)
    if blur > 0:
        canvas = _gaussian_blur(canvas, blur)
    for s in torch.unique(side).tolist():  # one batched resize per object side
        index = torch.nonzero(side == s).flatten()
        resized = _resize(images[ids[index]].float(), s, s)
        for k, b in enumerate(index.tolist()):
            x, y = int(x0[b]), int(y0[b])
            canvas[b, :, y:y + s, x:x + s] = resized[k]
    out = canvas.round_().clamp_(0, 255).to(torch.uint8)
    boxes = torch.stack([x0, y0, x0 + side, y0 + side], 1)
    return out, labels[ids].clone(), boxes, ids.clone(), backgrounds


def make_placed(root, split: str = "train", n: Optional[int] = None, *, image_size: int = 32,
                scale: tuple = (0.4, 0.7), background_tiles: int = 1, background_zoom: float = 2.0,
                background_blur: float = 0.0, seed: int = 0,
                cache_dir: str | os.PathLike | None = None) -> ImageDataset:
    """The placed-object images of ``split`` ("train" | "test") of the CIFAR-10 release at ``root``
    as an ImageDataset (images uint8 (n,3,S,S), labels, boxes int64 (n,4)); ``n`` default: one
    image per object of the split (50,000 / 10,000)."""
    root = need_root(PLACED, root)
    _check(n, image_size, scale, background_tiles, background_zoom, background_blur, split, None)
    source = dataset_spec("cifar10").load(root=root, split=split, cache_dir=cache_dir)
    r = place_objects(source.images, source.labels, len(source) if n is None else n, image_size=image_size,
                      scale=scale, background_tiles=background_tiles, background_zoom=background_zoom,
                      background_blur=background_blur, seed=seed, split=split)
    return ImageDataset(r.images, r.labels, list(source.classes), r.boxes, name=PLACED, split=split,
                        source=f"{PLACED}({root}, seed={seed}, image_size={image_size}, scale={tuple(scale)}, "
                               f"background_tiles={background_tiles}, background_zoom={background_zoom}, "
                               f"background_blur={background_blur})")


@register_dataset(PLACED, needs_root=True, rendered=True, image_size=32, resizable=True, num_classes=10)
def _load_placed(root=None, split="train", cache_dir=None, **kw) -> ImageDataset:
    """kw: n, image_size, scale, background_tiles, background_zoom, background_blur, seed (see
    make_placed). Not cached: rendering is fast and deterministic (the decoded release is)."""
    return make_placed(root, split, cache_dir=cache_dir, **kw)
