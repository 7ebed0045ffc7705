"""The robustness report files, plot_gsnr, and ``gradmask robustness`` end to end on two tiny
trained runs (one with the gradient mask, trained with the GSNR probe)."""
import base64
import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gradmask.robustness import plot_gsnr, write_report
from gradmask.robustness.report import MASK_NOTE


def fake_results(warning=None):
    nan = math.nan
    curve = {"none": [[0.0, 1.0], [4.0, 0.5]], "lateral": [[0.0, 1.0], [4.0, 0.75]]}
    if warning:
        curve = {"none": [[0.0, nan], [4.0, nan]], "lateral": [[0.0, nan], [4.0, nan]]}
    return {
        "models": [{"name": "none", "checkpoint": "runs/none/checkpoint.pt", "model": "resnet18_narrow",
                    "mask": "none", "seed": 0, "n_eval": 10},
                   {"name": "lateral", "checkpoint": "runs/lateral/checkpoint.pt", "model": "resnet18_narrow",
                    "mask": "lateral", "seed": 0, "n_eval": 10}],
        "data": {"dataset": "synthetic", "source": "rendered", "split": "test", "n_images": 10},
        "pruning": {n: {"global": {"scheme": "global", "n_images": 10, "points": [[0.0, 0.6], [0.5, 0.4]],
                                   "achieved_sparsity": [0.0, 0.5]}} for n in ("none", "lateral")},
        "fgsm": {"subset": "joint", "n_images": 0 if warning else 4, "n_total": 10, "n_joint": 0 if warning else 4,
                 "clean_accuracy": {"none": 0.6, "lateral": 0.5}, "warning": warning, "curves": curve},
        "gsnr": {n: {"summary": {"conv1": 0.2, "conv2": 0.1, "network": 0.15}, "n_samples": 8, "masked": [],
                     "split": "train", "eps": 1e-30} for n in ("none", "lateral")},
    }


def test_report_files_are_complete_and_self_contained(tmp_path):
    paths = write_report(fake_results(), tmp_path)
    for name in ("robustness.md", "robustness.html", "robustness.json", "pruning.csv", "fgsm.csv", "gsnr.csv",
                 "pruning.png", "fgsm.png", "gsnr.png"):
        assert (tmp_path / name).is_file(), name
    md = (tmp_path / "robustness.md").read_text()
    assert MASK_NOTE in md and "runs/lateral/checkpoint.pt" in md and "| none | global | 10 | 0.6000 | 0.4000 |" in md
    assert "4 of 10 images that every model classifies correctly" in md
    page = (tmp_path / "robustness.html").read_text()
    assert "http" not in page.replace("http-equiv", "") and page.count("data:image/png;base64,") == 3
    png = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(Path(tmp_path / "fgsm.csv").read_text().splitlines()))
    assert rows[1] == {"model": "none", "subset": "joint", "n_images": "4", "epsilon_255": "4.0",
                       "epsilon": str(4 / 255), "accuracy": "0.5"}
    assert json.loads((tmp_path / "robustness.json").read_text())["fgsm"]["n_joint"] == 4
    assert paths["html"] == tmp_path / "robustness.html"


def test_report_shows_the_chance_level_warnings(tmp_path):
    results = dict(fake_results(), warnings=["model none is near chance level: accuracy 10.1% with 10 classes"])
    write_report(results, tmp_path)
    md = (tmp_path / "robustness.md").read_text()
    assert md.count("**Warning:** model none is near chance level: accuracy 10.1% with 10 classes.") == 1
    assert "near chance level" in (tmp_path / "robustness.html").read_text()


def test_report_states_an_empty_joint_set(tmp_path):
    warning = "no image to attack: none of the 10 images is classified correctly by every model (none, lateral)"
    write_report(fake_results(warning), tmp_path)
    md = (tmp_path / "robustness.md").read_text()
    assert f"WARNING: {warning}" in md and "| none | 0 | 0.6000 | n/a | n/a |" in md
    assert "WARNING" in (tmp_path / "robustness.html").read_text()
    assert json.loads((tmp_path / "robustness.json").read_text())["fgsm"]["curves"]["none"][0][1] is None


def test_plot_gsnr_from_run_dirs(tmp_path):
    for variant, seed, base in (("none", 0, 0.1), ("lateral", 0, 0.2), ("lateral", 1, 0.25)):
        run = tmp_path / f"{variant}-seed{seed}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"mask": variant, "seed": seed}))
        (run / "gsnr.jsonl").write_text("".join(json.dumps({"epoch": e, "network": base * e, "layers": {"c": base}})
                                                + "\n" for e in (1, 2, 3)))
    (tmp_path / "empty").mkdir()
    out = plot_gsnr([tmp_path / "none-seed0", tmp_path / "lateral-seed0", tmp_path / "lateral-seed1",
                     tmp_path / "empty"], tmp_path / "gsnr.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    plot_gsnr([tmp_path / "none-seed0"], tmp_path / "layer.png", layer="c")
    with pytest.raises(ValueError, match="run_dirs"):
        plot_gsnr([tmp_path / "empty"], tmp_path / "none.png")


def test_compatibility_errors():
    from gradmask.robustness.measure import check_compatible
    cfg = lambda model="resnet18_narrow", dataset="synthetic": SimpleNamespace(model=model, dataset=dataset, data=None,  # noqa: E731
                                                                                     synthetic_clutter=1.0)
    base = {"path": "a", "config": cfg(), "arch": [("w", (3,))], "num_classes": 10}
    check_compatible([base, dict(base, path="b")], "synthetic", False)
    with pytest.raises(ValueError, match="different architectures"):
        check_compatible([base, dict(base, path="b", config=cfg("resnet18"))], "synthetic", False)
    with pytest.raises(ValueError, match="different architectures"):
        check_compatible([base, dict(base, path="b", arch=[("w", (4,))])], "synthetic", False)
    with pytest.raises(ValueError, match="numbers of classes"):
        check_compatible([base, dict(base, path="b", num_classes=5)], "synthetic", False)
    with pytest.raises(ValueError, match="different data"):
        check_compatible([base, dict(base, path="b", config=cfg(dataset="cifar10"))], "synthetic", False)


# ------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    train_module = pytest.importorskip("gradmask.train")
    from gradmask.data import load_dataset
    from gradmask.robustness import GSNRProbe
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("robustness")
        probe_set = load_dataset("synthetic", split="train", n=8, seed=0)
        dirs = []
        for mask in ("none", "lateral"):
            config = train_module.TrainConfig.from_dict(dict(
                dataset="synthetic", model="resnet18_narrow", epochs=2, batch_size=32, train_limit=64,
                test_limit=48, synthetic_train=64, synthetic_test=48, mask=mask, groups=4, schedule="cosine",
                out=str(root / f"{mask}-seed0"), progress=False, device="cpu"))
            train_module.train(config, callbacks=[GSNRProbe(probe_set.images, probe_set.labels, every=1)])
            dirs.append(root / f"{mask}-seed0")
        return root, dirs
    finally:
        torch.set_num_threads(previous)


@pytest.mark.slow
def test_probe_during_training_and_plot(runs):
    root, dirs = runs
    from gradmask.robustness import read_gsnr
    none, lateral = (read_gsnr(d) for d in dirs)
    assert [r["epoch"] for r in none] == [1, 2] and none[0]["masked"] == []
    assert lateral[0]["masked"] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    assert all(r["network"] > 0 and "layer1.0.conv1" in r["layers"] for r in none + lateral)
    metrics = [json.loads(line) for line in Path(dirs[1] / "metrics.jsonl").read_text().splitlines()]
    assert [m["gsnr_network"] for m in metrics] == pytest.approx([r["network"] for r in lateral])
    plot_gsnr(dirs, root / "gsnr-epochs.png")


@pytest.mark.slow
def test_robustness_command_end_to_end(runs, capsys):
    root, dirs = runs
    from gradmask.cli import main
    out = root / "report"
    code = main(["robustness", str(dirs[0]), str(dirs[1] / "checkpoint.pt"), "--epsilons", "0,2,8",
                 "--sparsities", "0,0.5", "--schemes", "global,layer", "--gsnr-samples", "6", "--test-limit", "40",
                 "--out", str(out), "--no-progress", "--device", "cpu"])
    assert code == 0
    results = json.loads((out / "robustness.json").read_text())
    assert [m["name"] for m in results["models"]] == ["none-seed0", "lateral-seed0"]
    assert results["models"][1]["checkpoint"].endswith("lateral-seed0/checkpoint.pt")
    assert results["data"]["n_images"] == 40 and results["fgsm"]["n_total"] == 40
    fgsm = results["fgsm"]
    if fgsm["n_joint"]:
        assert all(c[0] == [0.0, 1.0] for c in fgsm["curves"].values())
    else:
        assert "classified correctly by every model" in fgsm["warning"]
    assert set(results["pruning"]["none-seed0"]) == {"global", "layer"}
    # sparsity 0 = the run's own accuracy on those images
    from gradmask.data import TensorLoader, load_dataset
    from gradmask.robustness.pruning import accuracy
    from gradmask.train import load_checkpoint
    model, _ = load_checkpoint(dirs[0])
    test = load_dataset("synthetic", split="test", n=40, seed=0)
    acc, n = accuracy(model, TensorLoader(test.images, test.labels, 16, shuffle=False))
    assert results["pruning"]["none-seed0"]["global"]["points"][0] == [0.0, acc] and n == 40
    assert results["gsnr"]["lateral-seed0"]["masked"] and not results["gsnr"]["none-seed0"]["masked"]
    assert results["gsnr"]["none-seed0"]["n_samples"] == 6
    for name in ("robustness.md", "robustness.html", "pruning.png", "fgsm.png", "gsnr.png", "gsnr.csv"):
        assert (out / name).is_file()
    captured = capsys.readouterr()
    assert "lateral-seed0" in captured.out
    # every warning printed once (the library's own RuntimeWarning of an empty FGSM set is not repeated)
    printed = [line for line in captured.err.splitlines() if "warning" in line.lower()]
    expected = ([fgsm["warning"]] if fgsm["warning"] else []) + results["warnings"]
    assert printed == [f"warning: {w}" for w in expected]


@pytest.mark.slow
def test_robustness_command_errors(runs, capsys):
    root, dirs = runs
    from gradmask.cli import main
    assert main(["robustness", str(dirs[0]), "--epsilons", "0,-2", "--no-progress"]) == 2
    assert "epsilons" in capsys.readouterr().err
    assert main(["robustness", str(dirs[0]), "--sparsities", "0,1", "--no-progress"]) == 2
    assert "sparsities" in capsys.readouterr().err
    assert main(["robustness", str(root / "missing"), "--no-progress"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
