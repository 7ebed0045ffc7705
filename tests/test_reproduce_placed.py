"""reproduce on cifar10-placed: the plans that use it, its steps, and Table 3 / Figure 10 measured on it."""
import dataclasses
import json

import pytest
from fake_cifar import fake_cifar10_archive

from gradmask.reproduce import make_plan
from gradmask.reproduce.experiments import figure10, table3
from gradmask.reproduce.runner import steps
from gradmask.reproduce.store import StoredPlan
from gradmask.train import TrainConfig

PLACED_STEPS = ["train-cifar10-placed", "train-cifar10-placed-li-blur", "saliency-cifar10-placed",
                "blur-cifar10-placed"]


@pytest.mark.parametrize("preset", ["cifar", "cifar-full", "overfit"])
def test_cifar_presets_run_table3_and_figure10_on_placed_objects_too(preset, tmp_path):
    plan = make_plan(preset, {"cifar10": str(tmp_path)})
    assert plan.box_sets == ("cifar10-placed",)
    fields = plan.training("cifar10-placed")
    assert fields["dataset"] == "cifar10-placed" and fields["data"] == str(tmp_path)
    TrainConfig.from_dict(fields)   # a valid recipe
    names = [s.name for s in steps(plan, tmp_path)]
    assert all(name in names for name in PLACED_STEPS), names
    # beside synthetic, which keeps its own steps
    assert all(n in names for n in ("train-synthetic", "train-synthetic-li-blur", "saliency-synthetic", "blur"))
    assert names.index("train-cifar10-placed-li-blur") < names.index("saliency-synthetic")   # training first
    train = next(s for s in steps(plan, tmp_path) if s.name == "train-cifar10-placed")
    assert train.settings["variants"] == ("none", "lateral") and train.runs == 2 * plan.seeds == 6
    stored = StoredPlan.read(tmp_path, {"plan": json.loads(json.dumps(plan.to_json()))})
    assert stored.table3_box_sets == ("synthetic", "cifar10-placed")


def test_without_cifar10_the_placed_box_set_is_skipped_and_quick_is_unchanged(tmp_path):
    plan = make_plan("cifar", {"cifar100": str(tmp_path)})
    assert plan.box_sets == () and any("cifar10-placed" in what for what, _ in plan.skipped)
    assert not any("placed" in s.name for s in steps(plan, tmp_path))
    quick = make_plan("quick", {"cifar10": str(tmp_path)})
    assert quick.box_sets == () and not any("placed" in what for what, _ in quick.skipped)
    assert [s.name for s in steps(quick, tmp_path)] == ["train-synthetic", "train-synthetic-li-blur", "cost",
                                                        "saliency-synthetic", "sanity", "robustness", "blur"]


TINY = dict(model="resnet18_narrow", groups=4, epochs=1, batch_size=16, lr=0.05, schedule="onecycle",
            warmup_epochs=0.5, augment="crop-flip", train_limit=None, test_limit=32, synthetic_train=32,
            synthetic_test=32, train_eval_images=16)


@pytest.mark.slow
def test_table3_and_figure10_are_measured_and_reported_on_placed_objects(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADMASK_CACHE", str(tmp_path / "cache"))
    archive = fake_cifar10_archive(tmp_path / "fake", per_class=(("train", 4), ("test", 4)))
    plan = make_plan("cifar", {"cifar10": str(archive)}, seeds=2)
    evaluation = dataclasses.replace(plan.preset.evaluation, saliency_images=32, blur_images=32, blur_sigmas=(0, 2),
                                     gsnr_samples=4)
    plan = dataclasses.replace(plan, preset=dataclasses.replace(plan.preset, placed_training={"cpu": TINY},
                                                                evaluation=evaluation))
    out = tmp_path / "out"
    by_name = {s.name: s for s in steps(plan, out)}
    results = {name: by_name[name].run() for name in PLACED_STEPS}
    assert (out / "cifar10-placed" / "runs" / "lateral-seed1" / "final.json").is_file()
    assert (out / "cifar10-placed" / "li-blur" / "none-seed1" / "final.json").is_file()
    saliency, blur = results["saliency-cifar10-placed"], results["blur-cifar10-placed"]
    assert saliency.box_set == "cifar10-placed" and saliency.n_images == 32 and saliency.num_classes == 10
    assert set(saliency.seeds) == {"0", "1"} and set(saliency.seeds["0"]) == {"lateral", "none"}
    assert blur.n_images == 32 and set(blur.seeds["1"]) == {"baseline", "li-blur"}
    # stored like the runner stores them, then reported beside nothing else (no synthetic step measured)
    from gradmask.reproduce.store import stored_json, write_step
    for name in ("saliency-cifar10-placed", "blur-cifar10-placed"):
        write_step(out, name, {"settings": {}, "result": json.loads(json.dumps(stored_json(results[name])))})
    s = table3.section(out, {}, ("synthetic", "cifar10-placed"))
    assert any(what.startswith("cifar10-placed: LI-Map") for what, _ in s.verdicts)
    assert "cifar10-placed models: cifar10-placed (32 training images, 32 test images)" in s.blocks[2][1]
    f = figure10.section(out, {}, ("synthetic", "cifar10-placed"))
    assert [what for what, _ in f.verdicts] == ["cifar10-placed: none + li-blur loses less accuracy than none when "
                                                "the background is blurred (change of the mean over sigma > 0 from "
                                                "its own sigma 0 accuracy)"]
    assert set(f.numbers) == {"cifar10-placed"} and set(f.numbers["cifar10-placed"]) >= {"unblurred_accuracy", "change"}
    assert (out / "figures" / "figure10-cifar10-placed.png").is_file()
    assert "32 CIFAR-10 test objects placed on backgrounds" in f.blocks[2][1]
