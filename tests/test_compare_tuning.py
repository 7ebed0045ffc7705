"""Per-variant tuning on a validation split: the choice, the split, resume, the test split never read,
bad input, and the reproduce plumbing (the cifar-full preset's path on a tiny synthetic config)."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradmask.train.data as train_data
from gradmask.cli import main
from gradmask.compare import compare
from gradmask.compare.tuning import (
    grid_edges,
    grid_points,
    make_tuning,
    parse_tune,
    read_tuning,
    run_tuning,
    tuning_config,
)
from gradmask.reproduce import make_plan, reproduce
from gradmask.reproduce.presets import PRESETS, Evaluation
from gradmask.train import RunDir, TrainConfig, train
from gradmask.train.data import VALIDATION_SEED, validation_split

TINY = dict(model="resnet18_narrow", groups=4, epochs=2, batch_size=32, lr=0.05, schedule="triangle",
            warmup_epochs=0.5, augment="none", train_limit=64, test_limit=32, synthetic_train=96,
            synthetic_test=32, progress=False, device="cpu")


def tiny(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **changes})


class FakeTrain:
    """``train_fn`` whose validation accuracy is a known function of (mask, lr, inhibition_rate, seed)."""

    def __init__(self, score):
        self.score = score
        self.calls = []

    def __call__(self, config):
        self.calls.append(config)
        if config.val_fraction:
            return {"val_acc": self.score(config), "train_seconds": 2.0}
        run, final = RunDir(config.out), {"test_acc": 0.5, "test_top5": 0.9, "epochs": 1, "train_seconds": 3.0}
        run.write_config(config.to_dict(), "test")
        run.append_metrics({"epoch": 1, "test_acc": 0.5, "test_top5": 0.9, "train_loss": 1.0, "epoch_seconds": 3.0})
        run.write_final(final)
        return final


# ------------------------------------------------------------------------------ the choice
def test_each_variant_gets_its_best_mean_validation_accuracy(tmp_path):
    # none peaks at lr 0.05, lateral at lr 0.2 / rate 0.3; seed 1 flips the single-seed order of none
    table = {("none", 0.05): (0.60, 0.50), ("none", 0.1): (0.70, 0.30), ("none", 0.2): (0.40, 0.40)}

    def score(c):
        if c.mask == "none":
            return table[("none", c.lr)][c.seed]
        rate = c.mask_settings.inhibition_rate
        return {0.05: 0.3, 0.1: 0.5, 0.2: 0.7}[c.lr] - (0.0 if rate == 0.3 else 0.1) + 0.01 * c.seed

    fake = FakeTrain(score)
    compare(tiny(), ("none", "lateral"), seeds=2, out=tmp_path, train_fn=fake, log=None,
            tune={"lr": [0.05, 0.1, 0.2], "inhibition_rate": [0.3, 0.5]}, tune_epochs=1, tune_seeds=2)
    tuned = [c for c in fake.calls if c.val_fraction]
    final = [c for c in fake.calls if not c.val_fraction]
    # none is not swept over inhibition_rate: 3 points x 2 seeds; lateral 6 points x 2 seeds
    assert sum(c.mask == "none" for c in tuned) == 6 and sum(c.mask == "lateral" for c in tuned) == 12
    assert all(c.val_fraction == 0.1 and c.epochs == 1 and c.warmup_epochs == 0.25 for c in tuned)
    assert fake.calls.index(final[0]) == len(tuned)            # every tuning run before the final runs
    assert [(c.mask, c.seed) for c in final] == [("none", 0), ("lateral", 0), ("none", 1), ("lateral", 1)]
    # none: means 0.55 / 0.50 / 0.40 -> lr 0.05 (seed 0 alone would have chosen 0.1)
    assert {(c.mask, c.lr, c.mask_settings.inhibition_rate) for c in final} == {("none", 0.05, 0.5),
                                                                                ("lateral", 0.2, 0.3)}
    record = read_tuning(tmp_path)
    assert record["variants"]["none"]["chosen"] == {"lr": 0.05}
    assert record["variants"]["lateral"]["chosen"] == {"lr": 0.2, "inhibition_rate": 0.3}
    none_points = record["variants"]["none"]["points"]
    assert [p["mean"] for p in none_points] == pytest.approx([0.55, 0.5, 0.4])
    assert none_points[0]["std"] == pytest.approx(0.0707106781, rel=1e-6)
    assert record["train_seconds"] == pytest.approx(2.0 * 18)
    md = (tmp_path / "report.md").read_text()
    assert "## Tuning on a validation split" in md
    assert "| none | lr=0.05 | 55.00 ± 7.07 | 2 | chosen |" in md
    assert "| lateral | lr=0.2,inhibition_rate=0.3 | 70.50 ± 0.71 | 2 | chosen |" in md
    assert "lateral vs none (arms tuned on a 10% validation split: none at lr=0.05 (smallest lr of the grid), " \
           "lateral at lr=0.2,inhibition_rate=0.3 (largest lr, smallest inhibition_rate of the grid))" in md
    assert "At the edge of the grid: none chose the smallest lr; lateral chose the largest lr; lateral chose the " \
           "smallest inhibition_rate. The best value may lie beyond it" in md
    assert "tuning 36.0 s (18 runs), final runs 12.0 s (4 finished runs)" in md


def test_ties_go_to_the_first_grid_point_and_untuned_variants_keep_the_base(tmp_path):
    fake = FakeTrain(lambda c: 0.5)
    result = run_tuning(tiny(), ("none", "lateral"), make_tuning({"inhibition_rate": [0.3, 0.5]}), tmp_path,
                        train_fn=fake, log=None)
    assert result.chosen == {"none": {}, "lateral": {"inhibition_rate": 0.3}}
    assert {c.mask for c in fake.calls} == {"lateral"}         # nothing to sweep for none
    assert read_tuning(tmp_path)["variants"]["none"]["tuned"] is False


@pytest.mark.parametrize("chosen, edges", [
    ({"lr": 0.1}, {}),                                        # inside the grid
    ({"lr": 0.2}, {"lr": "largest"}),
    ({"lr": 0.05, "epochs": 3}, {"lr": "smallest"}),          # epochs has one value: no edge
    ({"inhibition_schedule": "warmup"}, {}),                  # names have no order
    ({"nesterov": True}, {}),                                 # neither do booleans
])
def test_grid_edges_flags_choices_at_an_end_of_a_numeric_grid(chosen, edges):
    grid = {"lr": [0.2, 0.05, 0.1], "epochs": [3], "inhibition_schedule": ["constant", "warmup"],
            "nesterov": [False, True]}
    assert grid_edges(grid, chosen) == edges


def test_a_choice_inside_the_grid_is_not_called_an_edge(tmp_path):
    fake = FakeTrain(lambda c: {0.05: 0.3, 0.1: 0.6, 0.2: 0.4}[c.lr])
    compare(tiny(), ("none",), seeds=1, out=tmp_path, train_fn=fake, log=None, tune={"lr": [0.05, 0.1, 0.2]})
    md = (tmp_path / "report.md").read_text()
    assert "| none | lr=0.1 | 60.00 | 1 | chosen |" in md
    assert "edge of the grid" not in md and "of the grid)" not in md


def test_grid_points_skip_fields_that_do_not_apply():
    t = make_tuning({"lr": [0.1, 0.2], "sigma": [5.0, 11.0], "groups": [2, 4]})
    assert len(grid_points(t, "lateral")) == 8
    assert grid_points(t, "none") == [{"lr": 0.1}, {"lr": 0.2}]
    assert all(set(p) == {"lr", "groups"} for p in grid_points(t, "norm"))      # no LoG in "norm"
    assert all(set(p) == {"lr", "sigma"} for p in grid_points(t, "pixel"))     # one mask per channel


def test_tuning_config_scales_the_warmup_and_drops_the_probe(tmp_path):
    base = tiny(epochs=15, warmup_epochs=3.0, gsnr_every=1)
    c = tuning_config(base, "lateral", {"lr": 0.2}, 0, make_tuning({"lr": [0.2]}, epochs=3), tmp_path)
    assert (c.epochs, c.warmup_epochs, c.lr, c.gsnr_every, c.val_fraction, c.resume) == (3, 0.6, 0.2, 0, 0.1, True)
    assert c.out == f"{tmp_path}/tune/lateral-lr=0.2-seed0"


# ------------------------------------------------------------------------------ the validation split
@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 3000), fraction=st.floats(0.01, 0.5))
def test_validation_split_is_disjoint_complete_and_fixed(n, fraction):
    train_index, val_index = validation_split(n, fraction)
    assert len(val_index) == min(max(1, round(fraction * n)), n - 1)
    both = torch.cat([train_index, val_index])
    assert torch.equal(both.sort().values, torch.arange(n))     # disjoint and together everything
    assert torch.equal(val_index, val_index.sort().values)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    assert torch.equal(val_index, order[:len(val_index)].sort().values)   # the fixed seeded draw


def test_run_data_trains_without_the_validation_images():
    from gradmask.train.augment import build_augment
    config = tiny(val_fraction=0.25, train_limit=None, synthetic_train=80)
    data = train_data.build_data(config, build_augment(config), torch.device("cpu"))
    assert data.eval_split == "val" and data.test_size == 20 and data.train_size == 60
    train_rows = {tuple(x.flatten().tolist()) for x in data.train.images}
    val_rows = {tuple(x.flatten().tolist()) for x in data.test.images}
    assert len(train_rows) == 60 and not train_rows & val_rows
    with_limit = train_data.build_data(tiny(val_fraction=0.25, train_limit=30, synthetic_train=80),
                                       build_augment(config), torch.device("cpu"))
    # synthetic data render only ceil(30 / 0.75) = 40 images: 10 for validation, train_limit from the rest
    assert with_limit.train_size == 30 and with_limit.test_size == 10


def test_tuning_never_reads_the_test_split(tmp_path, monkeypatch):
    real = train_data.load_dataset

    def no_test(name, *args, split="train", **kwargs):
        if split != "train":
            raise AssertionError(f"the test split was read during tuning ({name}, {split})")
        return real(name, *args, split=split, **kwargs)

    monkeypatch.setattr(train_data, "load_dataset", no_test)
    small = tiny(epochs=1, train_limit=32, synthetic_train=48, batch_size=16)
    result = run_tuning(small, ("none", "lateral"), make_tuning({"lr": [0.05, 0.1]}), tmp_path, log=None)
    assert set(result.chosen) == {"none", "lateral"}
    final = json.loads((tmp_path / "tune" / "lateral-lr=0.1-seed0" / "final.json").read_text())
    assert "val_acc" in final and "test_acc" not in final
    record = json.loads((tmp_path / "tune" / "lateral-lr=0.1-seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"val_acc", "val_loss", "val_top5"} <= set(record) and "test_acc" not in record


def test_a_killed_sweep_continues_and_reuses_finished_grid_points(tmp_path):
    trained = []

    def dies_after_two(config):
        if len(trained) == 2:
            raise KeyboardInterrupt
        trained.append(config.out)
        return train(config)

    tuning = make_tuning({"lr": [0.05, 0.1]})
    base = tiny(epochs=1, train_limit=32, synthetic_train=48, batch_size=16)
    with pytest.raises(KeyboardInterrupt):
        run_tuning(base, ("none", "lateral"), tuning, tmp_path, train_fn=dies_after_two, log=None)
    assert not (tmp_path / "tuning.json").exists()
    reused, fresh = [], []

    def counting(config):
        (reused if (Path(config.out) / "final.json").is_file() else fresh).append(Path(config.out).name)
        return train(config)

    result = run_tuning(base, ("none", "lateral"), tuning, tmp_path, train_fn=counting, log=None)
    assert reused == ["none-lr=0.05-seed0", "lateral-lr=0.05-seed0"]
    assert fresh == ["none-lr=0.1-seed0", "lateral-lr=0.1-seed0"]
    assert read_tuning(tmp_path)["variants"]["none"]["points"][0]["val_acc"] == [
        json.loads((tmp_path / "tune" / "none-lr=0.05-seed0" / "final.json").read_text())["val_acc"]]
    assert result.chosen["none"]["lr"] in (0.05, 0.1)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("grid, kwargs, match", [
    ({"learning_rate": [0.1]}, {}, r"tune \(--tune\) 'learning_rate' is not a TrainConfig field"),
    ({"lr": []}, {}, r"lr: empty grid"),
    ({}, {}, r"at least one TrainConfig field"),
    ({"mask": ["none"]}, {}, r"'mask' cannot be tuned: it is set by --variants"),
    ({"lr": [0.1, 0.1]}, {}, r"lists 0.1 more than once"),
    ({"lr": [0.1]}, {"val_fraction": 0.0}, r"val_fraction \(--val-fraction\) must be in \(0, 0.5\]"),
    ({"lr": [0.1]}, {"val_fraction": 0.6}, r"val_fraction \(--val-fraction\) must be in \(0, 0.5\]"),
    ({"lr": [0.1]}, {"epochs": 0}, r"tune_epochs \(--tune-epochs\) must be an integer >= 1"),
    ({"lr": [0.1]}, {"seeds": 0}, r"tune_seeds \(--tune-seeds\) must be an integer >= 1"),
])
def test_make_tuning_rejects_bad_input(grid, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_tuning(grid, **kwargs)


@pytest.mark.parametrize("items, match", [
    (["lr"], r"--tune must be FIELD=V1,V2"),
    (["lr="], r"lr: empty grid"),
    (["lr=abc"], r"lr: 'abc' is not a number"),
    (["epochs=2"], None),      # converted; rejected by make_tuning (not tunable)
    (["groups=2.5"], r"groups: '2.5' is not an integer"),
    (["nesterov=maybe"], r"nesterov: 'maybe' is not true or false"),
    (["milestones=3"], r"cannot be given on the command line"),
    (["nope=1"], r"'nope' is not a TrainConfig field"),
    (["lr=0.1", "lr=0.2"], r"names lr more than once"),
])
def test_parse_tune_rejects_bad_input(items, match):
    if match is None:
        assert parse_tune(items) == {"epochs": (2,)}
        return
    with pytest.raises(ValueError, match=match):
        parse_tune(items)


def test_parse_tune_converts_to_the_field_types():
    assert parse_tune(["lr=0.05,0.1", "kernel_size=none,5", "padding=zero", "nesterov=true"]) == {
        "lr": (0.05, 0.1), "kernel_size": (None, 5), "padding": ("zero",), "nesterov": (True,)}


def test_a_value_of_the_wrong_type_fails_before_anything_trains(tmp_path):
    fake = FakeTrain(lambda c: 0.5)
    with pytest.raises(ValueError, match=r"tune \(lr='fast'.*lr must be a number"):
        compare(tiny(), ("none", "lateral"), 1, tmp_path, train_fn=fake, log=None, tune={"lr": [0.1, "fast"]})
    with pytest.raises(ValueError, match=r"tune \(inhibition_rate=2.0\): inhibition_rate must be in \[0, 1\)"):
        compare(tiny(), ("none", "lateral"), 1, tmp_path, train_fn=fake, log=None, tune={"inhibition_rate": [2.0]})
    assert fake.calls == []


@pytest.mark.parametrize("argv, match", [
    (["--tune", "lr=0.1,x"], r"--tune\) lr: 'x' is not a number"),
    (["--tune", "lr=0.1", "--val-fraction", "0.7"], r"val_fraction \(--val-fraction\) must be in \(0, 0.5\]"),
    (["--tune", "foo=1"], r"'foo' is not a TrainConfig field"),
    (["--tune-epochs", "2"], r"need --tune"),
])
def test_compare_cli_bad_tuning_input(tmp_path, capsys, argv, match):
    assert main(["compare", "--out", str(tmp_path / "c"), *argv]) != 0
    import re
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "c").exists()


def test_train_config_checks_val_fraction():
    with pytest.raises(ValueError, match=r"val_fraction must be 0 \(no validation split\) or a number in \(0, 0.5\]"):
        tiny(val_fraction=0.75)
    with pytest.raises(ValueError, match="val_fraction needs an in-memory dataset"):
        TrainConfig(dataset="imagenet", data="x", val_fraction=0.1)
    assert TrainConfig.from_dict({k: v for k, v in tiny().to_dict().items() if k != "val_fraction"}).val_fraction == 0


# ------------------------------------------------------------------------------ reproduce
TINY_EVALUATION = Evaluation(robustness_images=32, sparsities=(0, 0.5), epsilons=(0, 2), saliency_images=32,
                             sanity_images=2, blur_images=32, blur_sigmas=(0, 2), gsnr_samples=8, gsnr_every=0)


def tiny_full_plan(seeds=2):
    """The cifar-full preset's structure (tuned Table 1, Table 2 at its own scale) on tiny synthetic runs."""
    table1 = {k: v for k, v in TINY.items() if k not in ("progress", "device")}
    table1.update(epochs=1, train_limit=32, test_limit=16, synthetic_train=48, synthetic_test=16, batch_size=16)
    ablation = dict(table1, train_limit=16)
    preset = dataclasses.replace(PRESETS["cifar-full"], datasets=("synthetic",), requires_data=False,
                                 training={"synthetic": {"cpu": table1}}, boxes_training={"cpu": ablation},
                                 ablation_training={"synthetic": {"cpu": ablation}}, evaluation=TINY_EVALUATION)
    plan = make_plan("quick", seeds=seeds, tuning=make_tuning({"lr": (0.05, 0.2)}, epochs=1))
    return dataclasses.replace(plan, preset=preset)


def test_cifar_full_preset_is_tuned_table1_at_full_scale(tmp_path):
    (tmp_path / "c.tar.gz").write_bytes(b"")
    plan = make_plan("cifar-full", {"cifar10": str(tmp_path / "c.tar.gz")})
    fields = plan.training("cifar10")
    assert fields.get("train_limit") is None and fields.get("test_limit") is None and fields["epochs"] >= 15
    assert fields["model"] == "resnet18_narrow" and fields["augment"] == "crop-flip" and plan.seeds == 3
    assert len(plan.tuning.grid["lr"]) >= 3 and plan.tuning.val_fraction == 0.1
    assert plan.separate_ablation and plan.training("cifar10", ablation=True)["train_limit"] == 15000
    from gradmask.reproduce.runner import steps
    names = [s.name for s in steps(plan, tmp_path)]
    assert names[0] == "train-cifar10" and "train-cifar10-ablation" in names


def test_reproduce_tunes_table1_then_trains_seed_by_seed_and_resumes(tmp_path, monkeypatch):
    from gradmask.reproduce import write_report
    from gradmask.reproduce.experiments import table2 as table2_experiment
    order = []

    def recording(config):
        order.append(Path(config.out).relative_to(tmp_path).as_posix())
        return train(config)

    def killed(*args, **kwargs):      # the evaluations are tested elsewhere: stop after the training
        raise KeyboardInterrupt

    monkeypatch.setattr(table2_experiment, "training_cost", killed)
    with pytest.raises(KeyboardInterrupt):
        reproduce(tiny_full_plan(), tmp_path, train_fn=recording, log=lambda line: None)
    table1 = [p for p in order if p.startswith("synthetic/runs/")]
    tuning = [p for p in order if p.startswith("synthetic/runs/tune/")]
    assert len(tuning) == 4 and order[:4] == tuning                    # 2 lrs x 2 arms, first of all
    assert [p for p in table1 if p not in tuning] == [
        f"synthetic/runs/{v}-seed{s}" for s in (0, 1) for v in ("none", "lateral")]
    assert {p.rsplit("-seed", 1)[0] for p in order if p.startswith("synthetic/ablation/")} == {
        "synthetic/ablation/lateral", "synthetic/ablation/norm", "synthetic/ablation/pixel"}
    chosen = read_tuning(tmp_path / "synthetic" / "runs")["variants"]
    for v in ("none", "lateral"):
        assert json.loads((tmp_path / "synthetic" / "runs" / f"{v}-seed1" / "config.json").read_text())["lr"] == \
            chosen[v]["chosen"]["lr"]
    step = json.loads((tmp_path / "steps" / "train-synthetic.json").read_text())
    assert step["settings"]["tune"]["grid"] == {"lr": [0.05, 0.2]}
    # the killed reproduce continues: nothing is trained again
    order.clear()
    with pytest.raises(KeyboardInterrupt):
        reproduce(tiny_full_plan(), tmp_path, train_fn=recording, log=lambda line: None)
    assert order == []
    write_report(tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert len(results["table2"]["numbers"]["norm"]["accuracy"]) == 2
    md = (tmp_path / "report.md").read_text()
    assert "own, smaller scale" in md
    # every verdict names its budget; Table 1's says it was tuned, Table 2's that it was not
    verdict_lines = [line for line in md.splitlines() if line.startswith("**Verdict:")]
    assert verdict_lines and all("Budget: " in line for line in verdict_lines)
    # a two-value grid: every choice is at one of its ends, and the budget says which
    edges = ", ".join(f"{v}: {'largest' if chosen[v]['chosen']['lr'] == 0.2 else 'smallest'} lr"
                      for v in ("none", "lateral"))
    assert results["table1"]["budget"] == ("synthetic: 32 training images x 1 epoch, 2 seeds, resnet18_narrow, "
                                           f"tuned: lr per arm on a 10% validation split (chosen at the grid's "
                                           f"edge: {edges})")
    assert results["table2"]["budget"].endswith("not tuned (one setting for every arm)")
    assert "| none | lr=0.05 |" in md and "| synthetic | 1 |" in md     # sweep, per-epoch gap
    gap = results["table1"]["numbers"]["synthetic"]["difference_per_epoch"]
    assert [e for e, _ in gap] == [1]
    # the earlier CIFAR-10 point stands beside CIFAR-10 runs only
    assert "small_budget" not in results["table1"]["numbers"] and "as one point" not in md


def test_small_budget_point_is_the_published_cifar_measurement():
    from scipy import stats

    from gradmask.reproduce.experiments.table1 import SMALL_BUDGET, small_budget_point

    published = json.loads((SMALL_BUDGET / "results.json").read_text())["sections"]["table1"]["numbers"]["cifar10"]
    point = small_budget_point()
    assert (point["epochs"], point["images"], point["test_images"]) == (4, 15000, 2000)
    assert (point["none"], point["lateral"]) == (published["none"], published["lateral"])
    low, high = stats.ttest_ind(point["lateral"], point["none"], equal_var=False).confidence_interval(0.95)
    assert (point["difference"].low, point["difference"].high) == pytest.approx((low, high))
    assert small_budget_point(SMALL_BUDGET.parent / "no-such-run") is None


def test_the_inhibition_schedule_is_tuned_like_any_field(tmp_path):
    fake = FakeTrain(lambda c: 0.6 if c.inhibition_schedule == "warmup" else 0.5)
    base = tiny(epochs=10, inhibition_warmup=5.0)
    result = run_tuning(base, ("none", "lateral"), make_tuning({"inhibition_schedule": ["constant", "warmup"]},
                                                                 epochs=2), tmp_path, train_fn=fake, log=None)
    assert result.chosen == {"none": {}, "lateral": {"inhibition_schedule": "warmup"}}
    assert [(c.mask, c.inhibition_schedule, c.inhibition_warmup) for c in fake.calls] == [
        ("lateral", "constant", 1.0), ("lateral", "warmup", 1.0)]         # warm-up scaled with the epochs
    with pytest.raises(ValueError, match=r"inhibition_schedule='warmup'.*inhibition_warmup \(--inhibition-warmup\) "
                                         r"must be > 0"):
        compare(tiny(), ("none", "lateral"), 1, tmp_path / "x", train_fn=fake, log=None,
                tune={"inhibition_schedule": ["constant", "warmup"]})


def test_epoch_gap_is_welch_over_seeds_per_epoch():
    from scipy import stats

    from gradmask.compare.report import Run
    from gradmask.reproduce.experiments.table1 import epoch_gap

    def run(variant, seed, accs):
        return Run(Path(f"{variant}-seed{seed}"), {"mask": variant, "seed": seed},
                   [{"epoch": e + 1, "test_acc": a} for e, a in enumerate(accs)], {"test_acc": accs[-1]})

    none = [run("none", 0, [0.30, 0.50]), run("none", 1, [0.34, 0.52]), run("none", 2, [0.32, 0.55])]
    lateral = [run("lateral", 0, [0.20, 0.51]), run("lateral", 1, [0.25, 0.50]), run("lateral", 2, [0.22])]
    gap = epoch_gap(none, lateral)
    assert [e for e, _ in gap] == [1, 2]
    for (_, ci), (a, b) in zip(gap, [([0.20, 0.25, 0.22], [0.30, 0.34, 0.32]), ([0.51, 0.50], [0.50, 0.52, 0.55])]):
        low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert (ci.diff, ci.low, ci.high) == pytest.approx((sum(a) / len(a) - sum(b) / len(b), low, high))


def test_compare_cli_passes_the_grid_through(tmp_path, monkeypatch, capsys):
    import gradmask.cli.compare as compare_cli
    seen = {}

    def fake_compare(base, **kwargs):
        seen.update(kwargs, base=base)

    monkeypatch.setattr(compare_cli, "compare", fake_compare)
    monkeypatch.setattr(compare_cli, "summary_text", lambda out: "")
    main(["compare", "--preset", "quick", "--variants", "none,lateral", "--tune", "lr=0.05,0.1",
          "--tune", "inhibition_rate=0.3,0.5", "--tune-epochs", "1", "--tune-seeds", "2", "--val-fraction", "0.2",
          "--out", str(tmp_path / "c")])
    assert seen["tune"] == {"lr": (0.05, 0.1), "inhibition_rate": (0.3, 0.5)}
    assert (seen["tune_epochs"], seen["tune_seeds"], seen["val_fraction"]) == (1, 2, 0.2)
    assert seen["base"].val_fraction == 0.0            # the final runs hold no validation split


@pytest.mark.parametrize("argv, match", [
    (["--preset", "quick", "--tune", "lr=x"], r"tune \(--tune\) lr: 'x' is not a number"),
    (["--preset", "quick", "--tune-seeds", "2"], r"need --tune FIELD=V1,V2,... \(preset 'quick' does not tune\)"),
    (["--preset", "quick", "--tune", "lr=0.1", "--val-fraction", "0"], r"must be in \(0, 0.5\]"),
])
def test_reproduce_cli_bad_tuning_input(tmp_path, capsys, argv, match):
    import re
    assert main(["reproduce", *argv, "--out", str(tmp_path / "r")]) != 0
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


def test_reproduce_cli_overrides_the_presets_tuning(tmp_path):
    import argparse

    from gradmask.cli.reproduce import tuning_from_args
    args = argparse.Namespace(preset="cifar-full", tune=[], tune_epochs=2, tune_seeds=None, val_fraction=None)
    t = tuning_from_args(args)
    assert t.grid == PRESETS["cifar-full"].tuning.grid == {"lr": (0.05, 0.1, 0.2, 0.4)}
    assert t.epochs == 2 and t.val_fraction == 0.1
    args.tune = ["inhibition_rate=0.3,0.5"]
    assert tuning_from_args(args).grid == {"inhibition_rate": (0.3, 0.5)}
