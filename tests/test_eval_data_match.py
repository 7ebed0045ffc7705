"""Evaluation data must match the model (issue 26, item 3): ``saliency``, ``sanity``, ``blur-eval``
and ``robustness`` compare the data's class names with the ones the checkpoint records, for every
kind of data (synthetic included), and refuse a mismatch naming both lists; without ``--data`` the
box commands use the model's own dataset where it has boxes, else say which ``--data`` to give."""
import json

import numpy as np
import pytest
from PIL import Image

from gradmask.data.synthetic import SYNTHETIC_CLASSES

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_run(run, classes, dataset="synthetic", data=None, seed=0):
    """A run folder whose checkpoint records ``classes`` (model_args) and was trained on ``dataset``."""
    import torch

    from gradmask.data import dataset_stats
    from gradmask.models import create_model
    from gradmask.train import TrainConfig
    from gradmask.train.checkpoint import FORMAT, save_checkpoint
    torch.manual_seed(seed)
    stats = dataset_stats("synthetic")
    config = TrainConfig(dataset=dataset, data=data, model="resnet18_narrow", mask="none", epochs=1, seed=seed,
                         out=str(run), progress=False)
    model = create_model("resnet18_narrow", len(classes), stem="cifar", mean=stats.mean, std=stats.std)
    state = {"format": FORMAT, "epoch": 1, "model": model.state_dict(), "optimizer": {}, "scheduler": {},
             "scaler": None, "rng": {}, "loader": {}, "config": config.to_dict(),
             "model_args": {"name": "resnet18_narrow", "num_classes": len(classes), "stem": "cifar",
                            "mean": list(stats.mean), "std": list(stats.std), "image_size": 32,
                            "classes": list(classes)},
             "history": []}
    run.mkdir(parents=True)
    save_checkpoint(run / "checkpoint.pt", state)
    return run


@pytest.fixture
def main():
    from gradmask.cli import main as cli_main
    return cli_main


def _cifar_run(tmp_path):
    return write_run(tmp_path / "cifar", CIFAR10, dataset="cifar10", data=str(tmp_path / "cifar-data"))


COMMANDS = {"saliency": ["--images", "8", "--methods", "limap"],
            "sanity": ["--images", "2", "--methods", "limap"],
            "blur-eval": ["--images", "8", "--sigmas", "0"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cifar_model_on_synthetic_data_is_refused_naming_both_lists(tmp_path, main, capsys, command):
    """The probe: `gradmask saliency RUN` of a CIFAR-10 model scored it on the synthetic shapes."""
    run = _cifar_run(tmp_path)
    assert main([command, str(run), "--data", "synthetic", *COMMANDS[command]]) == 2
    err = capsys.readouterr().err
    assert "airplane" in err and SYNTHETIC_CLASSES[0] in err, err  # both lists named
    assert not (run / command.replace("-eval", "")).exists() and not (tmp_path / "blur-eval").exists()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_default_data_of_a_model_without_boxes_says_which_data_to_give(tmp_path, main, capsys, command):
    run = _cifar_run(tmp_path)
    assert main([command, str(run), *COMMANDS[command]]) == 2
    err = capsys.readouterr().err
    assert "cifar10" in err and "--data" in err and "boxes" in err, err
    assert len(err.strip().splitlines()) == 1


def test_default_data_of_a_synthetic_model_is_its_own(tmp_path, main, capsys):
    run = write_run(tmp_path / "syn", SYNTHETIC_CLASSES)
    assert main(["saliency", str(run), "--images", "8", "--methods", "limap", "--no-correct-only"]) == 0
    saved = json.loads((run / "saliency" / "localization.json").read_text())
    assert saved["n_images"] == 8 and "synthetic" in saved["setting"]["data"]


def test_synthetic_model_with_other_class_order_is_scored_by_name(tmp_path, main, capsys):
    """Same names, another order: labels are matched to the model's classes by name."""
    import torch
    run = write_run(tmp_path / "syn", list(reversed(SYNTHETIC_CLASSES)))
    from gradmask.saliency.boxes import load_box_dataset, match_box_classes
    data = load_box_dataset("synthetic", limit=20)
    matched = match_box_classes(data, list(reversed(SYNTHETIC_CLASSES)), str(run))
    assert torch.equal(matched.labels, len(SYNTHETIC_CLASSES) - 1 - data.labels)
    assert matched.classes == list(reversed(SYNTHETIC_CLASSES))


def test_xml_tree_with_classes_the_model_lacks_is_refused_naming_both(tmp_path, main, capsys):
    root = tmp_path / "boxes"
    for cls in ("cat", "tractor"):
        d = root / "val" / cls
        d.mkdir(parents=True)
        Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8)).save(d / "a.png")
        (d / "a.xml").write_text(f"<annotation><object><name>{cls}</name><bndbox><xmin>2</xmin><ymin>2</ymin>"
                                 f"<xmax>10</xmax><ymax>10</ymax></bndbox></object></annotation>")
    run = _cifar_run(tmp_path)
    assert main(["saliency", str(run), "--data", str(root), "--dataset", "xml", "--methods", "limap"]) == 2
    err = capsys.readouterr().err
    assert "tractor" in err and "airplane" in err, err


def test_robustness_on_synthetic_data_of_a_cifar_model_is_refused(tmp_path, main, capsys):
    run = _cifar_run(tmp_path)
    assert main(["robustness", str(run), "--data", "synthetic", "--test-limit", "8", "--gsnr-samples", "0",
                 "--sparsities", "0", "--epsilons", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "airplane" in err and SYNTHETIC_CLASSES[0] in err, err


def test_robustness_runs_of_different_classes_are_refused(tmp_path, main, capsys):
    a = write_run(tmp_path / "a", SYNTHETIC_CLASSES)
    b = write_run(tmp_path / "b", list(SYNTHETIC_CLASSES[:9]) + ["other"], seed=1)
    assert main(["robustness", str(a), str(b), "--test-limit", "8", "--gsnr-samples", "0", "--sparsities", "0",
                 "--epsilons", "0", "--no-progress"]) == 2
    assert "other" in capsys.readouterr().err
