"""Streaming ImageFolder dataset + PIL transforms on a tiny tree."""
import numpy as np
import pytest
import torch
from PIL import Image

from gradmask.data import ImageFolderDataset, eval_transform, make_imagenet_loader, train_transform
from gradmask.data.transforms import CenterCrop, RandomResizedCrop, ResizeShorter, random_resized_crop_box


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [(30, 40), (50, 20), (24, 24)]
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            d = tmp_path / "inet" / split / c
            d.mkdir(parents=True)
            for i, (h, w) in enumerate(sizes):
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"img{i}.JPEG", quality=85)
    return tmp_path / "inet"


def test_dataset_shapes_with_train_and_eval_transforms(tree):
    ds = ImageFolderDataset(tree, "train", train_transform(16))
    assert len(ds) == 6 and ds.classes == ["n01", "n02"] and ds.targets == [0, 0, 0, 1, 1, 1]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert y == ds.targets[i]
    ev = ImageFolderDataset(tree, "val", eval_transform(20, 16))
    x, _ = ev[1]
    assert x.shape == (3, 16, 16)


def test_eval_transform_is_deterministic_resize_then_center_crop():
    img = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8))
    r = ResizeShorter(20)(img)
    assert r.size == (30, 20)
    c = CenterCrop(10)(r)
    assert c.size == (10, 10)
    assert np.array_equal(np.asarray(c), np.asarray(r)[5:15, 10:20])
    t = eval_transform(20, 10)
    assert torch.equal(t(img), t(img))


def test_center_crop_pads_small_images():
    img = Image.new("RGB", (4, 6), (255, 255, 255))
    c = np.asarray(CenterCrop(8)(img))
    assert c.shape == (8, 8, 3) and c[0, 0].tolist() == [0, 0, 0] and c[4, 4].tolist() == [255, 255, 255]


def test_random_resized_crop_boxes_stay_inside_and_respect_scale():
    torch.manual_seed(0)
    for _ in range(200):
        left, t, r, b = random_resized_crop_box(50, 30, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= left < r <= 50 and 0 <= t < b <= 30
        area = (r - left) * (b - t) / (50 * 30)
        assert 0.05 <= area <= 1.0
    # impossible ratio -> centred fallback with clamped aspect
    assert random_resized_crop_box(100, 10, (0.9, 1.0), (1.0, 1.0)) == (45, 0, 55, 10)
    out = RandomResizedCrop(12)(Image.new("RGB", (50, 30)))
    assert out.size == (12, 12)


def test_loader_batches_and_distributed_sampler(tree):
    dl = make_imagenet_loader(tree, "train", batch_size=4, image_size=16, num_workers=0, seed=1)
    x, y = next(iter(dl))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.int64
    assert len(dl) == 1  # drop_last for training: 6 // 4
    ev = make_imagenet_loader(tree, "val", batch_size=4, image_size=16, resize=18, num_workers=0)
    assert [b[0].shape[0] for b in ev] == [4, 2]
    dist = make_imagenet_loader(tree, "train", batch_size=2, image_size=16, num_workers=0,
                                distributed=True, rank=1, world_size=2)
    assert len(dist.sampler) == 3
    u8 = make_imagenet_loader(tree, "val", batch_size=2, image_size=16, resize=18, num_workers=0, uint8=True)
    assert next(iter(u8))[0].dtype == torch.uint8


def test_loader_with_worker_processes(tree):
    dl = make_imagenet_loader(tree, "val", batch_size=3, image_size=16, resize=18, num_workers=2)
    shapes = [x.shape for x, _ in dl]
    assert shapes == [(3, 3, 16, 16)] * 2


def test_undecodable_file_is_named(tree):
    (tree / "train" / "n02" / "bad.JPEG").write_bytes(b"nope")
    ds = ImageFolderDataset(tree, "train", train_transform(8))
    i = [p for p, _ in ds.samples].index(str(tree / "train" / "n02" / "bad.JPEG"))
    with pytest.raises(ValueError, match=r"n02/bad\.JPEG"):
        ds[i]


def test_missing_split_folder(tree):
    with pytest.raises(ValueError, match=r"'test'.*train/.*val/"):
        ImageFolderDataset(tree, "test")
