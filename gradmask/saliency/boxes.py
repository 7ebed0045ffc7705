"""Images with object boxes for the localisation (Table 3) and blurred-background (Figure 10)
evaluations: PASCAL VOC 2007, ImageNet-style XML boxes beside an ImageFolder, the synthetic set
and CIFAR-10 objects placed on backgrounds (``cifar10-placed``).

Every reader returns a :class:`BoxDataset`: images resized (squashed, no crop, so every box stays
whole) to ``S x S`` as uint8 ``(N, 3, S, S)``, one label per image and, per image, an int64
``(k, 4)`` array of object boxes ``(x0, y0, x1, y1)`` in the resized image, 0-based with ``x1`` /
``y1`` exclusive (the convention of :mod:`gradmask.saliency.localization` and of the synthetic
data).

Coordinate conversion (PASCAL VOC format, used by VOC and by ImageNet's box XMLs):
``<bndbox>`` holds 1-based *inclusive* pixel indices, so the object covers columns
``xmin .. xmax`` (1-based), i.e. ``xmin-1 .. xmax-1`` 0-based, and the exclusive end is ``xmax``:
``(x0, y0, x1, y1) = (xmin - 1, ymin - 1, xmax, ymax)``. The box is clipped to the decoded
image (``0 <= x0 < x1 <= W``) and its edges scaled to the resized image as continuous
coordinates, ``x' = round(x * S / W)`` (half up), keeping at least one pixel
(``x1' >= x0' + 1``). The XML ``<size>`` is not used: the decoded image's size is (it is what the
pixels are). Coordinates may be written as floats (``"48.0"``); they are rounded.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from PIL import Image

from ..data import class_mapping, load_dataset
from ..data.folder import IMAGE_EXTENSIONS, decode_images, scan_image_folder

__all__ = ["VOC_CLASSES", "BoxDataset", "BOX_DATASETS", "load_box_dataset", "register_box_dataset", "parse_voc_xml",
           "match_box_classes", "read_voc2007", "read_xml_boxes", "scale_boxes", "voc_to_boxes"]

PathLike = Union[str, os.PathLike]

#: The 20 PASCAL VOC classes; the class index is the position here (the devkit's order).
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")

DEFAULT_IMAGE_SIZE = 224  # VOC / XML images are resized to this side when image_size is None


@dataclass
class BoxDataset:
    """Images with one label and one or more object boxes each.

    images:  uint8 ``(N, 3, S, S)``.
    labels:  int64 ``(N,)``, indices into ``classes``.
    boxes:   list of N int64 ``(k_i, 4)`` tensors ``(x0, y0, x1, y1)``, 0-based, x1/y1 exclusive,
             in the resized image; ``k_i >= 1``.
    classes: class names.
    object_labels: list of N int64 ``(k_i,)``: each box's class (-1 for an object name not in
             ``classes``), empty list when unknown.
    names:   per image id or file (for messages and reports).
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: list
    classes: list
    object_labels: list = field(default_factory=list)
    names: list = field(default_factory=list)
    name: str = ""
    split: str = ""
    source: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        im, lb = self.images, self.labels
        if not isinstance(im, torch.Tensor) or im.dtype != torch.uint8 or im.dim() != 4 or im.shape[1] != 3:
            raise ValueError(f"BoxDataset: images must be a uint8 tensor (N, 3, H, W), got "
                             f"{getattr(im, 'dtype', type(im))} {tuple(getattr(im, 'shape', ()))}")
        n, _, h, w = im.shape
        if not isinstance(lb, torch.Tensor) or lb.dtype != torch.int64 or lb.shape != (n,):
            raise ValueError(f"BoxDataset: labels must be int64 ({n},), got "
                             f"{getattr(lb, 'dtype', type(lb))} {tuple(getattr(lb, 'shape', ()))}")
        if len(self.boxes) != n:
            raise ValueError(f"BoxDataset: boxes must hold one (k, 4) tensor per image ({n}), got {len(self.boxes)}")
        for i, b in enumerate(self.boxes):
            if (not isinstance(b, torch.Tensor) or b.dtype != torch.int64 or b.dim() != 2 or b.shape[1] != 4
                    or len(b) == 0):
                raise ValueError(f"BoxDataset: boxes[{i}] must be a non-empty int64 (k, 4) tensor, got "
                                 f"{getattr(b, 'dtype', type(b))} {tuple(getattr(b, 'shape', ()))}")
            if ((b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h)
                    | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
                raise ValueError(f"BoxDataset: boxes[{i}] {b.tolist()} must lie inside the {h}x{w} image "
                                 f"with positive area (x1/y1 exclusive)")
        if self.object_labels and len(self.object_labels) != n:
            raise ValueError(f"BoxDataset: object_labels must be empty or hold one tensor per image ({n})")
        if self.names and len(self.names) != n:
            raise ValueError(f"BoxDataset: names must be empty or hold one name per image ({n})")
        if n and (int(lb.min()) < 0 or int(lb.max()) >= len(self.classes)):
            raise ValueError(f"BoxDataset: labels must lie in [0, {len(self.classes)}), got "
                             f"[{int(lb.min())}, {int(lb.max())}]")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index) -> "BoxDataset":
        """The images at ``index`` (a slice, int indices or a bool mask)."""
        if isinstance(index, slice):
            positions = list(range(len(self)))[index]
        else:
            t = torch.as_tensor(index)
            positions = t.nonzero().flatten().tolist() if t.dtype == torch.bool else t.flatten().tolist()
        pick = torch.tensor(positions, dtype=torch.long)
        return BoxDataset(self.images[pick], self.labels[pick], [self.boxes[i] for i in positions],
                          list(self.classes),
                          [self.object_labels[i] for i in positions] if self.object_labels else [],
                          [self.names[i] for i in positions] if self.names else [],
                          self.name, self.split, self.source)

    @classmethod
    def from_image_dataset(cls, ds) -> "BoxDataset":
        """From a :class:`gradmask.data.ImageDataset` with ``boxes`` (one box per image)."""
        if ds.boxes is None:
            raise ValueError(f"dataset {ds.name!r} split {ds.split!r} has no boxes")
        return cls(ds.images, ds.labels, [b.view(1, 4).clone() for b in ds.boxes], list(ds.classes),
                   [lb.view(1).clone() for lb in ds.labels], [], ds.name, ds.split, ds.source)


# ------------------------------------------------------------------------------ coordinates
def voc_to_boxes(xmin: float, ymin: float, xmax: float, ymax: float, one_based: bool = True
                 ) -> tuple[float, float, float, float]:
    """A VOC ``<bndbox>`` (inclusive ends; 1-based when ``one_based``) -> ``(x0, y0, x1, y1)``
    0-based with exclusive ends: ``(xmin - 1, ymin - 1, xmax, ymax)`` for 1-based input,
    ``(xmin, ymin, xmax + 1, ymax + 1)`` for 0-based input."""
    if one_based:
        return xmin - 1, ymin - 1, xmax, ymax
    return xmin, ymin, xmax + 1, ymax + 1


def _half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def scale_boxes(boxes: Sequence[Sequence[float]], size: tuple[int, int], new_size: tuple[int, int],
                where: str = "boxes") -> torch.Tensor:
    """Boxes ``(x0, y0, x1, y1)`` (0-based, exclusive ends) on an image of ``size = (H, W)`` ->
    int64 ``(k, 4)`` on ``new_size = (H', W')``: clipped to the image, edges scaled and rounded
    half up, at least one pixel wide and high. A box with no area inside the image is a
    ``ValueError`` naming ``where``."""
    (h, w), (nh, nw) = size, new_size
    out = []
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = max(0.0, x0), min(float(w), x1)
        y0, y1 = max(0.0, y0), min(float(h), y1)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"{where}: box {tuple(box)} has no area inside the {w}x{h} (WxH) image")
        sx0, sx1 = _half_up(x0 * nw / w), _half_up(x1 * nw / w)
        sy0, sy1 = _half_up(y0 * nh / h), _half_up(y1 * nh / h)
        sx0, sy0 = min(sx0, nw - 1), min(sy0, nh - 1)
        sx1, sy1 = max(sx1, sx0 + 1), max(sy1, sy0 + 1)
        out.append((sx0, sy0, sx1, sy1))
    return torch.tensor(out, dtype=torch.int64).view(-1, 4)


# ------------------------------------------------------------------------------ XML
def _number(obj: ET.Element, tag: str, path: Path) -> float:
    node = obj.find(f"bndbox/{tag}")
    if node is None or node.text is None or not node.text.strip():
        raise ValueError(f"annotation {path}: an object has no bndbox/{tag}")
    try:
        value = float(node.text.strip())
    except ValueError:
        raise ValueError(f"annotation {path}: bndbox/{tag} is not a number: {node.text.strip()!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"annotation {path}: bndbox/{tag} is not finite: {node.text.strip()!r}")
    return value


def parse_voc_xml(path: PathLike, one_based: bool = True, include_difficult: bool = True
                  ) -> list[tuple[str, tuple[float, float, float, float], bool]]:
    """Objects of a PASCAL VOC format annotation: ``[(name, (x0, y0, x1, y1), difficult)]`` with
    the box already converted to 0-based exclusive ends (:func:`voc_to_boxes`), not clipped.
    ``include_difficult=False`` drops objects marked ``<difficult>1</difficult>``. A missing
    file is a ``FileNotFoundError``, a malformed one (bad XML, no object, an object without name or
    bndbox, ``xmax < xmin``) a ``ValueError``, both naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"annotation {path} is not valid XML: {exc}") from None
    objects = root.findall("object")
    if not objects:
        raise ValueError(f"annotation {path} has no <object>")
    out = []
    for obj in objects:
        name_node = obj.find("name")
        if name_node is None or not (name_node.text or "").strip():
            raise ValueError(f"annotation {path}: an object has no <name>")
        name = name_node.text.strip()
        if obj.find("bndbox") is None:
            raise ValueError(f"annotation {path}: object {name!r} has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(obj, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise ValueError(f"annotation {path}: object {name!r} has xmax < xmin or ymax < ymin "
                             f"({xmin}, {ymin}, {xmax}, {ymax})")
        difficult_node = obj.find("difficult")
        difficult = difficult_node is not None and (difficult_node.text or "").strip() == "1"
        if difficult and not include_difficult:
            continue
        out.append((name, voc_to_boxes(xmin, ymin, xmax, ymax, one_based), difficult))
    if not out:
        raise ValueError(f"annotation {path} has only difficult objects (include_difficult=False)")
    return out


def _image_side(image_size: Optional[int]) -> int:
    if image_size is None:
        return DEFAULT_IMAGE_SIZE
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be an int >= 1 or None, got {image_size!r}")
    return image_size


def _check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an int >= 1 or None, got {limit!r}")


def _image_hw(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    return h, w


def _label_of(objects: list, object_labels: list[int]) -> int:
    """The image's label: the class of its largest object (the first of equal ones)."""
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for _, b, _ in objects]
    return object_labels[max(range(len(areas)), key=lambda i: (areas[i], -i))]


def _build(files: list[Path], per_image: list[tuple[int, list, list[int]]], classes: list[str],
           side: int, name: str, split: str, source: str, names: list[str],
           num_workers: Optional[int]) -> BoxDataset:
    boxes, object_labels, labels = [], [], []
    for path, (label, objects, obj_labels) in zip(files, per_image):
        hw = _image_hw(path)
        boxes.append(scale_boxes([b for _, b, _ in objects], hw, (side, side), where=f"image {path}"))
        object_labels.append(torch.tensor(obj_labels, dtype=torch.int64))
        labels.append(label)
    images = decode_images([str(f) for f in files], image_size=side, num_workers=num_workers)
    return BoxDataset(images, torch.tensor(labels, dtype=torch.int64).view(-1), boxes, list(classes),
                      object_labels, names, name, split, source)


# ------------------------------------------------------------------------------ VOC 2007
def _voc_root(root: PathLike) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"VOC root {root} does not exist; expected VOCdevkit/VOC2007 "
                                f"(JPEGImages/, Annotations/, ImageSets/Main/)")
    for candidate in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (candidate / "Annotations").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(f"no VOC 2007 tree at {root}: expected Annotations/ and JPEGImages/ in it, in "
                            f"{root / 'VOC2007'} or in {root / 'VOCdevkit' / 'VOC2007'}")


def read_voc2007(root: PathLike, split: str = "test", image_size: Optional[int] = None,
                 limit: Optional[int] = None, include_difficult: bool = True,
                 num_workers: Optional[int] = None) -> BoxDataset:
    """PASCAL VOC 2007 as a :class:`BoxDataset`.

    Args:
        root: ``VOCdevkit/VOC2007`` itself, ``VOCdevkit``, or the folder holding ``VOCdevkit``.
            Read: ``ImageSets/Main/<split>.txt`` (one image id per line), ``Annotations/<id>.xml``,
            ``JPEGImages/<id>.jpg``.
        split: ``"test"``, ``"trainval"``, ``"train"``, ``"val"`` (any ``<split>.txt``).
        image_size: side ``S`` the images are resized to (``None``: 224).
        limit: only the first ``limit`` ids of the split file.
        include_difficult: keep objects marked difficult (default: every annotated object counts,
            so ``single_object`` filters see them).
        num_workers: decoding processes (None: up to 8, in-process below 2000 images; 0: in-process).

    Labels: the class (index in :data:`VOC_CLASSES`) of the image's largest object; each box's
    own class is in ``object_labels``. Boxes: see the module docstring for the conversion from
    VOC's 1-based inclusive coordinates. An object name outside the 20 classes, a malformed
    annotation or a missing file raises, naming the file.
    """
    base = _voc_root(root)
    _check_limit(limit)
    side = _image_side(image_size)
    split_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"VOC split file {split_file} does not exist (split={split!r})")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"VOC split file {split_file} lists no image ids")
    if limit is not None:
        ids = ids[:limit]
    index = {c: i for i, c in enumerate(VOC_CLASSES)}
    files, per_image = [], []
    for image_id in ids:
        xml = base / "Annotations" / f"{image_id}.xml"
        objects = parse_voc_xml(xml, one_based=True, include_difficult=include_difficult)
        unknown = sorted({n for n, _, _ in objects if n not in index})
        if unknown:
            raise ValueError(f"annotation {xml}: object name(s) {unknown} are not VOC classes {list(VOC_CLASSES)}")
        obj_labels = [index[n] for n, _, _ in objects]
        image = base / "JPEGImages" / f"{image_id}.jpg"
        if not image.is_file():
            raise FileNotFoundError(f"VOC image {image} (listed in {split_file}) does not exist")
        files.append(image)
        per_image.append((_label_of(objects, obj_labels), objects, obj_labels))
    return _build(files, per_image, list(VOC_CLASSES), side, "voc2007", split, str(base), ids, num_workers)


# ------------------------------------------------------------------------------ ImageFolder + XML
def read_xml_boxes(folder_root: PathLike, split: str = "val", image_size: Optional[int] = None,
                   limit: Optional[int] = None, one_based: bool = True, include_difficult: bool = True,
                   num_workers: Optional[int] = None) -> BoxDataset:
    """ImageNet-style boxes beside an ImageFolder tree, as a :class:`BoxDataset`.

    Layout: images ``<root>/<split>/<class>/<name>.jpg`` (the ImageFolder rules of
    :func:`gradmask.data.folder.scan_image_folder`: class index = sorted class folders, so it
    matches a model trained on that tree); the PASCAL VOC format XML of an image is looked up
    first next to it, ``<root>/<split>/<class>/<name>.xml``, then in a parallel tree
    ``<root>/<split>_boxes/<class>/<name>.xml`` (how ImageNet's ``LOC`` / bbox archives unpack
    beside the images). Images without an XML are skipped (ImageNet has boxes for a subset);
    none at all is a ``ValueError``.

    The label is the image's class folder; ``object_labels`` maps each object's ``<name>`` (a
    WordNet id on ImageNet) to a class folder index, -1 when it is not one. ``one_based``: the
    coordinates follow the PASCAL VOC convention (1-based inclusive, default); ``False`` for
    0-based inclusive files. ``limit``: at most that many images (in ImageFolder order).
    """
    root = Path(folder_root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"box folder root {root} does not exist; expected <root>/{split}/<class>/<image>")
    _check_limit(limit)
    side = _image_side(image_size)
    index = scan_image_folder(root, split)
    base = Path(index.location)
    parallel = base.parent / f"{base.name}_boxes"
    class_index = {c: i for i, c in enumerate(index.classes)}
    files, per_image, names = [], [], []
    for file, label in zip(index.files, index.labels):
        path = Path(file)
        candidates = (path.with_suffix(".xml"), parallel / path.parent.name / (path.stem + ".xml"))
        xml = next((c for c in candidates if c.is_file()), None)
        if xml is None:
            continue
        objects = parse_voc_xml(xml, one_based=one_based, include_difficult=include_difficult)
        files.append(path)
        per_image.append((label, objects, [class_index.get(n, -1) for n, _, _ in objects]))
        names.append(f"{path.parent.name}/{path.name}")
        if limit is not None and len(files) >= limit:
            break
    if not files:
        raise ValueError(f"no box XML found for any image of {base}: expected <name>.xml next to each "
                         f"image or in {parallel}/<class>/<name>.xml (image types {', '.join(IMAGE_EXTENSIONS)})")
    return _build(files, per_image, index.classes, side, "xml", split, str(base), names, num_workers)


# ------------------------------------------------------------------------------ registry
#: name -> reader(root, split, image_size, limit, **kw) -> BoxDataset (:func:`register_box_dataset`)
BOX_DATASETS: dict[str, Callable[..., BoxDataset]] = {}


def register_box_dataset(name: str) -> Callable:
    """Decorator registering ``reader(root=None, split=..., image_size=None, limit=None, **kw) ->
    BoxDataset`` as box dataset ``name`` (``load_box_dataset(name)``, ``gradmask saliency --dataset``).
    A name registered twice is an error."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"box dataset name must be a non-empty string, got {name!r}")

    def add(reader: Callable[..., BoxDataset]) -> Callable[..., BoxDataset]:
        if name in BOX_DATASETS:
            raise ValueError(f"box dataset {name!r} is already registered (by {BOX_DATASETS[name].__module__})")
        BOX_DATASETS[name] = reader
        return reader
    return add


@register_box_dataset("synthetic")
def _synthetic(root=None, split="test", image_size=None, limit=None, **kw) -> BoxDataset:
    seed = kw.pop("seed", 0)  # the training engine's fixed synthetic data seed
    ds = load_dataset("synthetic", split=split, n=limit if limit is not None else 1000, seed=seed,
                      image_size=image_size if image_size is not None else 32, **kw)
    return BoxDataset.from_image_dataset(ds)


@register_box_dataset("cifar10-placed")
def _placed(root=None, split="test", image_size=None, limit=None, **kw) -> BoxDataset:
    if root is None:
        raise ValueError("dataset 'cifar10-placed' needs root=<the CIFAR-10 release: folder or archive>")
    seed = kw.pop("seed", 0)  # the training engine's fixed rendered-data seed
    ds = load_dataset("cifar10-placed", root=root, split=split, n=limit if limit is not None else 1000, seed=seed,
                      image_size=image_size if image_size is not None else 32, **kw)
    return BoxDataset.from_image_dataset(ds)


@register_box_dataset("voc2007")
def _voc(root=None, split="test", image_size=None, limit=None, **kw) -> BoxDataset:
    if root is None:
        raise ValueError("dataset 'voc2007' needs root=<VOCdevkit path>")
    return read_voc2007(root, split, image_size, limit, **kw)


@register_box_dataset("xml")
def _xml(root=None, split="val", image_size=None, limit=None, **kw) -> BoxDataset:
    if root is None:
        raise ValueError("dataset 'xml' needs root=<ImageFolder root with box XMLs>")
    return read_xml_boxes(root, split, image_size, limit, **kw)


def load_box_dataset(name: str, root: Optional[PathLike] = None, split: Optional[str] = None,
                     image_size: Optional[int] = None, limit: Optional[int] = None, **kw) -> BoxDataset:
    """The registered box dataset ``name``: ``"synthetic"`` (the test split rendered with the training engine's
    data seed 0, 32 px, ``limit`` images, default 1000), ``"cifar10-placed"`` (CIFAR-10 objects placed on
    backgrounds of other CIFAR-10 images, :mod:`gradmask.data.placed`; ``root`` the CIFAR-10 release, the
    test split rendered like ``"synthetic"``), ``"voc2007"`` (:func:`read_voc2007`,
    default split ``test``), ``"xml"`` (:func:`read_xml_boxes`, default split ``val``) or one added
    with :func:`register_box_dataset`."""
    if name not in BOX_DATASETS:
        raise ValueError(f"box dataset must be one of {sorted(BOX_DATASETS)}, got {name!r}")
    if split is not None:
        kw["split"] = split
    return BOX_DATASETS[name](root=root, image_size=image_size, limit=limit, **kw)


def match_box_classes(data: BoxDataset, classes, model: str) -> BoxDataset:
    """``data`` labelled by ``classes``, the model's training classes (matched by name, in any
    order); a class of the data the model lacks is a ``ValueError`` naming both lists and ``model``."""
    index, _ = class_mapping(list(data.classes), list(classes), f"box data {data.name} ({data.source or 'rendered'})",
                             model)
    if list(data.classes) == list(classes):
        return data
    to_model = torch.tensor(index + [-1], dtype=torch.int64)  # position -1 keeps an unknown object -1
    return BoxDataset(data.images, to_model[data.labels], data.boxes, list(classes),
                      [to_model[o] for o in data.object_labels], data.names, data.name, data.split, data.source)
