"""CIFAR-10 / CIFAR-100 from the official "python version" releases.

Layouts (``root`` may be the release folder, its parent, or the official
``.tar.gz`` of it):

* ``cifar-10-batches-py/``: ``data_batch_1..5`` (train), ``test_batch``, ``batches.meta``
* ``cifar-100-python/``: ``train``, ``test``, ``meta``

Each batch is a pickle of a dict with ``b'data'`` uint8 (N, 3072) (channel-major
RGB, 32x32) and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` / ``b'coarse_labels'``
(CIFAR-100).  Output: images uint8 (N, 3, 32, 32), labels int64 (N,), class names.

The pickles are read with a restricted unpickler that only admits numpy arrays
and plain containers, so a tampered file cannot run code.
"""
from __future__ import annotations

import functools
import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from .dataset import ImageDataset
from .folder import is_archive, load_image_folder
from .registry import Stats, need_root, register_dataset

__all__ = ["CIFAR_LAYOUTS", "find_cifar_root", "is_cifar_archive", "read_cifar_batch", "read_cifar"]

CIFAR_LAYOUTS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "label_key": {"fine": b"labels"},
        "names_key": {"fine": b"label_names"},
        "num_classes": {"fine": 10},
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "label_key": {"fine": b"fine_labels", "coarse": b"coarse_labels"},
        "names_key": {"fine": b"fine_label_names", "coarse": b"coarse_label_names"},
        "num_classes": {"fine": 100, "coarse": 20},
    },
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR pickle")


def _unpickle(data: bytes, where: str) -> Any:
    try:
        return _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"CIFAR file {where} is not a readable python pickle ({type(e).__name__}: {e})") from e


def _key(d: dict, key: bytes) -> Any:
    """Look up ``key`` accepting both bytes and str keys (re-pickled files use str)."""
    if key in d:
        return d[key]
    return d.get(key.decode())


def read_cifar_batch(
    data: bytes, where: str, label_key: bytes, num_classes: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse one batch pickle -> (images uint8 (N,3,32,32), labels int64 (N,)).
    ``where`` names the file in error messages; labels are checked against
    ``num_classes`` if given."""
    d = _unpickle(data, where)
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR file {where}: expected a pickled dict, found {type(d).__name__}")
    raw, labels = _key(d, b"data"), _key(d, label_key)
    if raw is None or labels is None:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d)
        raise ValueError(
            f"CIFAR file {where}: expected keys 'data' and {label_key.decode()!r}, found {keys}"
        )
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] != 3072:
        raise ValueError(f"CIFAR file {where}: 'data' must be uint8 (N, 3072), found {raw.dtype} {raw.shape}")
    labels = np.asarray(labels)
    if labels.shape != (raw.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"CIFAR file {where}: {label_key.decode()!r} must be {raw.shape[0]} integers, "
            f"found {labels.dtype} {labels.shape}"
        )
    if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"CIFAR file {where}: labels must lie in [0, {num_classes}), found [{labels.min()}, {labels.max()}]"
        )
    images = torch.from_numpy(raw.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def is_cifar_archive(path: Union[str, os.PathLike], variant: str) -> bool:
    """True if ``path`` is a tar archive containing the python release of ``variant``."""
    folder = CIFAR_LAYOUTS[variant]["folder"]
    try:
        with tarfile.open(path, "r:*") as tf:
            first = tf.next()
            return first is not None and first.name.lstrip("./").split("/")[0] == folder
    except (tarfile.TarError, OSError):
        return False


def find_cifar_root(root: Union[str, os.PathLike], variant: str) -> Optional[Path]:
    """The release folder (``cifar-10-batches-py`` / ``cifar-100-python``) at ``root``
    or directly inside it; None if neither holds the meta file."""
    lay = CIFAR_LAYOUTS[variant]
    root = Path(root).expanduser()
    for cand in (root, root / lay["folder"]):
        if (cand / lay["meta"]).is_file():
            return cand
    return None


def _read_files(root: Path, names: list[str], variant: str) -> dict[str, tuple[bytes, str]]:
    """{name: (bytes, where)} from a release folder, its parent, or a release tar archive."""
    lay = CIFAR_LAYOUTS[variant]
    if root.is_file():
        out: dict[str, tuple[bytes, str]] = {}
        try:
            with tarfile.open(root, "r:*") as tf:
                for m in tf:
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in names and base not in out:
                        f = tf.extractfile(m)
                        out[base] = (f.read() if f else b"", f"{root}:{m.name}")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(f"cannot read CIFAR archive {root}: {type(e).__name__}: {e}") from e
        missing = [n for n in names if n not in out]
        if missing:
            raise FileNotFoundError(
                f"CIFAR archive {root} lacks {missing}; expected the official {lay['folder']}/ release"
            )
        return out
    folder = find_cifar_root(root, variant)
    if folder is None:
        raise FileNotFoundError(
            f"no {variant} python release at {root}: expected {root}/{lay['meta']} or "
            f"{root}/{lay['folder']}/{lay['meta']} (with {', '.join(lay['train'] + lay['test'])})"
        )
    out = {}
    for n in names:
        p = folder / n
        if not p.is_file():
            raise FileNotFoundError(f"CIFAR file {p} is missing; expected the official {lay['folder']}/ release")
        out[n] = (p.read_bytes(), str(p))
    return out


def read_cifar(
    root: Union[str, os.PathLike],
    variant: str = "cifar10",
    split: str = "train",
    label_mode: str = "fine",
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read a split of the python release -> (images uint8 (N,3,32,32), labels int64 (N,), classes).

    ``variant``: "cifar10" | "cifar100"; ``split``: "train" | "test";
    ``label_mode`` (CIFAR-100 only): "fine" (100 classes) | "coarse" (20 superclasses).
    """
    if variant not in CIFAR_LAYOUTS:
        raise ValueError(f"variant must be one of {sorted(CIFAR_LAYOUTS)}, got {variant!r}")
    lay = CIFAR_LAYOUTS[variant]
    if split not in ("train", "test"):
        raise ValueError(f"{variant}: split must be 'train' or 'test', got {split!r}")
    if label_mode not in lay["label_key"]:
        raise ValueError(f"{variant}: label_mode must be one of {sorted(lay['label_key'])}, got {label_mode!r}")
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"dataset path {root} does not exist; expected the {variant} python release "
            f"({lay['folder']}/ or its parent, or its .tar.gz)"
        )
    files = _read_files(root, [lay["meta"], *lay[split]], variant)

    data, where = files[lay["meta"]]
    meta = _unpickle(data, where)
    names = _key(meta, lay["names_key"][label_mode]) if isinstance(meta, dict) else None
    n_cls = lay["num_classes"][label_mode]
    if not isinstance(names, list) or len(names) != n_cls:
        raise ValueError(
            f"CIFAR meta file {where}: expected {lay['names_key'][label_mode].decode()!r} "
            f"with {n_cls} class names"
        )
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names]

    parts = [read_cifar_batch(*files[n], lay["label_key"][label_mode], n_cls) for n in lay[split]]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    return images, labels, classes


def _load_cifar(variant: str, root=None, split="train", cache_dir=None, label_mode: str = "fine",
                **kw) -> ImageDataset:
    """root: the python release folder, its parent, or its .tar.gz -- read directly;
    or an ImageFolder directory / archive -- decoded through the cache (kw: use_cache,
    num_workers, image_size)."""
    root = need_root(variant, root)
    lay = CIFAR_LAYOUTS[variant]
    if (root.is_dir() and find_cifar_root(root, variant) is not None) or (
        root.is_file() and is_cifar_archive(root, variant)
    ):
        if kw:
            raise TypeError(f"unexpected options for the {variant} python release: {sorted(kw)}")
        images, labels, classes = read_cifar(root, variant, split, label_mode)
        return ImageDataset(images, labels, classes, None, name=variant, split=split, source=str(root))
    if root.is_file() and not is_archive(root):
        raise ValueError(
            f"{root} is neither a {variant} python release ({lay['folder']}/ or its .tar.gz) "
            "nor an ImageFolder directory / .tar / .tar.gz"
        )
    try:
        ds = load_image_folder(root, split, name=variant, cache_dir=cache_dir, **kw)
    except ValueError as e:
        raise ValueError(
            f"{root} is not a {variant} python release (no {lay['meta']} in it or in {lay['folder']}/) "
            f"and not a usable ImageFolder tree: {e}"
        ) from e
    expected = lay["num_classes"][label_mode]
    if ds.num_classes != expected:
        raise ValueError(
            f"{variant} ImageFolder tree {root} split {split!r} has {ds.num_classes} class folders, "
            f"expected {expected}: {ds.classes[:12]}"
        )
    return ds


_CIFAR = dict(image_size=32, fixed_size=True, train_images=50000)
register_dataset("cifar10", stats=Stats((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), num_classes=10,
                 **_CIFAR)(functools.partial(_load_cifar, "cifar10"))
register_dataset("cifar100", stats=Stats((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)), num_classes=100,
                 **_CIFAR)(functools.partial(_load_cifar, "cifar100"))
