"""Synthetic dataset: determinism, boxes vs. masks, balance, parameters."""
import pytest
import torch

from gradmask.data import SYNTHETIC_CLASSES, ImageDataset, make_synthetic, render_synthetic


def test_same_seed_bit_identical_and_different_seed_differs():
    a = render_synthetic(300, seed=3)
    b = render_synthetic(300, seed=3)
    c = render_synthetic(300, seed=4)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.boxes, c.boxes)


def test_prefix_stable_and_splits_differ():
    long = render_synthetic(600, seed=1)
    short = render_synthetic(70, seed=1)
    assert torch.equal(long.images[:70], short.images)
    assert torch.equal(long.labels[:70], short.labels)
    test = render_synthetic(70, seed=1, split="test")
    assert not torch.equal(test.images, short.images)


def test_shapes_dtypes_and_range():
    r = render_synthetic(50, image_size=40, seed=0)
    assert r.images.shape == (50, 3, 40, 40) and r.images.dtype == torch.uint8
    assert r.labels.shape == (50,) and r.labels.dtype == torch.int64
    assert r.boxes.shape == (50, 4) and r.boxes.dtype == torch.int64
    assert r.masks.shape == (50, 40, 40) and r.masks.dtype == torch.bool
    assert int(r.labels.min()) >= 0 and int(r.labels.max()) < 10
    # not a constant image: there is texture/clutter
    assert r.images.float().std() > 20


def test_boxes_inside_image_and_tight_around_object_mask():
    size = 32
    r = render_synthetic(250, image_size=size, seed=7)
    x0, y0, x1, y1 = r.boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= size).all() and (y1 <= size).all()
    assert (x1 > x0).all() and (y1 > y0).all()
    for i in range(len(r.boxes)):
        ys, xs = torch.nonzero(r.masks[i], as_tuple=True)
        assert len(ys) > 10, "object must be visible"
        assert r.boxes[i].tolist() == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_mask_covers_the_drawn_object():
    # without clutter/noise, a solid object's mask pixels carry one (mildly shaded)
    # colour; a mask misaligned with the drawing would mix in background
    r = render_synthetic(250, seed=2, clutter=0.0)
    solid = (r.labels < 8).nonzero().flatten()[:20]
    for i in solid.tolist():
        px = r.images[i][:, r.masks[i]].float()  # (3, P)
        assert px.std(1).max() < 40  # mild shading only, no clutter inside the object


def test_class_balance_exact():
    r = render_synthetic(1000, seed=0)
    assert r.labels.bincount(minlength=10).tolist() == [100] * 10
    r3 = render_synthetic(150, num_classes=3, seed=0)
    assert r3.labels.bincount().tolist() == [50, 50, 50]


def test_make_synthetic_dataset_record():
    ds = make_synthetic(40, split="test", seed=5, num_classes=4)
    assert isinstance(ds, ImageDataset)
    assert len(ds) == 40 and ds.classes == list(SYNTHETIC_CLASSES[:4])
    assert ds.boxes is not None and ds.boxes.shape == (40, 4)
    assert ds.image_size == (32, 32)


def test_zero_images():
    r = render_synthetic(0)
    assert r.images.shape == (0, 3, 32, 32)


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"n": -1}, "n"),
        ({"n": 5, "num_classes": 11}, "num_classes"),
        ({"n": 5, "split": "dev"}, "split"),
        ({"n": 5, "image_size": 4}, "image_size"),
        ({"n": 5, "clutter": -1.0}, "clutter"),
    ],
)
def test_bad_parameters(kw, word):
    n = kw.pop("n")
    with pytest.raises(ValueError, match=word):
        render_synthetic(n, **kw)


def test_synthetic_does_not_change_thread_count():
    before = torch.get_num_threads()
    render_synthetic(10)
    assert torch.get_num_threads() == before
