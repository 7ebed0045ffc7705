"""The test -> val split fallback (MissingSplitError, load_test_split) and the fixed-seed subset."""
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from gradmask.data import SUBSET_SEED, MissingSplitError, load_dataset, load_test_split, subset_index
from gradmask.data.folder import read_image_archive, scan_image_folder
from gradmask.robustness import evalset


def make_split(base, split, n_per_class=2, seed=0):
    """base/<split>/<class>/<i>.png with random pixels (PNG: lossless, so tensors compare exactly)."""
    rng = np.random.default_rng(seed)
    for c in ("cat", "dog"):
        d = base / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(d / f"{i}.png")


@pytest.fixture
def train_val_only(tmp_path):
    """An ImageFolder tree with train/ and val/ but no test/: as a directory and as a .tar.gz."""
    tree = tmp_path / "tv"
    make_split(tree, "train", n_per_class=3, seed=1)
    make_split(tree, "val", n_per_class=2, seed=2)
    arc = tmp_path / "tv.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(tree, arcname="tv")
    return tree, arc


def test_missing_split_error_directory_and_archive(train_val_only):
    tree, arc = train_val_only
    with pytest.raises(MissingSplitError, match="no split folder 'test'"):
        scan_image_folder(tree, "test")
    with pytest.raises(MissingSplitError, match=r"has no test/<class>/<image>"):
        read_image_archive(arc, "test")
    assert issubclass(MissingSplitError, ValueError)


def test_archive_split_present_but_unusable_is_not_missing(tmp_path):
    """test/ exists in the archive but holds no images: a plain ValueError, no fallback."""
    tree = tmp_path / "t"
    make_split(tree, "val")
    (tree / "test" / "cat").mkdir(parents=True)
    (tree / "test" / "cat" / "readme.txt").write_text("no images")
    arc = tmp_path / "t.tar"
    with tarfile.open(arc, "w") as tf:
        tf.add(tree, arcname=".")
    with pytest.raises(ValueError) as info:
        read_image_archive(arc, "test")
    assert not isinstance(info.value, MissingSplitError)
    with pytest.raises(ValueError) as info:
        load_test_split("folder", root=arc, cache_dir=tmp_path / "cache")
    assert not isinstance(info.value, MissingSplitError)


@pytest.mark.parametrize("kind", ["directory", "archive"])
def test_load_test_split_falls_back_to_val(train_val_only, tmp_path, kind):
    tree, arc = train_val_only
    root = tree if kind == "directory" else arc
    cache = tmp_path / "cache"
    ds = load_test_split("folder", root=root, cache_dir=cache)
    val = load_dataset("folder", root=root, split="val", cache_dir=cache)
    assert ds.split == "val" and len(ds) == 4 and ds.classes == ["cat", "dog"]
    assert torch.equal(ds.images, val.images) and torch.equal(ds.labels, val.labels)


def test_load_test_split_prefers_test(train_val_only, tmp_path):
    tree, _ = train_val_only
    make_split(tree, "test", n_per_class=1, seed=3)
    ds = load_test_split("folder", root=tree, cache_dir=tmp_path / "cache")
    assert ds.split == "test" and len(ds) == 2


def test_subset_index_fixed_seed():
    assert subset_index(10, None) is None and subset_index(10, 10) is None and subset_index(10, 12) is None
    ref = torch.randperm(100, generator=torch.Generator().manual_seed(0))[:7].sort().values
    assert torch.equal(subset_index(100, 7), ref)
    assert torch.equal(subset_index(100, 7, seed=SUBSET_SEED), ref)
    assert subset_index(100, 0).numel() == 0
    assert evalset.SUBSET_SEED == SUBSET_SEED == 0
