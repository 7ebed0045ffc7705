"""Registry, ImageDataset record, normalisation stats, and the shared CIFAR-10 archive."""
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import gradmask.data as data
from gradmask.data import DATASET_STATS, DATASETS, ImageDataset, dataset_stats, load_dataset
from gradmask.data.folder import decode_images

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_registry_names_and_unknown_name():
    assert {"synthetic", "cifar10", "cifar100", "folder"} <= set(DATASETS)
    with pytest.raises(ValueError, match=r"'imagenet2'.*available.*synthetic"):
        load_dataset("imagenet2")


def test_register_custom_dataset():
    @data.register_dataset("_tiny_test")
    def _tiny(root=None, split="train", cache_dir=None, n=3):
        return ImageDataset(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64), ["a"])

    try:
        assert len(load_dataset("_tiny_test", n=5)) == 5
    finally:
        DATASETS.pop("_tiny_test")


def test_synthetic_through_registry():
    ds = load_dataset("synthetic", split="test", n=30, seed=2, image_size=24)
    assert ds.images.shape == (30, 3, 24, 24) and ds.boxes.shape == (30, 4) and ds.split == "test"
    assert torch.equal(ds.images, load_dataset("synthetic", split="test", n=30, seed=2, image_size=24).images)


def test_file_datasets_need_existing_root(tmp_path):
    with pytest.raises(ValueError, match="root"):
        load_dataset("folder")
    with pytest.raises(FileNotFoundError, match=r"missing_dir"):
        load_dataset("folder", tmp_path / "missing_dir")
    with pytest.raises(FileNotFoundError, match=r"missing_dir"):
        load_dataset("cifar100", tmp_path / "missing_dir")


def test_image_dataset_validates_fields():
    ok = ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    assert len(ok) == 2 and ok.num_classes == 2 and ok.image_size == (4, 4)
    sub = ok.subset(torch.tensor([1]))
    assert sub.labels.tolist() == [1]
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="int64"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1], dtype=torch.int32), ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="boxes"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"],
                     boxes=torch.zeros(2, 3, dtype=torch.int64))


def test_dataset_stats():
    for name in ("cifar10", "cifar100", "imagenet", "synthetic"):
        s = dataset_stats(name)
        assert len(s.mean) == 3 and len(s.std) == 3 and all(0 < v < 1 for v in s.mean + s.std)
    assert DATASET_STATS["cifar10"].mean[0] == pytest.approx(0.4914)
    with pytest.raises(KeyError, match="known"):
        dataset_stats("mnist")


def test_synthetic_stats_match_data():
    x = load_dataset("synthetic", n=500, seed=11).images.float() / 255
    mean = x.mean((0, 2, 3))
    std = x.permute(1, 0, 2, 3).reshape(3, -1).std(1)
    assert torch.allclose(mean, torch.tensor(DATASET_STATS["synthetic"].mean), atol=0.02)
    assert torch.allclose(std, torch.tensor(DATASET_STATS["synthetic"].std), atol=0.02)


@pytest.mark.slow
def test_import_does_not_pull_torchvision():
    code = "import sys, gradmask.data; assert 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"{SHARED_CIFAR} not present")
def test_shared_cifar10_archive_first_100_images():
    items, names = [], []
    with tarfile.open(SHARED_CIFAR, "r|gz") as tf:  # stream: stop after 100 images
        for m in tf:
            if m.isfile() and m.name.lower().endswith(".jpg"):
                items.append(tf.extractfile(m).read())
                names.append(m.name)
                if len(items) == 100:
                    break
    assert len(items) == 100
    parts = [n.split("/") for n in names]
    assert all(p[0] == "cifar10-jpeg" and p[1] in ("train", "test") and p[2] in CIFAR10_CLASSES for p in parts)
    images = decode_images(items, names, num_workers=0)
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.uint8
    assert images.float().std() > 10
