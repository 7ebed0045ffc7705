"""TensorLoader: coverage, sharding, determinism, augmentation hook."""
import pytest
import torch

from gradmask.data import RandomCropFlip, TensorLoader, make_synthetic


def _data(n):
    # image i is filled with i % 256 in channel 0 and i // 256 in channel 1 -> recover index
    idx = torch.arange(n)
    images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    images[:, 0] = (idx % 256).view(n, 1, 1).to(torch.uint8)
    images[:, 1] = (idx // 256).view(n, 1, 1).to(torch.uint8)
    return images, idx.clone()


def _ids(x):
    return (torch.round(x[:, 0, 0, 0] * 255) + 256 * torch.round(x[:, 1, 0, 0] * 255)).long()


def test_one_epoch_covers_every_sample_once_and_labels_follow_images():
    images, labels = _data(103)
    dl = TensorLoader(images, labels, 10, seed=1)
    assert len(dl) == 11
    seen = []
    for x, y in dl:
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
        assert y.dtype == torch.int64 and torch.equal(_ids(x), y)
        seen.append(y)
    seen = torch.cat(seen)
    assert sorted(seen.tolist()) == list(range(103))
    assert seen.tolist() != list(range(103))  # shuffled


def test_drop_last_and_no_shuffle():
    images, labels = _data(103)
    dl = TensorLoader(images, labels, 10, drop_last=True, shuffle=False)
    batches = [y for _, y in dl]
    assert len(dl) == len(batches) == 10 and all(len(b) == 10 for b in batches)
    assert torch.cat(batches).tolist() == list(range(100))


def test_two_ranks_disjoint_and_cover():
    images, labels = _data(100)
    shards = []
    for rank in (0, 1):
        dl = TensorLoader(images, labels, 8, rank=rank, world_size=2, seed=3)
        dl.set_epoch(2)
        assert len(dl) == 7 and dl.num_samples == 50
        shards.append(torch.cat([y for _, y in dl]))
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert sorted(torch.cat(shards).tolist()) == list(range(100))


def test_uneven_shards_are_padded_to_equal_size():
    images, labels = _data(101)
    sizes, allidx = [], []
    for rank in range(3):
        dl = TensorLoader(images, labels, 16, rank=rank, world_size=3)
        idx = dl.indices()
        sizes.append(len(idx))
        allidx.append(idx)
    assert sizes == [34, 34, 34]
    assert set(torch.cat(allidx).tolist()) == set(range(101))


def test_same_seed_same_batches_and_epochs_differ():
    images, labels = _data(64)
    aug = RandomCropFlip(padding=1)

    def run(seed, epoch):
        dl = TensorLoader(images, labels, 16, seed=seed, augment=aug)
        dl.set_epoch(epoch)
        return [(x.clone(), y.clone()) for x, y in dl]

    a, b = run(0, 1), run(0, 1)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    c = run(0, 2)
    assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))
    d = run(1, 1)
    assert not all(torch.equal(ya, yd) for (_, ya), (_, yd) in zip(a, d))


def test_augmentation_applied_in_batch_and_return_index():
    ds = make_synthetic(40, seed=0)
    dl = TensorLoader.from_dataset(ds, 20, augment=RandomCropFlip(4), return_index=True)
    changed = 0
    for x, y, idx in dl:
        assert x.shape == (20, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
        assert torch.equal(y, ds.labels[idx])
        plain = ds.images[idx].float() / 255
        changed += int((x - plain).abs().flatten(1).amax(1).gt(0).sum())
    assert changed > 30  # nearly every image was shifted or flipped


def test_bad_arguments():
    images, labels = _data(10)
    with pytest.raises(ValueError, match="rank"):
        TensorLoader(images, labels, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        TensorLoader(images, labels, 0)
    with pytest.raises(ValueError, match="labels"):
        TensorLoader(images, labels[:5], 4)
