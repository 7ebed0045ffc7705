"""Inhibition-rate schedules: their values, the engine setting the rate every step (the kept fraction
follows it), per-target rates with several attach calls, and the bad-input errors."""
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gradmask
from gradmask.models import create_model
from gradmask.train import TrainConfig, train
from gradmask.train.inhibition import InhibitionSchedule, build_inhibition_schedule


def kept(rate: float, positions: int) -> float:
    """Positions a map of ``positions`` keeps at ``rate`` (the mask's quantile rule, no ties)."""
    if rate == 0.0:
        return 1.0
    return (positions - 1 - math.floor(rate * (positions - 1))) / positions


def test_warmup_is_linear_then_flat():
    s = InhibitionSchedule("warmup", rate=0.5, warmup_steps=10)
    assert [s(k, 100) for k in (0, 1, 5, 10, 11, 99)] == [0.0, 0.05, 0.25, 0.5, 0.5, 0.5]


@given(total=st.integers(1, 10_000), rate=st.floats(0.0, 0.99), fraction=st.floats(0.0, 1.0))
def test_anneal_is_a_cosine_from_the_rate_to_zero(total, rate, fraction):
    s = InhibitionSchedule("anneal", rate=rate)
    step = int(fraction * total)
    assert s(step, total) == pytest.approx(rate * 0.5 * (1 + math.cos(math.pi * step / total)), abs=1e-12)
    assert s(0, total) == pytest.approx(rate) and s(total, total) == pytest.approx(0.0, abs=1e-12)
    assert s(step, total) >= s(min(step + 1, total), total) - 1e-15      # never rises


def test_constant_and_the_config_in_epochs():
    assert InhibitionSchedule("constant", 0.3)(7, 10) == 0.3
    config = TrainConfig.from_dict(dict(epochs=4, inhibition_schedule="warmup", inhibition_warmup=1.5,
                                        inhibition_rate=0.6))
    s = build_inhibition_schedule(config, steps_per_epoch=4)
    assert s.warmup_steps == 6 and s(3, 16) == pytest.approx(0.3)


@pytest.mark.parametrize("fields, match", [
    (dict(inhibition_schedule="cosine"), r"inhibition_schedule must be one of \['constant', 'warmup', 'anneal'\]"),
    (dict(epochs=3, inhibition_schedule="warmup", inhibition_warmup=4.0),
     r"inhibition_warmup \(--inhibition-warmup\) must be <= epochs \(3\)"),
    (dict(inhibition_schedule="warmup"), r"inhibition_warmup \(--inhibition-warmup\) must be > 0"),
    (dict(inhibition_warmup=-1.0), r"inhibition_warmup must be a number >= 0"),
])
def test_bad_schedules_are_refused_by_the_config(fields, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(fields)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="inhibition_schedule must be one of"):
        InhibitionSchedule("linear")
    with pytest.raises(ValueError, match=r"inhibition_rate must be in \[0, 1\)"):
        InhibitionSchedule("constant", rate=1.0)
    with pytest.raises(ValueError, match="needs warmup_steps >= 1"):
        InhibitionSchedule("warmup", rate=0.5, warmup_steps=0)


def test_cli_refuses_an_unknown_schedule_and_a_long_warmup(tmp_path, capsys):
    from gradmask.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--inhibition-schedule", "cosine", "--out", str(tmp_path / "a")])
    assert "--inhibition-schedule: invalid choice: 'cosine'" in capsys.readouterr().err
    assert main(["train", "--epochs", "2", "--inhibition-schedule", "warmup", "--inhibition-warmup", "3",
                 "--out", str(tmp_path / "b")]) != 0
    assert "inhibition_warmup (--inhibition-warmup) must be <= epochs (2)" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_engine_sets_the_rate_every_step(tmp_path):
    """A warm-up over the whole run: each epoch's kept fraction is the mean over its steps of what
    the rate of each step keeps, so the rate changed at every step; the logged rate is the last step's."""
    steps_per_epoch, epochs = 4, 2
    config = TrainConfig.from_dict(dict(
        model="resnet18_narrow", groups=4, epochs=epochs, batch_size=16, lr=0.05, schedule="cosine",
        augment="none", train_limit=16 * steps_per_epoch, test_limit=16, synthetic_train=64,
        synthetic_test=16, progress=False, device="cpu", mask="lateral", inhibition_rate=0.8,
        inhibition_schedule="warmup", inhibition_warmup=2.0, out=str(tmp_path / "run")))
    train(config)
    schedule = build_inhibition_schedule(config, steps_per_epoch)
    total = epochs * steps_per_epoch
    sides = {"layer1": 32, "layer2": 16, "layer3": 8}          # block outputs of the narrow ResNet on 32x32
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for epoch, record in enumerate(records):
        rates = [schedule(epoch * steps_per_epoch + k, total) for k in range(steps_per_epoch)]
        assert record["inhibition_rate"] == pytest.approx(rates[-1])
        for target, value in record["mask_kept"].items():
            n = sides[target.split(".")[0]] ** 2
            assert value == pytest.approx(sum(kept(q, n) for q in rates) / steps_per_epoch, abs=1e-9), target
    assert records[0]["mask_kept"]["layer1.0"] > records[1]["mask_kept"]["layer1.0"]


def test_per_target_rates_with_several_attach_calls():
    torch.manual_seed(0)
    model = create_model("resnet18_narrow", num_classes=10)
    shallow = gradmask.attach(model, gradmask.GradientMask(groups=4, inhibition_rate=0.25), targets=["layer1.*"])
    deep = gradmask.attach(model, gradmask.GradientMask(groups=4, inhibition_rate=0.75),
                           targets=["layer2.*", "layer3.*"])
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert {k: v["kept_fraction"] for k, v in shallow.stats().items()} == pytest.approx(
        {"layer1.0": kept(0.25, 1024), "layer1.1": kept(0.25, 1024)})
    deep_kept = {k: v["kept_fraction"] for k, v in deep.stats().items()}
    assert deep_kept == pytest.approx({"layer2.0": kept(0.75, 256), "layer2.1": kept(0.75, 256),
                                       "layer3.0": kept(0.75, 64), "layer3.1": kept(0.75, 64)})
    with pytest.raises(ValueError, match="already has a gradient mask attached"):
        gradmask.attach(model, gradmask.GradientMask(groups=4), targets=["layer1.0"])
