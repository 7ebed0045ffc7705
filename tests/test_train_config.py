"""TrainConfig validation and presets, the lr schedules, the CLI's mapping onto the config."""
import dataclasses
import json
import math

import pytest
import torch

from gradmask.train import PRESETS, LRSchedule, TrainConfig
from gradmask.train.config import config_differences


def test_defaults_are_the_paper_hyperparameters_on_the_synthetic_data():
    c = TrainConfig()
    assert (c.dataset, c.model, c.batch_size, c.lr, c.momentum, c.weight_decay) == (
        "synthetic", "resnet18_narrow", 128, 0.1, 0.9, 5e-4)
    assert (c.schedule, c.milestones, c.gamma, c.epochs) == ("multistep", (60, 120, 160), 0.2, 200)
    m = c.mask_settings
    assert (c.mask, m.groups, m.sigma, m.kernel_size, m.kernel, m.padding, m.inhibition_rate, c.skip_last) == (
        "lateral", 4, 11.0, 5, "log", "reflect", 0.5, 2)  # K=4: the narrow net's (the paper's channels per set)
    assert c.augment == "crop-flip" and c.seed == 0 and c.device == "auto" and c.amp == "none"
    assert c.gsnr_every == 0  # GSNR probing off unless asked for


def test_paper_preset():
    c = TrainConfig.from_preset("paper")
    assert (c.model, c.stem, c.epochs, c.batch_size, c.lr, c.weight_decay, c.momentum) == (
        "resnet18", "cifar", 200, 128, 0.1, 5e-4, 0.9)
    assert (c.schedule, c.milestones, c.gamma) == ("multistep", (60, 120, 160), 0.2)
    assert c.mask_settings.groups == 16  # the paper's K on ResNet-18
    assert (c.nesterov, c.label_smoothing, c.warmup_epochs, c.augment) == (False, 0.0, 0.0, "crop-flip")


def test_train_and_reproduce_share_the_paper_recipe():
    """gradmask train --preset paper and gradmask reproduce --preset paper (CIFAR-10/100, either device) build
    equal configs."""
    from gradmask.reproduce.presets import PRESETS as REPRODUCE_PRESETS
    recipes = REPRODUCE_PRESETS["paper"].training
    for dataset in ("cifar10", "cifar100"):
        for device in ("cpu", "cuda"):
            overrides = dict(dataset=dataset, data="/cifar", device=device)
            assert (TrainConfig.from_dict({**recipes[dataset][device], **overrides})
                    == TrainConfig.from_preset("paper", **overrides)), (dataset, device)


def test_quick_preset_is_small_and_overridable():
    c = TrainConfig.from_preset("quick", epochs=2, mask="none")
    assert c.model == "resnet18_narrow" and c.epochs == 2 and c.mask == "none"
    assert c.schedule in ("triangle", "cosine") and c.train_limit <= 10000 and c.test_limit is not None
    assert set(PRESETS) == {"paper", "quick"}


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="preset"):
        TrainConfig.from_preset("fast")
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_preset("quick", gsnr_period=1)
    with pytest.raises(ValueError, match="gsnr_every must be an integer >= 0"):
        TrainConfig.from_preset("quick", gsnr_every=-1)


@pytest.mark.parametrize("field,value", [
    ("dataset", "mnist"), ("model", "resnet9000"), ("stem", "tiny"), ("epochs", 0), ("epochs", 1.5),
    ("batch_size", 0), ("lr", 0.0), ("lr", -1.0), ("lr", float("nan")), ("momentum", 1.0),
    ("weight_decay", -1e-4), ("schedule", "step"), ("milestones", (120, 60)), ("gamma", 0.0),
    ("gamma", 1.5), ("warmup_epochs", -1.0), ("label_smoothing", 1.0), ("seed", -1), ("device", "tpu"),
    ("amp", "fp8"), ("mask", "lateral-ish"), ("groups", 0), ("sigma", 0.0), ("kernel_size", 4),
    ("kernel", "gauss"), ("padding", "circular"), ("inhibition_rate", 1.0), ("inhibition_rate", -0.1),
    ("skip_last", -1), ("train_limit", 0), ("test_limit", -5), ("augment", "mixup"), ("num_workers", -1),
    ("channels_last", "yes"), ("progress", 1), ("targets", ()), ("synthetic_train", 0),
])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig.from_dict({field: value})


def test_cross_field_checks():
    with pytest.raises(ValueError, match="data"):
        TrainConfig(dataset="cifar10")
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(epochs=2, schedule="onecycle", warmup_epochs=2.5)
    with pytest.raises(ValueError, match="nesterov"):
        TrainConfig(momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="resume"):
        TrainConfig(resume=True, overwrite=True)


def test_external_models_pass_validation_and_targets_normalise():
    assert TrainConfig(model="timm:resnet18").model == "timm:resnet18"
    assert TrainConfig(targets=["layer1.0", "layer2.*"]).targets == ("layer1.0", "layer2.*")
    assert TrainConfig(targets="layer1.0,layer1.1").targets == ("layer1.0", "layer1.1")


def test_asdict_json_round_trip_and_differences():
    c = TrainConfig.from_preset("quick", targets=["layer1.0"], kernel_size=None)
    d = json.loads(json.dumps({**dataclasses.asdict(c), "gradmask_version": "x"}))
    back = TrainConfig.from_dict(d)
    assert back == c
    assert config_differences(c, back.replace(progress=False, out="elsewhere")) == {}
    assert config_differences(c, back.replace(lr=0.2)) == {"lr": (c.lr, 0.2)}


def test_default_run_dir_names_the_run():
    assert TrainConfig(model="timm:resnet18", mask="none", seed=3).run_dir == "runs/synthetic-timm_resnet18-none-seed3"
    assert TrainConfig(out="/tmp/x").run_dir == "/tmp/x"


# ---------------------------------------------------------------- schedules
def test_multistep_drops_at_the_milestone_epochs():
    s = LRSchedule("multistep", epochs=10, steps_per_epoch=5, milestones=(3, 6), gamma=0.2)
    factors = [s(i) for i in range(50)]
    assert factors[:15] == [1.0] * 15
    assert factors[15:30] == pytest.approx([0.2] * 15)
    assert factors[30:] == pytest.approx([0.04] * 20)


def test_triangle_rises_then_falls_to_zero():
    s = LRSchedule("triangle", epochs=4, steps_per_epoch=10, warmup_epochs=1)
    f = [s(i) for i in range(40)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:9], f[1:10]))
    assert all(a > b for a, b in zip(f[9:], f[10:]))
    assert 0 < f[-1] < 0.05


def test_warmup_over_every_epoch_keeps_a_last_falling_step():
    s = LRSchedule("triangle", epochs=1, steps_per_epoch=10, warmup_epochs=1)
    f = [s(i) for i in range(10)]
    assert f[8] == pytest.approx(1.0) and 0 < f[9] < 1


def test_onecycle_is_the_old_name_of_triangle():
    """"onecycle" (before the rename) is read as "triangle" everywhere: configs, LRSchedule, the CLI;
    the presets use the new name, and the help says what the schedule is."""
    old = TrainConfig.from_dict({**TrainConfig.from_preset("quick").to_dict(), "schedule": "onecycle"})
    assert old.schedule == "triangle" and old == TrainConfig.from_preset("quick")
    assert TrainConfig.from_preset("quick").schedule == "triangle"
    steps = [LRSchedule(k, epochs=3, steps_per_epoch=7, warmup_epochs=1) for k in ("onecycle", "triangle")]
    assert [steps[0](i) for i in range(21)] == [steps[1](i) for i in range(21)]
    assert _parse(["--schedule", "onecycle"]).schedule == "triangle"
    from gradmask.cli import build_parser
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    assert "triangle (linear down to 0" in text and "not PyTorch's OneCycleLR" in text
    from gradmask.reproduce.presets import PRESETS as REPRODUCE_PRESETS  # noqa: F401 (imports cleanly)
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="one-cycle")


def test_cosine_without_warmup():
    s = LRSchedule("cosine", epochs=2, steps_per_epoch=50)
    assert s(0) == pytest.approx(1.0, abs=1e-3) and s(49) == pytest.approx(0.5, abs=0.02) and 0 < s(99) < 1e-3


def test_scheduler_steps_per_step_and_round_trips_through_state_dict():
    from gradmask.train.schedule import build_scheduler
    p = torch.nn.Parameter(torch.zeros(1))
    config = TrainConfig(epochs=3, schedule="multistep", milestones=(1, 2), gamma=0.5, lr=0.4)
    opt = torch.optim.SGD([p], lr=config.lr)
    sched = build_scheduler(opt, config, steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.4] * 4 + [0.2] * 4 + [0.1] * 4)
    state = sched.state_dict()
    opt2 = torch.optim.SGD([p], lr=config.lr)
    sched2 = build_scheduler(opt2, config, steps_per_epoch=4)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 12 and math.isclose(sched2.get_last_lr()[0], sched.get_last_lr()[0])


# ---------------------------------------------------------------- CLI -> config
def _parse(argv):
    from gradmask.cli import build_parser
    from gradmask.cli.train import config_from_args
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_cli_flags_override_the_preset_and_unset_flags_keep_it():
    c = _parse(["--preset", "quick", "--epochs", "3", "--lr", "0.05", "--no-progress", "--sigma", "5",
                "--targets", "layer1.0,layer2.0", "--kernel-size", "full", "--channels-last"])
    q = TrainConfig.from_preset("quick")
    assert c.epochs == 3 and c.lr == 0.05 and c.progress is False and c.mask_settings.sigma == 5.0
    assert c.targets == ("layer1.0", "layer2.0") and c.mask_settings.kernel_size is None and c.channels_last
    assert (c.batch_size, c.schedule, c.train_limit, c.mask, c.mask_settings.groups) == (
        q.batch_size, q.schedule, q.train_limit, q.mask, q.mask_settings.groups)


def test_cli_without_preset_uses_the_defaults():
    c = _parse(["--mask", "none", "--dataset", "cifar100", "--data", "/nowhere", "--resume"])
    assert c == TrainConfig(mask="none", dataset="cifar100", data="/nowhere", resume=True)


def test_cli_registers_train_with_the_documented_flags():
    from gradmask.cli import build_parser
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {s for a in sub._actions for s in a.option_strings}
    for flag in ["--preset", "--data", "--dataset", "--model", "--epochs", "--batch-size", "--lr", "--schedule",
                 "--seed", "--device", "--amp", "--channels-last", "--compile", "--out", "--resume",
                 "--train-limit", "--test-limit", "--no-progress", "--tensorboard", "--mask", "--groups",
                 "--sigma", "--kernel-size", "--kernel", "--padding", "--inhibition-rate", "--targets"]:
        assert flag in flags


# ---------------------------------------------------------------- the nested mask settings
def test_mask_settings_are_one_object_built_once(monkeypatch):
    """from_dict builds the MaskSettings (its checks run once); the engine's GradientMask takes it as is."""
    import gradmask.mask
    import gradmask.settings
    from gradmask import GradientMask
    calls = []

    def counted(value):
        calls.append(value)
        return float(value)

    monkeypatch.setattr(gradmask.settings, "check_inhibition_rate", counted)
    monkeypatch.setattr(gradmask.mask, "check_inhibition_rate", counted)
    config = TrainConfig.from_dict({"inhibition_rate": 0.37, "mask": "norm"})
    assert calls == [0.37]
    gm = GradientMask.from_settings(config.mask_settings)
    assert calls == [0.37] and gm.settings.inhibition_rate == 0.37 and gm.mode == "norm"
    with pytest.raises(TypeError, match="settings must be a gradmask.MaskSettings"):
        GradientMask.from_settings(config)


def test_flat_and_nested_forms():
    from gradmask import MaskSettings
    flat = TrainConfig.from_dict({"mask": "pixel", "sigma": 2.0, "groups": 8})
    nested = TrainConfig(mask="pixel", mask_settings=MaskSettings(sigma=2.0, groups=8))
    assert flat == nested == TrainConfig.from_dict({"mask": "pixel", "mask_settings": {"sigma": 2.0, "groups": 8}})
    assert flat.mask_settings.mode == "pixel"  # the mode follows mask
    assert flat.replace(mask="none").mask_settings.sigma == 2.0  # a vanilla run keeps (and records) them
    assert flat.replace(sigma=3.0).mask_settings == MaskSettings(sigma=3.0, groups=8, mode="pixel")
    assert TrainConfig.from_dict({"model": "resnet18", "groups": None}).mask_settings.groups == 16
    with pytest.raises(ValueError, match="either as mask_settings or flat"):
        TrainConfig.from_dict({"sigma": 2.0, "mask_settings": {"groups": 8}})
    with pytest.raises(ValueError, match="mask_settings must be a gradmask.MaskSettings"):
        TrainConfig(mask_settings={"groups": 8})
