"""The class lists of a dataset's splits are matched by name: the test split is labelled with the
training split's indices; a test class unknown to training is an error naming it (before any
training); a training class absent from the test split is allowed and said."""
import numpy as np
import pytest
import torch
from PIL import Image

from gradmask.data import ImageDataset, load_dataset, load_test_split, make_imagenet_loader, match_classes
from gradmask.robustness import evalset
from gradmask.train import TrainConfig
from gradmask.train.augment import build_augment
from gradmask.train.data import build_data

COLOURS = {"bird": (250, 250, 0), "cat": (200, 30, 30), "dog": (30, 30, 200), "emu": (30, 200, 30)}


def make_tree(root, splits):
    """root/<split>/<class>/<i>.png, each class one flat colour (so a label can be read off the pixels)."""
    for split, classes in splits.items():
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), COLOURS[c], dtype=np.uint8)).save(d / f"{i}.png")
    return root


def colour_class(image: torch.Tensor) -> str:
    pixel = tuple(int(v) for v in image[:, 0, 0])
    return next(c for c, rgb in COLOURS.items() if rgb == pixel)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADMASK_CACHE", str(tmp_path / "cache"))


def _build(root, tmp_path, **kw):
    config = TrainConfig(dataset="folder", data=str(root), epochs=1, batch_size=4, mask="none", progress=False,
                         out=str(tmp_path / "run"), **kw)
    return build_data(config, build_augment(config), torch.device("cpu"))


def test_match_classes_relabels_by_name_and_reports_missing():
    images = torch.zeros(3, 3, 2, 2, dtype=torch.uint8)
    test = ImageDataset(images, torch.tensor([0, 1, 1]), ["cat", "dog"], name="t", split="test")
    matched, missing = match_classes(test, ["bird", "cat", "dog"])
    assert matched.classes == ["bird", "cat", "dog"] and matched.labels.tolist() == [1, 2, 2]
    assert missing == ["bird"]
    with pytest.raises(ValueError, match="'emu'"):
        match_classes(ImageDataset(images, torch.tensor([0, 0, 1]), ["cat", "emu"], name="t", split="test"),
                      ["bird", "cat", "dog"])


def test_training_labels_a_test_split_that_lacks_a_class_by_the_training_indices(tmp_path, capsys):
    root = make_tree(tmp_path / "tree", {"train": ["bird", "cat", "dog"], "test": ["cat", "dog"]})
    data = _build(root, tmp_path)
    assert data.num_classes == 3
    for x, y, _ in data.test_batches():
        for image, label in zip(x, y):
            assert ["bird", "cat", "dog"][int(label)] == colour_class((image * 255).round().to(torch.uint8))
    assert "bird" in capsys.readouterr().err  # the absent training class is said


def test_a_test_class_unknown_to_training_fails_before_training(tmp_path):
    root = make_tree(tmp_path / "tree", {"train": ["cat", "dog"], "test": ["cat", "dog", "emu"]})
    with pytest.raises(ValueError, match="emu"):
        _build(root, tmp_path)


def test_streamed_layout_matches_the_val_classes_too(tmp_path):
    root = make_tree(tmp_path / "tree", {"train": ["bird", "cat", "dog"], "val": ["dog"]})
    train = make_imagenet_loader(root, "train", 2, num_workers=0)
    val = make_imagenet_loader(root, "val", 2, train=False, num_workers=0, classes=train.dataset.classes,
                               image_size=8, resize=8)
    assert val.dataset.classes == ["bird", "cat", "dog"] and {y for _, y in val.dataset.samples} == {2}
    with pytest.raises(ValueError, match="emu"):
        make_tree(tmp_path / "other", {"train": ["cat"], "val": ["emu"]})
        make_imagenet_loader(tmp_path / "other", "val", 2, num_workers=0, classes=["cat"])


def test_load_test_split_with_training_classes(tmp_path):
    root = make_tree(tmp_path / "tree", {"train": ["bird", "cat", "dog"], "val": ["cat"]})
    train = load_dataset("folder", root=root, split="train")
    test = load_test_split("folder", root=root, classes=train.classes)
    assert test.split == "val" and test.classes == train.classes and set(test.labels.tolist()) == {1}


def test_evaluation_images_of_a_run_use_its_training_classes(tmp_path):
    root = make_tree(tmp_path / "tree", {"train": ["bird", "cat", "dog"], "test": ["cat", "dog"]})
    config = TrainConfig(dataset="folder", data=str(root), mask="none")
    for classes in (["bird", "cat", "dog"], None):  # None: the training split's, read from the data
        loader, n, _ = evalset.evaluation_loader("folder", root, "test", None, config, 4, torch.device("cpu"),
                                                 classes=classes)
        assert n == 4
        for x, y in loader:
            for image, label in zip(x, y):
                assert ["bird", "cat", "dog"][int(label)] == colour_class((image * 255).round().to(torch.uint8))
