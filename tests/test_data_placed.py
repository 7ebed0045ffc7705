"""cifar10-placed: CIFAR-10 objects placed on backgrounds of other CIFAR-10 images, with their boxes."""
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_cifar import CIFAR10_CLASSES, SPLIT_BLUE, fake_cifar10_archive
from PIL import Image

from gradmask.data import load_dataset, make_placed, place_objects
from gradmask.saliency.boxes import load_box_dataset

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def flat_sources(m=40, classes=10, side=32):
    """``m`` flat-colour source images, each its own random colour (no blend of two others by chance)."""
    labels = torch.arange(m) % classes
    colours = torch.from_numpy(np.random.default_rng(0).choice(256 ** 3, m, replace=False))
    colours = torch.stack([colours // 65536, colours // 256 % 256, colours % 256], 1).to(torch.uint8)
    return colours.view(m, 3, 1, 1).expand(m, 3, side, side).contiguous(), labels, colours


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    return fake_cifar10_archive(tmp_path_factory.mktemp("fake"))


# ------------------------------------------------------------------------------ placement, exactly
@pytest.mark.parametrize("options", [{}, {"image_size": 48, "scale": (0.3, 0.5)},
                                     {"background_tiles": 2, "background_zoom": 1.0},
                                     {"background_tiles": 3, "background_blur": 1.5}])
def test_the_box_is_exactly_where_the_object_was_pasted(options):
    images, labels, colours = flat_sources()
    r = place_objects(images, labels, 300, seed=3, **options)
    S = options.get("image_size", 32)
    lo, hi = options.get("scale", (0.4, 0.7))
    assert r.images.shape == (300, 3, S, S) and r.images.dtype == torch.uint8
    x0, y0, x1, y1 = r.boxes.unbind(1)
    assert bool(((x0 >= 0) & (y0 >= 0) & (x1 <= S) & (y1 <= S)).all())
    sides = x1 - x0
    assert torch.equal(sides, y1 - y0) and sides.min() >= round(lo * S) and sides.max() <= round(hi * S)
    assert len(set(sides.tolist())) > 3 and len(set(x0.tolist())) > 3   # sizes and positions vary
    for i in range(300):
        colour = colours[r.objects[i]].view(3, 1, 1)
        where = (r.images[i] == colour).all(0)                   # the object's own colour, pixel by pixel
        ys, xs = torch.nonzero(where, as_tuple=True)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(r.boxes[i]), i
        assert bool(where[y0[i]:y1[i], x0[i]:x1[i]].all()) and int(where.sum()) == int(sides[i]) ** 2
    # classes: the label is the pasted object's; every background tile is of another class
    assert torch.equal(r.labels, labels[r.objects])
    assert bool((labels[r.backgrounds] != r.labels.unsqueeze(1)).all())
    # outside the box: only background tiles' colours (blurred: blends of them at the seams)
    for i in range(0, 300 if not options.get("background_blur") else 0, 37):
        outside = torch.ones(S, S, dtype=torch.bool)
        outside[y0[i]:y1[i], x0[i]:x1[i]] = False
        seen = {tuple(p) for p in r.images[i].permute(1, 2, 0)[outside].tolist()}
        assert seen <= {tuple(colours[b].tolist()) for b in r.backgrounds[i]}


def test_the_background_blur_leaves_the_object_and_its_place_unchanged():
    images, labels, _ = flat_sources()
    sharp = place_objects(images, labels, 50, background_tiles=2)
    blurred = place_objects(images, labels, 50, background_tiles=2, background_blur=2.0)
    assert torch.equal(sharp.boxes, blurred.boxes) and torch.equal(sharp.backgrounds, blurred.backgrounds)
    inside = torch.zeros(50, 32, 32, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(sharp.boxes.tolist()):
        inside[i, y0:y1, x0:x1] = True
    same = (sharp.images == blurred.images).all(1)
    assert bool(same[inside].all()) and not bool(same[~inside].all())


def test_the_object_is_resized_like_pil_and_not_flipped():
    """Reference: Pillow's antialiased bilinear resize of the source image, pasted at the box."""
    ramp = torch.arange(32, dtype=torch.float32) * 8
    gradient = torch.stack([ramp.view(1, 32).expand(32, 32), ramp.view(32, 1).expand(32, 32),
                            torch.full((32, 32), 99.0)]).to(torch.uint8)
    images, labels, _ = flat_sources(20)
    images[0] = gradient
    r = place_objects(images, labels, 400, seed=0)
    checked = 0
    for i in torch.nonzero(r.objects == 0).flatten().tolist():
        x0, y0, x1, y1 = r.boxes[i].tolist()
        ref = Image.fromarray(gradient.permute(1, 2, 0).numpy()).resize((x1 - x0, y1 - y0), Image.BILINEAR)
        got = r.images[i, :, y0:y1, x0:x1].permute(1, 2, 0).numpy().astype(int)
        assert np.abs(got - np.asarray(ref, dtype=int)).max() <= 2
        checked += 1
    assert checked >= 2


def test_same_seed_identical_other_seed_different_and_shorter_is_a_prefix():
    images, labels, _ = flat_sources()
    a, b = place_objects(images, labels, 300, seed=1), place_objects(images, labels, 300, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = place_objects(images, labels, 300, seed=2)
    assert not torch.equal(a.images, c.images) and not torch.equal(a.boxes, c.boxes)
    prefix = place_objects(images, labels, 100, seed=1)
    assert all(torch.equal(x, y[:100]) for x, y in zip(prefix, a))
    train = place_objects(images, labels, 100, seed=1, split="test")   # the split is part of the seed
    assert not torch.equal(train.boxes, prefix.boxes)


def test_every_object_once_before_any_repeats():
    images, labels, _ = flat_sources(40)
    r = place_objects(images, labels, 100, seed=0)
    assert sorted(r.objects[:40].tolist()) == list(range(40))
    assert torch.equal(r.objects[40:80], r.objects[:40])


@pytest.mark.parametrize("options, match", [
    ({"n": -1}, "n must"), ({"image_size": 4}, "image_size"), ({"scale": (0.5, 0.3)}, "scale"),
    ({"scale": (0.0, 0.5)}, "scale"), ({"background_tiles": 0}, "background_tiles"),
    ({"background_zoom": 0.5}, "background_zoom"), ({"background_zoom": 64}, "background_zoom"),
    ({"background_blur": -1.0}, "background_blur"), ({"split": "val"}, "split"),
])
def test_bad_parameters_are_refused_naming_them(options, match):
    images, labels, _ = flat_sources()
    kw = {"n": 10, **options}
    with pytest.raises(ValueError, match=match):
        place_objects(images, labels, kw.pop("n"), **kw)


def test_a_split_of_one_class_cannot_give_backgrounds_of_other_classes():
    images, _, _ = flat_sources(6)
    with pytest.raises(ValueError, match="at least two classes"):
        place_objects(images, torch.zeros(6, dtype=torch.int64), 4)


# ------------------------------------------------------------------------------ from a CIFAR-10 archive
def test_train_and_test_images_come_from_their_own_split(fake_cifar, tmp_path):
    for split, blue in SPLIT_BLUE.items():
        ds = load_dataset("cifar10-placed", root=fake_cifar, split=split, n=60, cache_dir=tmp_path)
        assert ds.classes == CIFAR10_CLASSES and ds.boxes.shape == (60, 4) and ds.split == split
        # every pixel, object and background, is of the split's images (B 40 train, 215 test; JPEG +- a few)
        assert (ds.images[:, 2].int() - blue).abs().max() <= 6, split
        for i in range(60):
            x0, y0, x1, y1 = ds.boxes[i].tolist()
            red = ds.images[i, 0, y0:y1, x0:x1].float().mean()
            assert round((float(red) - 10) / 20) == int(ds.labels[i])   # the box holds an object of its class
    # the default size: one image per object of the split
    assert len(load_dataset("cifar10-placed", root=fake_cifar, split="test", cache_dir=tmp_path)) == 20


def test_the_box_dataset_is_the_training_engines_test_split(fake_cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADMASK_CACHE", str(tmp_path))
    boxes = load_box_dataset("cifar10-placed", root=fake_cifar, limit=25, image_size=40)
    ds = load_dataset("cifar10-placed", root=fake_cifar, split="test", n=25, seed=0, image_size=40)
    assert boxes.image_size == (40, 40) and boxes.split == "test"
    assert torch.equal(boxes.images, ds.images) and torch.equal(boxes.labels, ds.labels)
    assert all(torch.equal(b, d.view(1, 4)) for b, d in zip(boxes.boxes, ds.boxes))
    with pytest.raises(ValueError, match="needs root"):
        load_box_dataset("cifar10-placed")


def test_parameters_are_checked_before_the_archive_is_read(tmp_path):
    with pytest.raises(ValueError, match="background_zoom"):
        make_placed(tmp_path, "train", background_zoom=0.5)   # tmp_path holds no CIFAR-10: not read


def test_one_epoch_training_on_it(fake_cifar, tmp_path, monkeypatch):
    from gradmask.train import TrainConfig, train
    monkeypatch.setenv("GRADMASK_CACHE", str(tmp_path))
    config = TrainConfig(dataset="cifar10-placed", data=str(fake_cifar), synthetic_train=32, synthetic_test=16,
                         image_size=40, epochs=1, batch_size=16, lr=0.05, mask="lateral", train_eval_images=16,
                         progress=False, out=str(tmp_path / "run"))
    result = train(config)
    assert 0.0 <= result["test_acc"] <= 1.0
    from gradmask.train.checkpoint import load_trained
    assert load_trained(tmp_path / "run").image_size == 40


# ------------------------------------------------------------------------------ the real archive
@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"{SHARED_CIFAR} not present")
def test_real_cifar10_objects_are_placed_with_their_class(tmp_path):
    ds = make_placed(SHARED_CIFAR, "test", 300, cache_dir=tmp_path)
    source = load_dataset("cifar10", root=SHARED_CIFAR, split="test", cache_dir=tmp_path)
    r = place_objects(source.images, source.labels, 300, split="test")
    assert torch.equal(ds.images, r.images) and torch.equal(ds.boxes, r.boxes) and torch.equal(ds.labels, r.labels)
    assert ds.classes == CIFAR10_CLASSES and len(r.objects.unique()) == 300
    assert torch.equal(r.labels, source.labels[r.objects])
    assert bool((source.labels[r.backgrounds] != r.labels.unsqueeze(1)).all())
    assert set(r.labels.tolist()) == set(range(10))
    for i in range(0, 300, 29):    # the box holds the source photo (Pillow's resize as the reference)
        x0, y0, x1, y1 = r.boxes[i].tolist()
        photo = Image.fromarray(source.images[r.objects[i]].permute(1, 2, 0).numpy())
        ref = np.asarray(photo.resize((x1 - x0, y1 - y0), Image.BILINEAR), dtype=int)
        got = r.images[i, :, y0:y1, x0:x1].permute(1, 2, 0).numpy().astype(int)
        assert np.abs(got - ref).mean() < 2.0 and np.abs(got - ref).max() <= 12


def test_only_the_fields_a_renderer_takes_reach_it_or_the_reports():
    from gradmask.compare.report import _applies
    from gradmask.data import render_options
    from gradmask.train import TrainConfig
    placed = TrainConfig(dataset="cifar10-placed", data="x", synthetic_clutter=0.0)
    assert render_options(placed) == {} and render_options(placed, "synthetic") == {"clutter": 0.0}
    assert not _applies("synthetic_clutter", {"dataset": "cifar10-placed"})
    assert _applies("synthetic_train", {"dataset": "cifar10-placed"})
    assert _applies("synthetic_clutter", {"dataset": "synthetic"})
    assert not _applies("synthetic_train", {"dataset": "cifar10"})
