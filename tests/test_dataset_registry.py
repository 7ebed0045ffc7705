"""The dataset registry (issue 14): one DatasetSpec per dataset; a dataset registered in one place
trains and evaluates with no other change; the built-in specs carry what the callers used to
spell out per name."""
import pytest
import torch

from gradmask.data import (
    DATASET_STATS,
    DATASETS,
    DatasetSpec,
    ImageDataset,
    MissingSplitError,
    Stats,
    dataset_spec,
    load_dataset,
    load_eval_split,
    register_dataset,
)
from gradmask.robustness.evalset import evaluation_loader, training_classes
from gradmask.robustness.pruning import accuracy
from gradmask.train import TrainConfig, load_checkpoint, read_checkpoint, train
from gradmask.train.checkpoint import trained_image_size

TOY_STATS = Stats((0.4, 0.3, 0.4), (0.3, 0.2, 0.3))


def _toy(root=None, split="train", cache_dir=None, n=None):
    """Two classes of 8x8 images: red (0) or blue (1) squares on noise; 48 train / 16 test images."""
    n = n or (48 if split == "train" else 16)
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 60, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[labels == 0, 0, 2:6, 2:6] = 250
    images[labels == 1, 2, 2:6, 2:6] = 250
    return ImageDataset(images, labels, ["red", "blue"], name="toy", split=split)


@pytest.fixture
def toy():
    register_dataset("toy", stats=TOY_STATS, needs_root=False, image_size=8, num_classes=2)(_toy)
    try:
        yield DATASETS["toy"]
    finally:
        DATASETS.pop("toy")
        DATASET_STATS.pop("toy")


def test_a_dataset_registered_in_one_place_trains_and_evaluates(toy, tmp_path):
    out = tmp_path / "toy-run"
    config = TrainConfig.from_dict(dict(dataset="toy", epochs=2, batch_size=16, lr=0.05, mask="lateral", groups=4,
                                        kernel_size=None, progress=False, out=str(out)))
    final = train(config)
    model, _ = load_checkpoint(out)
    args = read_checkpoint(out)["model_args"]
    assert args["num_classes"] == 2 and args["image_size"] == 8 and args["stem"] == "cifar"
    assert tuple(args["mean"]) == TOY_STATS.mean and tuple(args["std"]) == TOY_STATS.std   # the spec's stats
    assert trained_image_size(config, {}) == 8
    assert training_classes("toy", None) == ["red", "blue"]
    loader, n, _ = evaluation_loader("toy", None, "test", None, config, 8, torch.device("cpu"))
    assert n == 16
    acc, seen = accuracy(model.eval(), loader)
    assert seen == 16 and acc == pytest.approx(final["test_acc"])     # the run's own test accuracy
    with pytest.raises(ValueError, match="image_size applies to dataset 'folder'"):
        TrainConfig(dataset="toy", image_size=16)                      # not resizable
    assert TrainConfig(dataset="toy", val_fraction=0.25).val_fraction == 0.25   # in memory: may hold out


def test_builtin_specs_carry_the_per_dataset_rules():
    syn, c10, c100, folder, imnet = (DATASETS[n] for n in ("synthetic", "cifar10", "cifar100", "folder", "imagenet"))
    assert syn.rendered and not syn.needs_root and syn.image_size == 32 and syn.num_classes == 10
    assert c10.image_size == c100.image_size == 32 and c10.fixed_size
    assert (c10.num_classes, c100.num_classes) == (10, 100)
    assert c10.train_images == c100.train_images == 50000 and c10.test_splits == ("test",)
    assert folder.resizable and folder.stats is None and folder.test_splits == ("test", "val")
    assert imnet.streamed and imnet.load is None and imnet.test_splits == ("val",) and imnet.image_size == 224
    assert DATASET_STATS["imagenet"] == imnet.stats and DATASET_STATS["cifar10"].mean[0] == pytest.approx(0.4914)
    assert [n for n, s in DATASETS.items() if not s.needs_root] == ["synthetic"]


def test_registry_errors_name_the_dataset():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; available: \[.*'imagenet'.*'synthetic'"):
        dataset_spec("mnist")
    with pytest.raises(ValueError, match="'imagenet' is streamed"):
        load_dataset("imagenet", "/tmp")
    with pytest.raises(ValueError, match="needs load=<reader>"):
        DatasetSpec("x", None)
    with pytest.raises(ValueError, match="test_splits"):
        DatasetSpec("x", _toy, test_splits=())
    with pytest.raises(ValueError, match="dataset must be one of"):
        TrainConfig(dataset="mnist")


def test_eval_split_falls_back_to_val_only_where_the_spec_says(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (4, 4), (200, 0, 0) if cls == "a" else (0, 0, 200)).save(tmp_path / split / cls / "0.png")
    ds = load_eval_split("folder", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.split == "val" and len(ds) == 2
    register_dataset("strict_folder")(DATASETS["folder"].load)       # "test" only: no fallback to val/
    try:
        with pytest.raises(MissingSplitError):
            load_eval_split("strict_folder", tmp_path, cache_dir=tmp_path / "cache")
    finally:
        DATASETS.pop("strict_folder")
