"""The localisation benchmark (Table 3) on hand-made data, the figure grid and report, the
blurred-background evaluation (Figure 10), and the three commands end to end on tiny
checkpoints."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import gradmask
from gradmask.models.resnet import Normalized
from gradmask.saliency import GradCAM, LIMap, gaussian_blur, localization_scores
from gradmask.saliency.blur_eval import (
    blur_background,
    blurred_background_accuracy,
    box_masks,
    plot_blur_curves,
    write_blur_report,
)
from gradmask.saliency.evaluate import (
    default_cam_layer,
    evaluate_localization,
    predict,
    save_figure_grid,
    write_localization_report,
)


def resnet(seed=0, classes=10):
    torch.manual_seed(seed)
    model = gradmask.create_model("resnet18_narrow", classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


# boxes (x0, y0, x1, y1), exclusive ends, on 32x32 images (1024 px; 15 % = 154 px)
BOXES = [
    [[2, 3, 18, 17]],                  # 0: 224 px, kept
    [[0, 0, 32, 20]],                  # 1: 640 px > half the image: excluded (large box)
    [[8, 8, 22, 21]],                  # 2: kept by the box filters, misclassified: excluded
    [[0, 0, 14, 14], [18, 18, 31, 31]],  # 3: two objects: excluded
    [[10, 12, 26, 26]],                # 4: kept
    [[16, 0, 32, 13]],                 # 5: kept (208 px)
    [[0, 16, 14, 32]],                 # 6: kept
    [[5, 5, 27, 27]],                  # 7: 484 px <= 512, kept
]
KEPT = [0, 4, 5, 6, 7]


@pytest.fixture(scope="module")
def data():
    """Images whose boxes are bright blocks on a noisy background; labels = the model's
    predictions except image 2."""
    g = torch.Generator().manual_seed(0)
    x = 0.2 * torch.rand(8, 3, 32, 32, generator=g)
    for i, boxes in enumerate(BOXES):
        for x0, y0, x1, y1 in boxes:
            x[i, :, y0:y1, x0:x1] += 0.7
    with torch.no_grad():
        torch.set_num_threads(1)
        preds = resnet()(x).argmax(1)
    labels = preds.clone()
    labels[2] = (preds[2] + 1) % 10
    return x, labels, [torch.tensor(b) for b in BOXES]


def oracle(x, targets):
    """A perfect map: the bright blocks (every box covers >= 15 % of the pixels)."""
    return (x.mean(1) > 0.45).float()


# ----------------------------------------------------------------------------------------------
# target layer

def test_default_cam_layer():
    assert default_cam_layer(resnet()) == "layer4"
    assert default_cam_layer(Normalized(resnet(), (0.5,) * 3, (0.2,) * 3)) == "model.layer4"
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    plain.train()
    assert default_cam_layer(plain, torch.rand(2, 3, 16, 16)) == "4"  # the last ReLU, not the pool
    assert plain.training and plain[1].training and plain[1].num_batches_tracked.item() == 0
    with pytest.raises(ValueError, match="target_layer"):
        default_cam_layer(plain)


# ----------------------------------------------------------------------------------------------
# evaluate_localization

def test_evaluate_filters_and_counts(data):
    x, labels, boxes = data
    r = evaluate_localization(resnet(), x, labels, boxes, methods={"oracle": oracle})
    assert r["n_images"] == 8 and r["n_correct"] == 7 and r["accuracy"] == pytest.approx(7 / 8)
    assert r["index"] == KEPT and r["n_evaluated"] == 5
    assert r["excluded"] == {"multiple_objects": 1, "large_box": 1, "misclassified": 1}
    assert r["methods"]["oracle"] == {"mean_iou": 1.0, "frac_iou_ge_05": 1.0, "n": 5}
    assert r["ious"]["oracle"] == [1.0] * 5
    # each filter off lets its image in
    assert evaluate_localization(resnet(), x, labels, boxes, methods={"oracle": oracle},
                                 correct_only=False)["index"] == [0, 2, 4, 5, 6, 7]
    assert evaluate_localization(resnet(), x, labels, boxes, methods={"oracle": oracle},
                                 max_box_fraction=None)["index"] == [0, 1, 4, 5, 6, 7]
    multi = evaluate_localization(resnet(), x, labels, boxes, methods={"oracle": oracle}, single_object=False)
    assert multi["index"] == [0, 3, 4, 5, 6, 7] and multi["excluded"]["multiple_objects"] == 0
    # image 3: the top pixels span both blocks, the best box scores below 1
    assert multi["ious"]["oracle"][1] < 1.0
    nothing = evaluate_localization(resnet(), x, (labels + 1) % 10, boxes, methods={"oracle": oracle})
    assert nothing["n_evaluated"] == 0 and nothing["methods"]["oracle"]["n"] == 0
    assert math.isnan(nothing["methods"]["oracle"]["mean_iou"])


def test_evaluate_methods_match_direct_computation(data):
    x, labels, boxes = data
    model = resnet()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    r = evaluate_localization(model, x, labels, boxes, batch_size=2, return_maps=True)
    assert set(r["methods"]) == {"limap", "gradcam", "gradcam++"}
    assert r["settings"]["target_layer"] == "layer4"
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    idx = torch.tensor(KEPT)
    for name, method in [("limap", LIMap(model)), ("gradcam", GradCAM(model, "layer4"))]:
        maps = method(x[idx], labels[idx])
        assert torch.allclose(r["maps"][name], maps, atol=1e-5)
        ref = localization_scores(maps, [boxes[i] for i in KEPT])
        assert r["methods"][name]["mean_iou"] == pytest.approx(ref["mean_iou"])
        assert r["methods"][name]["frac_iou_ge_05"] == pytest.approx(ref["frac_iou_ge_05"])
        assert r["methods"][name]["n"] == 5 and 0.0 <= r["methods"][name]["mean_iou"] <= 1.0
    big = evaluate_localization(model, x, labels, boxes, batch_size=64)
    for name in r["methods"]:
        assert big["methods"][name]["mean_iou"] == pytest.approx(r["methods"][name]["mean_iou"], abs=1e-9)
    # uint8 images give the same selection
    x8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    r8 = evaluate_localization(model, x8, predict(model, x8), boxes, methods=["gradcam"])
    assert r8["methods"]["gradcam"]["n"] == r8["n_evaluated"] == len(r8["index"])


def test_evaluate_errors(data):
    x, labels, boxes = data
    with pytest.raises(ValueError, match="methods"):
        evaluate_localization(resnet(), x, labels, boxes, methods=["gbp"])
    with pytest.raises(ValueError, match="labels"):
        evaluate_localization(resnet(), x, labels[:3], boxes)
    with pytest.raises(ValueError, match="boxes"):
        evaluate_localization(resnet(), x, labels, boxes[:3])
    with pytest.raises(ValueError, match="top_fraction"):
        evaluate_localization(resnet(), x, labels, boxes, top_fraction=0)
    with pytest.raises(ValueError, match="targets"):
        evaluate_localization(resnet(), x, labels, boxes, targets="true")
    with pytest.raises(ValueError, match="images"):
        evaluate_localization(resnet(), x[0], labels, boxes)


def test_figure_grid_and_report(data, tmp_path):
    x, labels, boxes = data
    r = evaluate_localization(resnet(), x, labels, boxes, return_maps=True)
    idx = r["index"]
    path = save_figure_grid(tmp_path / "grid.png", x[idx], [boxes[i] for i in idx], r["maps"], n=3)
    with Image.open(path) as im:
        w, h = im.size
    assert w > h > 0  # 3 rows, 4 columns
    with pytest.raises(ValueError, match="maps_by_method"):
        save_figure_grid(tmp_path / "bad.png", x[idx], [boxes[i] for i in idx], {"limap": r["maps"]["limap"][:2]})
    paths = write_localization_report(tmp_path / "report", r, {"checkpoint": "run", "data": "hand-made"}, path)
    saved = json.loads(paths["json"].read_text())
    assert saved["n_evaluated"] == 5 and saved["methods"]["limap"]["n"] == 5 and "maps" not in saved
    assert saved["setting"]["data"] == "hand-made" and saved["figure"].endswith("grid.png")
    md = paths["markdown"].read_text()
    assert "| limap |" in md and "| gradcam++ |" in md and "grid.png" in md
    empty = evaluate_localization(resnet(), x, (labels + 1) % 10, boxes, methods=["limap"])
    paths = write_localization_report(tmp_path / "empty", empty, "nothing passes")
    assert json.loads(paths["json"].read_text())["methods"]["limap"]["mean_iou"] is None
    assert "| limap | n/a | n/a | 0 |" in paths["markdown"].read_text()


# ----------------------------------------------------------------------------------------------
# blurred background

def test_blur_background_keeps_box_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 24, generator=g)
    boxes = [torch.tensor([[3, 4, 10, 12]]), torch.tensor([[0, 0, 5, 5], [15, 10, 24, 20]])]
    out = blur_background(x, boxes, 2.0)
    inside = box_masks(boxes, 20, 24).unsqueeze(1).expand_as(x)
    assert inside[0].sum() == 3 * 7 * 8 and inside[1].sum() == 3 * (25 + 90)
    assert torch.equal(out[inside], x[inside])  # exactly untouched
    blurred = gaussian_blur(x, 2.0)
    assert torch.equal(out[~inside], blurred[~inside])
    assert (out[~inside] - x[~inside]).abs().mean() > 0.05
    assert torch.equal(blur_background(x, boxes, 0), x)
    x8 = (x * 255).to(torch.uint8)
    assert torch.equal(blur_background(x8, boxes, 0), x8.float() / 255)
    with pytest.raises(ValueError, match="sigmas"):
        blur_background(x, boxes, -1)


def test_blurred_background_accuracy(data):
    x, labels, boxes = data
    model = resnet()
    model.train()
    curve = blurred_background_accuracy(model, x, labels, boxes, blur_sigmas=(0, 2, 8), batch_size=3)
    assert [s for s, _ in curve] == [0.0, 2.0, 8.0]
    plain = (predict(model, x) == labels).double().mean().item()
    assert curve[0][1] == pytest.approx(plain)
    for sigma, acc in curve[1:]:
        manual = (predict(model, blur_background(x, boxes, sigma)) == labels).double().mean().item()
        assert acc == pytest.approx(manual)
    assert model.training
    assert blurred_background_accuracy(model, x, labels, boxes, (0, 2, 8), batch_size=256) == curve
    x8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    assert blurred_background_accuracy(model, x8, labels, torch.stack([b[0] for b in boxes]), (0,))[0][1] == \
        pytest.approx((predict(model, x8) == labels).double().mean().item())
    with pytest.raises(ValueError, match="blur_sigmas"):
        blurred_background_accuracy(model, x, labels, boxes, ())
    with pytest.raises(ValueError, match="labels"):
        blurred_background_accuracy(model, x, labels[:2], boxes)


def test_blur_plot_and_report(tmp_path):
    curves = {"vanilla": [(0.0, 0.8), (2.0, 0.6)], "enhanced": [(0.0, 0.79), (2.0, 0.7)]}
    assert plot_blur_curves(tmp_path / "b.png", curves).is_file()
    paths = write_blur_report(tmp_path, curves, {"data": "x"})
    saved = json.loads(paths["json"].read_text())
    assert saved["curves"]["enhanced"][1] == {"sigma": 2.0, "accuracy": 0.7}
    assert "| 2 | 0.6000 | 0.7000 |" in paths["markdown"].read_text()
    with Image.open(paths["figure"]) as im:
        assert im.size[0] > 100


# ----------------------------------------------------------------------------------------------
# the commands, on checkpoints written in the training engine's format

def write_checkpoint(run, seed=0, classes=10):
    train = pytest.importorskip("gradmask.train")
    from gradmask.data import dataset_stats
    from gradmask.train.checkpoint import FORMAT, save_checkpoint
    stats = dataset_stats("synthetic")
    config = train.TrainConfig(dataset="synthetic", model="resnet18_narrow", mask="none", epochs=1,
                               seed=seed, out=str(run), progress=False)
    model = resnet(seed, classes)
    state = {"format": FORMAT, "epoch": 1, "model": model.state_dict(), "optimizer": {}, "scheduler": {},
             "scaler": None, "rng": {}, "loader": {}, "config": config.to_dict(),
             "model_args": {"name": "resnet18_narrow", "num_classes": classes, "stem": "cifar",
                            "mean": list(stats.mean), "std": list(stats.std)},
             "history": []}
    run.mkdir(parents=True)
    save_checkpoint(run / "checkpoint.pt", state)
    loaded, _ = train.load_checkpoint(run)
    return loaded


@pytest.fixture
def main():
    from gradmask.cli import main as cli_main
    return cli_main


def test_cli_saliency(tmp_path, main, capsys):
    run = tmp_path / "runs" / "a"
    write_checkpoint(run)
    assert main(["saliency", str(run), "--images", "40", "--batch-size", "16", "--no-correct-only"]) == 0
    out = run / "saliency"
    saved = json.loads((out / "localization.json").read_text())
    assert saved["n_images"] == 40 and saved["settings"]["correct_only"] is False
    assert set(saved["methods"]) == {"limap", "gradcam", "gradcam++"}
    assert saved["n_evaluated"] == saved["methods"]["limap"]["n"] > 0
    assert (out / "localization.md").is_file()
    with Image.open(out / "localization.png") as im:
        assert im.size[0] > 100
    printed = capsys.readouterr()
    assert "mean IoU" in printed.out
    # an untrained model: near chance (10 classes) is said on stderr and in the report, once
    near = saved["accuracy"] < 0.15
    assert printed.err.count("near chance level") == near
    assert ("near chance level" in (out / "localization.md").read_text()) == near
    # a checkpoint path, another out folder, one method
    assert main(["saliency", str(run / "checkpoint.pt"), "--images", "20", "--methods", "limap",
                 "--out", str(tmp_path / "s")]) == 0
    assert set(json.loads((tmp_path / "s" / "localization.json").read_text())["methods"]) == {"limap"}
    assert main(["saliency", str(tmp_path / "missing")]) == 2
    assert main(["saliency", str(run), "--methods", "gbp"]) == 2
    assert "--methods" in capsys.readouterr().err


def make_voc(root):
    base = root / "VOCdevkit" / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / d).mkdir(parents=True)
    ids = ["000001", "000002", "000003"]
    for i, image_id in enumerate(ids):
        a = np.full((40, 48, 3), 30, dtype=np.uint8)
        a[5:25, 10 + i:30 + i] = 220
        Image.fromarray(a).save(base / "JPEGImages" / f"{image_id}.jpg")
        (base / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><object><name>{['dog', 'cat', 'car'][i]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{11 + i}</xmin><ymin>6</ymin><xmax>{30 + i}</xmax><ymax>25</ymax></bndbox></object></annotation>")
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")


def test_cli_saliency_voc_checks_classes(tmp_path, main, capsys):
    make_voc(tmp_path / "voc")
    write_checkpoint(tmp_path / "ten")
    assert main(["saliency", str(tmp_path / "ten"), "--data", str(tmp_path / "voc"), "--image-size", "32"]) == 2
    assert "10 classes but the data has 20" in capsys.readouterr().err
    write_checkpoint(tmp_path / "twenty", classes=20)
    assert main(["saliency", str(tmp_path / "twenty"), "--data", str(tmp_path / "voc"), "--image-size", "32",
                 "--no-correct-only"]) == 0
    saved = json.loads((tmp_path / "twenty" / "saliency" / "localization.json").read_text())
    assert saved["n_images"] == 3 and saved["n_evaluated"] == 3 and "voc2007" in saved["setting"]["data"]


@pytest.mark.slow
def test_cli_sanity(tmp_path, main, capsys):
    run = tmp_path / "run"
    write_checkpoint(run)
    assert main(["sanity", str(run), "--images", "2", "--methods", "limap,gradcam"]) == 0
    out = run / "sanity"
    saved = json.loads((out / "sanity.json").read_text())
    assert set(saved["methods"]) == {"limap", "gradcam"}
    steps = saved["methods"]["limap"]
    assert steps[0]["spearman"] == pytest.approx(1.0) and steps[1]["randomized"] == "fc"
    assert len(steps) == 11 and len(steps[0]["ssim_images"]) == 2
    for name in ("sanity.md", "sanity.png", "sanity_maps_limap.png", "sanity_maps_gradcam.png"):
        assert (out / name).is_file()
    assert "fc" in capsys.readouterr().out


def test_cli_blur_eval(tmp_path, main, capsys):
    runs = [tmp_path / "runs" / "vanilla", tmp_path / "runs" / "enhanced"]
    models = [write_checkpoint(runs[0], seed=0), write_checkpoint(runs[1], seed=1)]
    assert main(["blur-eval", *map(str, runs), "--images", "40", "--sigmas", "0,2"]) == 0
    out = tmp_path / "runs" / "blur-eval"
    saved = json.loads((out / "blur.json").read_text())
    assert list(saved["curves"]) == ["vanilla", "enhanced"]
    from gradmask.saliency.boxes import load_box_dataset
    data = load_box_dataset("synthetic", limit=40)
    for name, model in zip(["vanilla", "enhanced"], models):
        curve = saved["curves"][name]
        assert [p["sigma"] for p in curve] == [0.0, 2.0]
        plain = (predict(model, data.images) == data.labels).double().mean().item()
        assert curve[0]["accuracy"] == pytest.approx(plain)
    assert (out / "blur.md").is_file() and (out / "blur.png").is_file()
    assert main(["blur-eval", str(runs[0]), "--sigmas", "0,-1"]) == 2
    assert "--sigmas" in capsys.readouterr().err
