"""TrainConfig.synthetic_clutter: it reaches the training data, every evaluation of the run uses the
run's clutter (robustness evaluation set, reproduce's box images, gradmask saliency), bad values."""
import pytest
import torch

from gradmask.data import SYNTHETIC_DATA_SEED, make_synthetic
from gradmask.robustness.evalset import evaluation_loader
from gradmask.train import TrainConfig
from gradmask.train.augment import find_augment
from gradmask.train.data import build_data

CPU = torch.device("cpu")


def _all_images(loader) -> torch.Tensor:
    return torch.cat([x for x, *_ in loader])


def _as_float(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float().div(255)


@pytest.mark.parametrize("clutter", [0.0, 0.5])
def test_the_run_trains_and_tests_on_synthetic_data_of_its_clutter(clutter):
    config = TrainConfig(synthetic_train=12, synthetic_test=8, augment="none", synthetic_clutter=clutter,
                         batch_size=4, device="cpu", progress=False)
    data = build_data(config, find_augment("none")(config), CPU)
    data.set_epoch(0)
    expected_train = make_synthetic(12, seed=SYNTHETIC_DATA_SEED, split="train", clutter=clutter)
    expected_test = make_synthetic(8, seed=SYNTHETIC_DATA_SEED, split="test", clutter=clutter)
    seen = torch.cat([x for x, _ in data.train_batches()])
    # the training loader shuffles: compare the sets of images (sorted by their pixel sums)
    order = lambda t: t[t.flatten(1).sum(1).argsort()]  # noqa: E731
    torch.testing.assert_close(order(seen), order(_as_float(expected_train.images)))
    torch.testing.assert_close(_all_images(data.test_batches()), _as_float(expected_test.images))
    default = make_synthetic(8, seed=SYNTHETIC_DATA_SEED, split="test")  # clutter 1: other images
    assert not torch.equal(expected_test.images, default.images)


def test_robustness_evaluation_set_uses_the_runs_clutter():
    for clutter in (0.0, 1.0):
        config = TrainConfig(synthetic_test=8, synthetic_clutter=clutter)
        loader, n, _ = evaluation_loader("synthetic", None, "test", 6, config, 4, CPU)
        expected = make_synthetic(6, seed=SYNTHETIC_DATA_SEED, split="test", clutter=clutter)
        assert n == 6
        torch.testing.assert_close(_all_images(loader), _as_float(expected.images))


def _checkpoint(run, clutter):
    """A checkpoint of an untrained narrow ResNet whose config says ``synthetic_clutter=clutter``."""
    from gradmask.data import dataset_stats
    from gradmask.models import create_model
    from gradmask.train.checkpoint import FORMAT, save_checkpoint
    stats = dataset_stats("synthetic")
    config = TrainConfig(dataset="synthetic", model="resnet18_narrow", epochs=1, out=str(run), progress=False,
                         synthetic_clutter=clutter)
    torch.manual_seed(0)
    state = {"format": FORMAT, "epoch": 1, "model": create_model("resnet18_narrow", num_classes=10).state_dict(),
             "optimizer": {}, "scheduler": {}, "scaler": None, "rng": {}, "loader": {}, "config": config.to_dict(),
             "model_args": {"name": "resnet18_narrow", "num_classes": 10, "stem": "cifar",
                            "mean": list(stats.mean), "std": list(stats.std)},
             "history": []}
    run.mkdir(parents=True)
    save_checkpoint(run / "checkpoint.pt", state)


def test_reproduce_box_images_use_the_runs_clutter(tmp_path):
    from gradmask.reproduce import make_plan
    from gradmask.reproduce.runs import box_data
    plan = make_plan("quick")
    for clutter in (0.0, 1.0):
        run = tmp_path / f"c{clutter}"
        _checkpoint(run, clutter)
        data = box_data("synthetic", plan, 5, run)
        expected = make_synthetic(5, seed=SYNTHETIC_DATA_SEED, split="test", clutter=clutter)
        assert torch.equal(data.images, expected.images)


def test_saliency_cli_takes_the_clutter_from_the_checkpoint_unless_given(tmp_path):
    import argparse

    from gradmask.cli import saliency as cli
    from gradmask.train.checkpoint import load_trained
    _checkpoint(tmp_path / "clean", 0.0)
    _checkpoint(tmp_path / "full", 1.0)
    clean, full = load_trained(tmp_path / "clean"), load_trained(tmp_path / "full")
    args = argparse.Namespace(data="synthetic", dataset=None, split=None, image_size=None, images=4,
                              synthetic_clutter=None)
    _, data = cli._load_data(args, [clean])
    assert torch.equal(data.images, make_synthetic(4, seed=0, split="test", clutter=0.0).images)
    with pytest.raises(ValueError, match="--synthetic-clutter"):  # runs of different clutter: say which to use
        cli._load_data(args, [clean, full])
    args.synthetic_clutter = 1.0
    _, data = cli._load_data(args, [clean, full])
    assert torch.equal(data.images, make_synthetic(4, seed=0, split="test", clutter=1.0).images)


def test_bad_clutter_is_refused_naming_the_option(tmp_path):
    with pytest.raises(ValueError, match="synthetic_clutter must be a number >= 0"):
        TrainConfig(synthetic_clutter=-0.5)
    with pytest.raises(ValueError, match="synthetic_clutter"):
        TrainConfig(synthetic_clutter=float("nan"))
    from gradmask.cli import main
    _checkpoint(tmp_path / "run", 0.0)
    assert main(["saliency", str(tmp_path / "run"), "--synthetic-clutter", "-1"]) == 2


def test_quick_preset_recipe_and_the_long_recipe_unchanged():
    from gradmask.reproduce.presets import PRESETS
    quick = PRESETS["quick"].training["synthetic"]["cpu"]
    assert (quick["batch_size"], quick["lr"], quick["synthetic_clutter"]) == (32, 0.05, 0.0)
    assert PRESETS["quick"].boxes_training["cpu"] == quick
    long = PRESETS["paper"].boxes_training["cpu"]  # as before issue 17: full clutter, batch 64, lr 0.1
    assert long == dict(model="resnet18_narrow", epochs=15, batch_size=64, lr=0.1, schedule="triangle",
                        warmup_epochs=1.0, augment="crop-flip", train_limit=None, test_limit=1000,
                        synthetic_train=10000)
    config = TrainConfig.from_dict(long)
    assert config.synthetic_clutter == 1.0 and config.mask_settings.groups == 4  # the narrow model's
