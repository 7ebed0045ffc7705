"""The dataset registry: one :class:`DatasetSpec` per dataset, registered by the module that reads it.

Everything the engine, the evaluations and the reports need to know of a dataset is a property of
its spec (reader, normalisation statistics, in memory or streamed, which split serves as its test
split, image side, ...), so no caller branches on dataset names. Adding a dataset: one module with
a reader and one :func:`register_dataset` call, imported in ``gradmask/data/__init__.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from .dataset import ImageDataset


class Stats(NamedTuple):
    """Per-channel (R, G, B) mean and std of images in [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


Loader = Callable[..., ImageDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset.

    ``load(root, split, cache_dir, **kw) -> ImageDataset``: its in-memory reader (None for a
    streamed dataset, read by :func:`gradmask.data.make_imagenet_loader` worker processes);
    ``stats``: published normalisation (None: measured on the training images); ``needs_root``:
    read from a path (``TrainConfig.data``); ``rendered``: drawn at run time, sized by the run's
    ``synthetic_train`` / ``synthetic_test`` (the first ``n`` images of a fixed sequence, reader
    options ``n`` and ``seed``); ``render_fields``: the other ``synthetic_<field>`` values of the
    run its reader takes as ``<field>`` (synthetic: ``("clutter",)``);
    ``test_splits``: the splits that serve as its test split, the first the data has
    (``("test", "val")``: "val" where a tree has no test/); ``image_size``: the side of its
    images (None: whatever the data holds); ``resizable``: ``TrainConfig.image_size`` applies
    (decoded or rendered at that side); ``fixed_size``: the evaluations cannot resize it either;
    ``train_classes(root)``: the training split's class names without decoding it (None, or a
    None result: read the split); ``num_classes`` / ``train_images``: the standard release's,
    for the reports (None: not fixed)."""

    name: str
    load: Optional[Loader]
    stats: Optional[Stats] = None
    needs_root: bool = True
    rendered: bool = False
    render_fields: tuple[str, ...] = ()
    streamed: bool = False
    test_splits: tuple[str, ...] = ("test",)
    image_size: Optional[int] = None
    resizable: bool = False
    fixed_size: bool = False
    train_classes: Optional[Callable[[Path], Optional[list]]] = None
    num_classes: Optional[int] = None
    train_images: Optional[int] = None

    def __post_init__(self):
        if (self.load is None) != self.streamed:
            raise ValueError(f"dataset {self.name!r}: an in-memory dataset needs load=<reader>; a streamed "
                             f"one has none")
        if self.render_fields and not self.rendered:
            raise ValueError(f"dataset {self.name!r}: render_fields need rendered=True")
        if not self.test_splits:
            raise ValueError(f"dataset {self.name!r}: test_splits must name at least one split")


#: name -> its spec, in registration order
DATASETS: dict[str, DatasetSpec] = {}
#: Normalisation statistics for the models' first layer, by dataset name (the specs' ``stats``).
DATASET_STATS: dict[str, Stats] = {}


def register_dataset(name: str, **properties) -> Callable[[Optional[Loader]], Optional[Loader]]:
    """Decorator registering ``fn(root, split, cache_dir, **kw) -> ImageDataset`` as the reader of
    dataset ``name`` with the :class:`DatasetSpec` ``properties``; ``register_dataset(name,
    streamed=True, ...)(None)`` registers a streamed dataset."""

    def deco(fn: Optional[Loader]) -> Optional[Loader]:
        spec = DatasetSpec(name, fn, **properties)
        DATASETS[name] = spec
        if spec.stats is not None:
            DATASET_STATS[name] = spec.stats
        return fn

    return deco


def dataset_spec(name: str) -> DatasetSpec:
    """``DATASETS[name]``, with a ``ValueError`` listing the registered names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}") from None


def dataset_stats(name: str) -> Stats:
    """``DATASET_STATS[name]`` with an error listing the known names."""
    try:
        return DATASET_STATS[name]
    except KeyError:
        raise KeyError(f"no normalisation stats for dataset {name!r}; known: {sorted(DATASET_STATS)}") from None


def need_root(name: str, root) -> Path:
    """``root`` as a Path: ``ValueError`` when None, ``FileNotFoundError`` when it does not exist."""
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=<path> (a directory or archive)")
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset path {root} for {name!r} does not exist")
    return root


def render_options(config, dataset: Optional[str] = None) -> dict:
    """``{field: value}``: a run's (``config``, a TrainConfig) ``synthetic_<field>`` values that the
    reader of the rendered ``dataset`` (default: the run's) takes besides ``n`` and ``seed`` (its
    spec's ``render_fields``; synthetic: ``clutter``), so that every evaluation renders the images of
    the run's own data."""
    return {f: getattr(config, f"synthetic_{f}") for f in dataset_spec(dataset or config.dataset).render_fields}


__all__ = ["DATASETS", "DATASET_STATS", "DatasetSpec", "Loader", "Stats", "dataset_spec", "dataset_stats",
           "need_root", "register_dataset", "render_options"]
