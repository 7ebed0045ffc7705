"""ImageFolder trees (``root/<split>/<class>/*.jpg|jpeg|png``) from a directory or a
``.tar`` / ``.tar.gz`` / ``.tgz`` archive, decoded with Pillow to one uint8 tensor.

Class index = position of the class folder in sorted order (per split); images
within a class are sorted by file name, so directory and archive give identical
tensors.  If ``<split>`` is not directly under the root but exactly one top
folder of the root contains it (e.g. ``cifar10-jpeg/train/...``), that
folder is used.  Only the class folders' direct children are read.

Output of :func:`decode_image_folder`: images uint8 (N, 3, H, W), labels int64 (N,).
Decoding runs in a process pool for large sets (``num_workers``).
"""
from __future__ import annotations

import io
import math
import multiprocessing
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .cache import cached, file_signature, fingerprint, signatures_of
from .dataset import ImageDataset
from .pixels import DECODER, to_rgb
from .registry import need_root, register_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderIndex",
    "MissingSplitError",
    "is_archive",
    "scan_image_folder",
    "read_image_archive",
    "decode_images",
    "decode_image_folder",
    "load_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_EXPECTED = "an ImageFolder tree root/<split>/<class>/*.jpg|jpeg|png (a directory or a .tar/.tar.gz of one)"
_POOL_MIN_IMAGES = 2000  # below this, decoding in-process beats starting a pool

ImageSize = Union[int, tuple[int, int], None]


class MissingSplitError(ValueError):
    """The requested ``<split>`` folder is absent from an ImageFolder directory or archive
    (directly under the root or inside a single top folder); callers may try another split
    (see :func:`gradmask.data.load_test_split`)."""


@dataclass
class FolderIndex:
    """A scanned split: ``files[i]`` (a path, or an archive member name) has label
    ``labels[i]``; ``classes[label]`` is its class folder name.  ``location`` is the
    split folder (directory) or ``archive:member/prefix`` (archive), for messages."""

    location: str
    classes: list[str]
    files: list[str]
    labels: list[int]


def is_archive(path: str | os.PathLike) -> bool:
    """True for file names ending in .tar, .tar.gz or .tgz."""
    return str(path).lower().endswith(_ARCHIVE_SUFFIXES)


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _check_exists(root: Path) -> None:
    if not root.exists():
        raise FileNotFoundError(f"dataset path {root} does not exist; expected {_EXPECTED}")


def _listing(d: Path, limit: int = 20) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in d.iterdir())
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return (", ".join(names[:limit]) + more) if names else "nothing (empty directory)"


# ----------------------------------------------------------------------------- directory
def scan_image_folder(root: str | os.PathLike, split: Optional[str] = "train") -> FolderIndex:
    """Index ``root/<split>/<class>/<image>`` (``split=None``: ``root/<class>/<image>``)."""
    root = Path(root).expanduser()
    _check_exists(root)
    if not root.is_dir():
        raise ValueError(f"{root} is a file but not a .tar/.tar.gz archive; expected {_EXPECTED}")
    if split is None:
        base = root
    elif (root / split).is_dir():
        base = root / split
    else:
        inner = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / split).is_dir()]
        if len(inner) == 1:
            base = inner[0] / split
        else:
            raise MissingSplitError(
                f"no split folder {split!r} in {root} (nor in a single top folder inside it); "
                f"found: {_listing(root)}; expected {_EXPECTED}"
            )
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"no class folders in {base}; found: {_listing(base)}; expected {_EXPECTED}")
    files: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        with os.scandir(base / cls) as it:
            names = sorted(e.name for e in it if e.is_file() and _is_image_name(e.name))
        if not names:
            raise ValueError(
                f"class folder {base / cls} contains no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "remove it or add images"
            )
        files.extend(str(base / cls / n) for n in names)
        labels.extend([label] * len(names))
    return FolderIndex(str(base), classes, files, labels)


# ----------------------------------------------------------------------------- archive
def read_image_archive(
    archive: str | os.PathLike, split: Optional[str] = "train"
) -> tuple[FolderIndex, list[bytes]]:
    """Read one split of an ImageFolder tree from a tar archive in a single streaming
    pass. Returns (index with member names as ``files``, raw bytes per file)."""
    archive = Path(archive).expanduser()
    _check_exists(archive)
    depth = 2 if split is None else 3  # components from the split/root folder down to the file
    kept: dict[str, bytes] = {}
    dirs: set[str] = set()
    top: set[str] = set()
    split_seen = split is None  # some member lies in a <split>/ folder at the top or in a top folder
    try:
        with tarfile.open(archive, "r|*") as tf:
            for m in tf:
                name = m.name[2:] if m.name.startswith("./") else m.name
                name = name.rstrip("/")
                if not name:
                    continue
                parts = name.split("/")
                top.add(parts[0] + ("/" if (m.isdir() or len(parts) > 1) else ""))
                if not split_seen:
                    folders = parts if m.isdir() else parts[:-1]
                    split_seen = split in folders[:2]
                if m.isdir():
                    dirs.add(name)
                    continue
                if not m.isfile() or not _is_image_name(name):
                    continue
                if len(parts) not in (depth, depth + 1):
                    continue
                if split is not None and parts[-3] != split:
                    continue
                f = tf.extractfile(m)
                kept[name] = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"cannot read archive {archive}: {type(e).__name__}: {e}") from e

    # resolve the prefix: "" or the single top folder holding <split>/<class>/<image>
    prefixes = sorted({"/".join(n.split("/")[:-depth]) for n in kept})
    if "" in prefixes:
        prefix = ""
    elif len(prefixes) == 1 and "/" not in prefixes[0]:
        prefix = prefixes[0]
    else:
        want = f"{split}/<class>/<image>" if split else "<class>/<image>"
        raise (ValueError if split_seen else MissingSplitError)(
            f"archive {archive} has no {want} at its top level or inside a single top folder; "
            f"top-level entries found: {', '.join(sorted(top)[:20]) or 'none (empty archive)'}"
            + (f"; candidate prefixes: {prefixes}" if prefixes else "")
            + f"; expected {_EXPECTED}"
        )
    base = "/".join(p for p in (prefix, split or "") if p)
    pre = base + "/" if base else ""
    by_class: dict[str, list[str]] = {}
    for n in kept:
        if n.startswith(pre) and n.count("/") == pre.count("/") + 1:
            cls = n[len(pre):].split("/")[0]
            if not cls.startswith("."):  # hidden folders are skipped, as in directories
                by_class.setdefault(cls, []).append(n)
    for d in dirs:  # class folders present as directory entries but without images
        if d.startswith(pre) and d.count("/") == pre.count("/") and not d[len(pre):].startswith("."):
            cls = d[len(pre):]
            if cls not in by_class:
                raise ValueError(
                    f"class folder {archive}:{d}/ contains no images ({', '.join(IMAGE_EXTENSIONS)}); "
                    "remove it or add images"
                )
    classes = sorted(by_class)
    if not classes:
        raise ValueError(f"no class folders with images in {archive}:{base}/; expected {_EXPECTED}")
    files: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        names = sorted(by_class[cls], key=lambda n: n.rsplit("/", 1)[-1])
        files.extend(names)
        labels.extend([label] * len(names))
    data = [kept[n] for n in files]
    return FolderIndex(f"{archive}:{base}", classes, files, labels), data


# ----------------------------------------------------------------------------- decoding
def _size_hw(image_size: ImageSize) -> Optional[tuple[int, int]]:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def _decode_chunk(job: tuple[Sequence[Union[str, bytes]], Sequence[str], Optional[tuple[int, int]]]):
    """Worker: decode a chunk -> ("ok", list of (H,W,3) uint8 arrays) or ("error", message)."""
    items, names, hw = job
    out = []
    for item, name in zip(items, names):
        try:
            src = io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item
            with Image.open(src) as im:
                im = to_rgb(im, name)  # deeper than 8 bits: scaled, not clipped
                if hw is not None and im.size != (hw[1], hw[0]):
                    im = im.resize((hw[1], hw[0]), Image.BILINEAR)
                out.append(np.asarray(im, dtype=np.uint8))
        except Exception as e:  # noqa: BLE001 - reported with the file name below
            return ("error", f"cannot decode image {name}: {type(e).__name__}: {e}")
    if out and all(a.shape == out[0].shape for a in out):
        return ("ok", np.stack(out))  # one buffer: far cheaper to send back than many arrays
    return ("ok", out)


def _pool_context():
    methods = multiprocessing.get_all_start_methods()
    # fork: workers only need Pillow/numpy and start instantly (no torch re-import)
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def decode_images(
    items: Sequence[Union[str, bytes]],
    names: Optional[Sequence[str]] = None,
    *,
    image_size: ImageSize = None,
    num_workers: Optional[int] = None,
) -> torch.Tensor:
    """Decode image files (paths) or encoded bytes to uint8 (N, 3, H, W), RGB.

    ``names`` label the items in error messages (default: the paths).  Without
    ``image_size`` all images must share one size; with it (int or (H, W)) they are
    resized bilinearly.  ``num_workers``: processes (None = min(cpu count, 8);
    0 or 1 = in-process; small inputs are always decoded in-process).
    """
    n = len(items)
    if names is None:
        names = [str(x) if isinstance(x, (str, os.PathLike)) else f"item {i}" for i, x in enumerate(items)]
    hw = _size_hw(image_size)
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 8)
    if n == 0:
        h, w = hw or (0, 0)
        return torch.empty(0, 3, h, w, dtype=torch.uint8)
    if num_workers <= 1 or n < _POOL_MIN_IMAGES:
        results = [_decode_chunk((items, names, hw))]
    else:
        size = max(64, math.ceil(n / (num_workers * 8)))
        jobs = [(items[i : i + size], names[i : i + size], hw) for i in range(0, n, size)]
        with ProcessPoolExecutor(max_workers=num_workers, mp_context=_pool_context()) as ex:
            results = list(ex.map(_decode_chunk, jobs))
    arrays = []
    for status, payload in results:
        if status == "error":
            raise ValueError(payload)
        arrays.extend(payload)
    shape0 = arrays[0].shape
    for a, name in zip(arrays, names):
        if a.shape != shape0:
            raise ValueError(
                f"image {name} has size {a.shape[1]}x{a.shape[0]} (WxH) but {names[0]} has "
                f"{shape0[1]}x{shape0[0]}; resize all images to one size N x N: image_size=N "
                f"(gradmask train / compare: --image-size N)"
            )
    out = torch.from_numpy(np.stack(arrays))  # (N,H,W,3)
    return out.permute(0, 3, 1, 2).contiguous()


def decode_image_folder(
    root: str | os.PathLike,
    split: Optional[str] = "train",
    *,
    image_size: ImageSize = None,
    num_workers: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode a split of a directory or archive tree, no cache.
    -> (images uint8 (N,3,H,W), labels int64 (N,), classes)."""
    root = Path(root).expanduser()
    _check_exists(root)
    if root.is_file() and is_archive(root):
        index, data = read_image_archive(root, split)
        names = [f"{root}:{m}" for m in index.files]
        images = decode_images(data, names, image_size=image_size, num_workers=num_workers)
    else:
        index = scan_image_folder(root, split)
        images = decode_images(index.files, index.files, image_size=image_size, num_workers=num_workers)
    return images, torch.tensor(index.labels, dtype=torch.int64), index.classes


def _default_name(root: Path) -> str:
    n = root.name
    for suf in (".tar.gz", ".tgz", ".tar"):
        if n.lower().endswith(suf):
            return n[: -len(suf)]
    return n


def load_image_folder(
    root: str | os.PathLike,
    split: Optional[str] = "train",
    *,
    name: Optional[str] = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    image_size: ImageSize = None,
    num_workers: Optional[int] = None,
) -> ImageDataset:
    """A split of an ImageFolder directory/archive as an in-memory ImageDataset, going
    through the on-disk cache (see :mod:`gradmask.data.cache`). ``name`` prefixes the
    cache file (default: the folder/archive name)."""
    root = Path(root).expanduser()
    _check_exists(root)
    if root.is_file() and not is_archive(root):
        raise ValueError(f"{root} is a file but not a .tar/.tar.gz archive; expected {_EXPECTED}")
    name = name or _default_name(root)
    hw = _size_hw(image_size)
    if root.is_file():
        fp = fingerprint("archive", file_signature(root), split, hw, DECODER)

        def build():
            return decode_image_folder(root, split, image_size=image_size, num_workers=num_workers)

    else:
        index = scan_image_folder(root, split)  # stat of every file: any change -> new fingerprint
        fp = fingerprint("dir", str(root.resolve()), split, index.classes, index.labels,
                         signatures_of(index.files, root), hw, DECODER)

        def build():
            images = decode_images(index.files, index.files, image_size=image_size, num_workers=num_workers)
            return images, torch.tensor(index.labels, dtype=torch.int64), index.classes

    (images, labels, classes), _, _ = cached(
        name, split or "all", fp, build, cache_dir=cache_dir, use_cache=use_cache
    )
    return ImageDataset(images, labels, classes, None, name=name, split=split or "", source=str(root))


def _scanned_train_classes(root) -> Optional[list]:
    """The training class folders of an ImageFolder directory (None for an archive: decode it)."""
    return scan_image_folder(root, "train").classes if Path(root).is_dir() else None


@register_dataset("folder", test_splits=("test", "val"), resizable=True, train_classes=_scanned_train_classes)
def _load_folder(root=None, split="train", cache_dir=None, **kw) -> ImageDataset:
    """kw: name, use_cache, image_size, num_workers (see load_image_folder)."""
    return load_image_folder(need_root("folder", root), split, cache_dir=cache_dir, **kw)
