"""Comparison arms defined by settings: parsing, canonical names, and a compare run that uses them."""
import json

import pytest

from gradmask.compare import compare, load_runs
from gradmask.compare.arms import Arm, arm_changes, parse_arm
from gradmask.compare.runner import check_variants
from gradmask.train import TrainConfig


def test_an_arm_is_a_mode_plus_typed_overrides_with_one_canonical_name():
    arm = parse_arm("lateral@sigma=1.0@kernel-size=3")
    assert arm == Arm("lateral", (("sigma", 1.0), ("kernel_size", 3)))
    assert arm.name == "lateral@sigma=1@kernel_size=3"
    assert parse_arm(arm.name) == arm  # the name parses back to the same arm
    assert parse_arm("none").name == "none" and arm_changes("none") == {"mask": "none"}
    assert arm_changes("lateral@sigma=1") == {"sigma": 1.0, "mask": "lateral", "arm": "lateral@sigma=1"}
    assert parse_arm("lateral@kernel_size=none").overrides == (("kernel_size", None),)


@pytest.mark.parametrize("text, message", [
    ("blur", "must start with a mask mode"),
    ("lateral@sigma", "FIELD=VALUE"),
    ("lateral@sigmas=1", "not a TrainConfig field an arm can set"),
    ("lateral@seed=1", "not a TrainConfig field an arm can set"),
    ("none@sigma=1", "does not change a run with mask='none'"),
    ("norm@sigma=1", "does not change a run with mask='norm'"),
    ("lateral@sigma=one", "is not a number"),
    ("lateral@sigma=1@sigma=2", "more than once"),
])
def test_bad_arms_are_refused_naming_the_arm(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_arm(text)
    assert repr(text) in str(info.value)


def test_variants_are_canonicalised_and_duplicates_refused():
    assert check_variants("none, lateral@sigma=1.0") == ("none", "lateral@sigma=1")
    with pytest.raises(ValueError, match="more than once"):
        check_variants("lateral@sigma=1,lateral@sigma=1.0")


def test_compare_trains_each_arm_with_its_settings_and_reports_it_by_name(tmp_path):
    seen = []

    def fake_train(config):
        seen.append(config)
        from gradmask.train.rundir import RunDir
        run = RunDir(config.out)
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(config.to_dict(), "test", ["test"])
        acc = 0.5 if config.mask_settings.sigma == 11.0 else 0.6
        record = {"epoch": 1, "train_loss": 1.0, "train_acc": acc, "test_loss": 1.0, "test_acc": acc,
                  "test_top5": 1.0, "lr": 0.1, "epoch_seconds": 1.0, "images_per_second": 1.0, "mask_kept": None}
        run.append_metrics(record)
        final = {"test_acc": acc, "test_top5": 1.0, "test_loss": 1.0, "epochs": 1, "train_seconds": 1.0,
                 "device": "cpu", "model": config.model, "mask": config.mask, "seed": config.seed,
                 "num_params": 1, "trained_by": ["test"]}
        run.write_final(final)
        return final

    base = TrainConfig(epochs=1, train_limit=64, test_limit=32, progress=False)
    compare(base, variants="lateral,lateral@sigma=1", seeds=1, out=tmp_path, train_fn=fake_train, log=None)
    assert [(c.mask, c.mask_settings.sigma, c.arm, c.out) for c in seen] == [
        ("lateral", 11.0, None, f"{tmp_path}/lateral-seed0"),
        ("lateral", 1.0, "lateral@sigma=1", f"{tmp_path}/lateral@sigma=1-seed0")]
    assert [r.variant for r in load_runs(tmp_path)] == ["lateral", "lateral@sigma=1"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert "lateral@sigma=1" in json.dumps(results)
    assert "lateral@sigma=1" in (tmp_path / "report.md").read_text()
    # a second compare with the same arm resumes it under the same name
    seen.clear()
    compare(base, variants="lateral@sigma=1", seeds=1, out=tmp_path, train_fn=fake_train, log=None)
    assert [c.arm for c in seen] == ["lateral@sigma=1"]


def test_an_arm_may_not_set_a_field_that_is_tuned(tmp_path):
    base = TrainConfig(epochs=1, train_limit=64, test_limit=32, progress=False)
    with pytest.raises(ValueError, match="sets lr, which tune"):
        compare(base, variants="none,lateral@lr=0.2", seeds=1, out=tmp_path, tune={"lr": [0.1, 0.2]},
                train_fn=lambda c: None, log=None)


def test_overfit_preset_is_the_issue_setting():
    from gradmask.reproduce.presets import PRESETS, make_plan
    preset = PRESETS["overfit"]
    assert preset.arms == ("none", "lateral", "lateral@sigma=1", "norm") and preset.seeds >= 3
    assert preset.tuning is None  # the classic recipe for every arm alike
    fields = make_plan("overfit", {"cifar10": "."}).training("cifar10")
    config = TrainConfig.from_dict(fields)
    assert (config.train_limit, config.test_limit, config.model) == (10000, None, "resnet18_narrow")
    assert (config.lr, config.momentum, config.weight_decay, config.schedule, config.augment) == (
        0.1, 0.9, 5e-4, "multistep", "crop-flip")
    assert config.milestones == (config.epochs // 2, 3 * config.epochs // 4) and config.gamma == 0.1
    assert config.train_limit * config.epochs >= 800_000
    for arm in preset.arms:
        check_variants([arm])


def test_table1_shows_every_arm_with_computed_verdicts_and_the_mechanism(tmp_path):
    import random

    from gradmask.reproduce.experiments.table1 import section
    from gradmask.train.rundir import RunDir

    rng = random.Random(0)

    def fake_train(config):
        run = RunDir(config.out)
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(config.to_dict(), "test", ["test"])
        base = {"none": 0.80, "lateral": 0.78, "lateral@sigma=1": 0.70}[config.arm or config.mask]
        for epoch in (1, 2):
            acc = base - 0.1 * (2 - epoch) + rng.uniform(-0.005, 0.005)
            masked = None if config.mask == "none" else {"layer1.0": 0.5}
            run.append_metrics({"epoch": epoch, "train_loss": 1.0 - acc, "train_acc": acc, "test_loss": 1.0,
                                "test_acc": acc, "test_top5": 1.0, "lr": 0.1, "epoch_seconds": 1.0,
                                "images_per_second": 1.0, "mask_kept": masked, "mask_energy_kept": masked and
                                {"layer1.0": 0.8}, "train_eval_acc": min(1.0, acc + 0.15), "train_eval_loss": 0.5})
        final = {"test_acc": acc, "test_top5": 1.0, "test_loss": 1.0, "epochs": 2, "train_seconds": 2.0,
                 "device": "cpu", "model": config.model, "mask": config.mask, "seed": config.seed,
                 "num_params": 1, "trained_by": ["test"]}
        run.write_final(final)
        return final

    base = TrainConfig(dataset="synthetic", epochs=2, train_limit=64, test_limit=32, progress=False)
    compare(base, variants="none,lateral,lateral@sigma=1", seeds=3, out=tmp_path / "synthetic" / "runs",
            train_fn=fake_train, log=None)
    s = section(tmp_path, {"device": "cpu", "plan": {"arms": ["none", "lateral", "lateral@sigma=1"]}}, ["synthetic"])
    numbers = s.numbers["synthetic"]
    assert set(numbers["arms"]) == {"lateral@sigma=1 vs none", "lateral@sigma=1 vs lateral"}
    worse = numbers["arms"]["lateral@sigma=1 vs lateral"]
    assert worse["difference"]["high"] < 0 and worse["verdict"] == "does not hold"
    assert [m["variant"] for m in numbers["mechanism"]] == ["none", "lateral", "lateral@sigma=1"]
    assert numbers["mechanism"][1]["energy_kept"] == {"layer1.0": pytest.approx(0.8)}
    text = json.dumps(s.blocks)
    assert "lateral@sigma=1 > lateral" in text and "Fit, generalisation" in text
    # the headline stays the paper's claim (lateral > none); the extra arms do not enter it
    assert [what for what, _ in s.verdicts] == [v for v in [w for w, _ in s.verdicts] if "lateral > none" in v]
