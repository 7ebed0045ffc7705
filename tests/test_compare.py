"""gradmask compare: the report from fabricated run dirs, the runner with a fake train, the CLI."""
import csv
import dataclasses
import json
import math
import re
import types
from pathlib import Path

import pytest
from PIL import Image

import gradmask.cli.compare as compare_cli
from gradmask.cli import main
from gradmask.compare import check_seeds, check_variants, compare, load_runs, run_order, write_report

T_975_4 = 2.7764451051977987   # Student t, 97.5% quantile, 4 dof (equal n = 3, equal variances)


@dataclasses.dataclass
class FakeConfig:
    """Stands in for gradmask.train.TrainConfig: the fields the compare contract relies on."""
    dataset: str = "synthetic"
    data: str | None = None
    model: str = "resnet18_narrow"
    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.1
    schedule: str = "cosine"
    inhibition_rate: float = 0.5
    mask: str = "lateral"
    seed: int = 0
    out: str = "runs/x"
    resume: bool = False


def make_run(root, variant, seed, final_acc, final_top5=0.9, epochs=3, done=None, seconds=60.0, **config):
    """A run dir as gradmask.train writes it; ``done`` < ``epochs`` leaves it unfinished."""
    done = epochs if done is None else done
    path = Path(root) / f"{variant}-seed{seed}"
    path.mkdir(parents=True)
    cfg = dataclasses.asdict(FakeConfig(mask=variant, seed=seed, out=str(path), resume=True, epochs=epochs,
                                        **config))
    cfg["gradmask_version"] = "0.1.0"
    (path / "config.json").write_text(json.dumps(cfg))
    lines = []
    for e in range(1, done + 1):
        frac = e / epochs
        lines.append(json.dumps({
            "epoch": e, "train_loss": 2.0 - frac, "train_acc": final_acc * frac, "test_loss": 2.1 - frac,
            "test_acc": final_acc * frac, "test_top5": final_top5 * frac, "lr": 0.1, "epoch_seconds": seconds / epochs,
            "images_per_second": 100.0, "mask_kept": None if variant == "none" else {"layer1.0": 0.5, "layer2.0": 0.4},
        }))
    (path / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if done == epochs:
        (path / "final.json").write_text(json.dumps({
            "test_acc": final_acc, "test_top5": final_top5, "test_loss": 1.1, "epochs": epochs,
            "train_seconds": seconds, "device": "cpu", "model": cfg["model"], "mask": variant, "seed": seed,
            "num_params": 12345}))
    return path


NONE = [0.70, 0.72, 0.74]          # 72.00 ± 2.00 %
LATERAL = [0.73, 0.75, 0.77]       # 75.00 ± 2.00 %: Δ +3.00 pp, CI 3 ± t(4) sqrt(8/3)


def fabricate(root, lateral=LATERAL, unfinished=True):
    for s, (a, b) in enumerate(zip(NONE, lateral)):
        make_run(root, "none", s, a, final_top5=0.90 + 0.01 * s, seconds=60.0 + 2 * s)
        make_run(root, "lateral", s, b, final_top5=0.93, seconds=70.0)
    if unfinished:
        make_run(root, "lateral", 3, 0.99, done=2)          # would lift the mean if it were averaged
    return Path(root)


def test_load_runs_order_and_unfinished(tmp_path):
    fabricate(tmp_path)
    (tmp_path / "not-a-run").mkdir()
    runs = load_runs(tmp_path)
    assert [(r.variant, r.seed, r.finished) for r in runs] == [
        ("none", 0, True), ("none", 1, True), ("none", 2, True),
        ("lateral", 0, True), ("lateral", 1, True), ("lateral", 2, True), ("lateral", 3, False)]
    assert runs[-1].epochs_done == 2 and runs[-1].epochs_planned == 3


def test_variant_order_and_repeated_epochs(tmp_path):
    for v in ("zeta", "pixel", "lateral", "norm", "none"):
        make_run(tmp_path, v, 0, 0.5)
    # a resumed run that re-ran epoch 2 and was killed mid-line
    with open(tmp_path / "norm-seed0" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "test_acc": 0.123, "train_loss": 1.0}) + "\n{\"epoch\": 3, \"te")
    runs = load_runs(tmp_path)
    assert [r.variant for r in runs] == ["none", "lateral", "norm", "pixel", "zeta"]
    norm = runs[2]
    assert [m["epoch"] for m in norm.metrics] == [1, 2, 3] and norm.metrics[1]["test_acc"] == 0.123


def test_report_numbers(tmp_path):
    out = fabricate(tmp_path)
    paths = write_report(out)
    assert set(paths) == {"csv", "json", "accuracy", "loss", "markdown", "html"}
    md = paths["markdown"].read_text()
    half = T_975_4 * math.sqrt(4 / 3 + 4 / 3)
    assert "72.00 ± 2.00" in md and "75.00 ± 2.00" in md          # top-1 mean ± sample std
    assert "91.00 ± 1.00" in md and "93.00" in md                  # top-5
    assert "+3.00" in md
    assert f"[{3 - half:+.2f}, {3 + half:+.2f}]" in md
    assert "[-1.53, +7.53]" in md
    assert "3 (+1 unfinished)" in md
    assert "62.0 s" in md and "70.0 s" in md                       # train time per run
    assert "3 epochs" in md and "3 finished seeds per variant" in md
    assert "contains 0" in md and "not established" in md
    assert "## Unfinished runs" in md and "lateral-seed3" in md and "2 / 3" in md
    assert "![Test top-1 accuracy per epoch](accuracy.png)" in md and "(loss.png)" in md
    for setting in ("synthetic", "resnet18_narrow", "cosine", "inhibition_rate", "batch_size", "cpu"):
        assert setting in md

    rows = list(csv.DictReader(paths["csv"].read_text().splitlines()))
    assert len(rows) == 7
    assert [float(r["test_acc"]) for r in rows if r["variant"] == "none"] == NONE
    assert [r["finished"] for r in rows].count("False") == 1
    assert {r["seed"] for r in rows if r["variant"] == "lateral"} == {"0", "1", "2", "3"}
    data = json.loads(paths["json"].read_text())
    assert len(data["runs"]) == 7
    lat = next(s for s in data["summary"] if s["variant"] == "lateral")
    assert lat["finished_runs"] == 3 and lat["unfinished_runs"] == 1
    assert lat["top1_mean_pct"] == pytest.approx(75.0) and lat["delta_vs_none_pp"] == pytest.approx(3.0)
    assert lat["ci_low_pp"] == pytest.approx(3 - half) and lat["ci_high_pp"] == pytest.approx(3 + half)


def test_report_files_are_valid(tmp_path):
    paths = write_report(fabricate(tmp_path))
    for key in ("accuracy", "loss"):
        with Image.open(paths[key]) as im:
            im.verify()
        with Image.open(paths[key]) as im:
            assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300
        assert paths[key].stat().st_size > 10_000
    page = paths["html"].read_text()
    assert "<table" in page and page.count("data:image/png;base64,") == 2
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    assert "72.00 ± 2.00" in page and "lateral-seed3" in page


def test_significant_difference_and_small_n(tmp_path):
    write_report(fabricate(tmp_path / "a", lateral=[0.80, 0.81, 0.82], unfinished=False))
    md = (tmp_path / "a" / "report.md").read_text()
    assert "excludes 0" in md and "higher" in md and "Unfinished" not in md
    make_run(tmp_path / "b", "none", 0, 0.7)
    make_run(tmp_path / "b", "lateral", 0, 0.75)
    md = (write_report(tmp_path / "b"))["markdown"].read_text()
    assert "not established (n < 2)" in md and "+5.00" in md


def test_report_rerun_and_missing(tmp_path):
    out = fabricate(tmp_path)
    first = write_report(out)["markdown"].read_text()
    assert write_report(out)["markdown"].read_text() == first      # reads only the run dirs
    with pytest.raises(FileNotFoundError, match="no runs"):
        write_report(tmp_path / "lateral-seed0")                    # a folder without sub-runs
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")


# ------------------------------------------------------------------------------------------- runner

def fake_train(calls):
    def train(cfg):
        calls.append(cfg)
        make_run(Path(cfg.out).parent, cfg.mask, cfg.seed, 0.5 + 0.01 * cfg.seed) \
            if not Path(cfg.out).exists() else None
        return {"test_acc": 0.5}
    return train


def test_runner_calls_every_variant_and_seed(tmp_path, capsys):
    calls = []
    base = FakeConfig(epochs=3, lr=0.05)
    out = tmp_path / "cmp"
    dirs = compare(base, variants=("none", "lateral", "pixel"), seeds=2, out=str(out), seed_offset=5,
                   train_fn=fake_train(calls))
    expected = {(v, s) for v in ("none", "lateral", "pixel") for s in (5, 6)}
    assert len(calls) == 6 and {(c.mask, c.seed) for c in calls} == expected
    for c in calls:
        assert c.resume is True and c.out == f"{out}/{c.mask}-seed{c.seed}"
        assert dataclasses.replace(c, mask=base.mask, seed=base.seed, out=base.out, resume=base.resume) == base
    assert dirs == [Path(c.out) for c in calls]
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and lines[0].startswith("[1/6] none seed 5") and lines[-1].startswith("[6/6] pixel seed 6")
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    # second pass: every run finished, train_fn still called once each (resume returns at once)
    calls.clear()
    compare(base, variants=("none", "lateral", "pixel"), seeds=2, out=str(out), seed_offset=5,
            train_fn=fake_train(calls), log=None)
    assert len(calls) == 6


def test_runner_validation(tmp_path):
    calls = []
    with pytest.raises(ValueError, match=r"--variants.*none, lateral, norm, pixel"):
        compare(FakeConfig(), variants=("none", "lateral-ish"), train_fn=fake_train(calls), out=str(tmp_path))
    with pytest.raises(ValueError, match="--seeds"):
        compare(FakeConfig(), seeds=0, train_fn=fake_train(calls), out=str(tmp_path))
    with pytest.raises(ValueError, match="more than once"):
        check_variants("none,lateral,none")
    with pytest.raises(ValueError, match="--seed-offset"):
        check_seeds(2, -1)
    assert calls == []
    assert check_variants(" none, norm ") == ("none", "norm")
    assert run_order(("none", "lateral"), 2, "o") == [("none", 0, "o/none-seed0"), ("lateral", 0, "o/lateral-seed0"),
                                                 ("none", 1, "o/none-seed1"), ("lateral", 1, "o/lateral-seed1")]


# ---------------------------------------------------------------------------------------------- cli

def test_cli_report_only(tmp_path, capsys):
    fabricate(tmp_path)
    assert main(["compare", "--report-only", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "72.00 ± 2.00" in printed and "report.html" in printed


def test_cli_bad_input(tmp_path, capsys):
    assert main(["compare", "--report-only", "--out", str(tmp_path)]) == 2
    assert "no runs" in capsys.readouterr().err
    assert main(["compare", "--report-only", "--out", str(tmp_path), "--variants", "none,lateral,foo"]) == 2
    err = capsys.readouterr().err
    assert "--variants" in err and "none, lateral, norm, pixel" in err and "'foo'" in err
    assert main(["compare", "--report-only", "--out", str(tmp_path), "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "--mask", "lateral", "--out", str(tmp_path)])
    assert "--variants" in capsys.readouterr().err


def test_cli_trains_with_train_flags(tmp_path, monkeypatch, capsys):
    """The training flags come from gradmask.cli.train; --out/--mask/--seed are overridden by compare's."""
    def add_train_arguments(parser):
        parser.add_argument("--epochs", type=int, default=90)
        parser.add_argument("--lr", type=float, default=0.1)
        parser.add_argument("--mask", default="lateral", choices=["none", "lateral", "norm", "pixel"])
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", default="runs/train")

    def config_from_args(args):
        return FakeConfig(epochs=args.epochs, lr=args.lr, mask=args.mask, seed=args.seed, out=args.out)

    monkeypatch.setattr(compare_cli, "_train_cli", types.SimpleNamespace(
        add_train_arguments=add_train_arguments, config_from_args=config_from_args))
    calls = []
    monkeypatch.setattr("gradmask.compare.executor.train", fake_train(calls))  # what the command trains with
    out = tmp_path / "c"
    assert main(["compare", "--variants", "none,norm", "--seeds", "2", "--epochs", "4", "--lr", "0.02",
                 "--out", str(out)]) == 0
    assert sorted((c.mask, c.seed) for c in calls) == [("none", 0), ("none", 1), ("norm", 0), ("norm", 1)]
    assert all(c.epochs == 4 and c.lr == 0.02 and c.out.startswith(str(out)) for c in calls)
    printed = capsys.readouterr()
    assert (out / "report.html").is_file() and "[4/4]" in printed.out
    # not a terminal: one plain line per run with elapsed time and ETA, no carriage returns
    counted = [line for line in printed.out.splitlines() if line.startswith("runs ")]
    assert [line.split(":")[0] for line in counted] == [f"runs {k}/4" for k in range(1, 5)]
    assert all("ETA" in line for line in counted) and "\r" not in printed.out + printed.err


def test_cli_with_real_train_config(tmp_path, monkeypatch):
    """The real gradmask.cli.train flags build the TrainConfig; compare replaces mask/seed/out/resume."""
    train_mod = pytest.importorskip("gradmask.train")
    calls = []

    def train_fn(cfg):
        assert isinstance(cfg, train_mod.TrainConfig)
        calls.append(cfg)
        path = Path(cfg.out)
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "gradmask_version": "x"}))
        (path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.5, "train_loss": 1.0}) + "\n")
        return {}

    real_compare = compare_cli.compare
    monkeypatch.setattr(compare_cli, "compare", lambda *a, **k: real_compare(*a, log=None, **k))
    monkeypatch.setattr("gradmask.compare.executor.train", train_fn)
    out = tmp_path / "real"
    assert main(["compare", "--preset", "quick", "--epochs", "3", "--inhibition-rate", "0.3", "--variants",
                 "none,pixel", "--seeds", "2", "--seed-offset", "1", "--out", str(out)]) == 0
    assert sorted((c.mask, c.seed) for c in calls) == [("none", 1), ("none", 2), ("pixel", 1), ("pixel", 2)]
    quick = train_mod.TrainConfig.from_preset("quick", epochs=3, inhibition_rate=0.3)
    for c in calls:
        assert c.resume is True and c.out == f"{out}/{c.mask}-seed{c.seed}"
        assert dataclasses.replace(c, mask=quick.mask, seed=quick.seed, out=quick.out, resume=quick.resume) == quick
    md = (out / "report.md").read_text()
    assert "0 (+2 unfinished)" in md and "No run has finished yet" in md


@pytest.mark.slow
def test_gsnr_probe_recorded_and_plotted_by_compare(tmp_path):
    """--gsnr-every: the engine writes gsnr.jsonl, the compare report plots it."""
    from gradmask.compare import compare
    from gradmask.train import TrainConfig
    base = TrainConfig.from_preset("quick", epochs=2, warmup_epochs=0.5, train_limit=128, test_limit=64,
                                   gsnr_every=1, gsnr_samples=8, progress=False)
    compare(base, variants=("none", "lateral"), seeds=1, out=tmp_path, log=lambda *a: None)
    for variant in ("none", "lateral"):
        lines = (tmp_path / f"{variant}-seed0" / "gsnr.jsonl").read_text().splitlines()
        assert len(lines) == 2
    assert (tmp_path / "gsnr.png").stat().st_size > 1000
    assert "gsnr.png" in (tmp_path / "report.md").read_text()


def test_the_setting_table_leaves_out_fields_that_change_no_run(tmp_path):
    from gradmask.compare.report import Run, setting
    common = dict(dataset="cifar10", synthetic_train=20000, synthetic_clutter=1.0, schedule="onecycle",
                  milestones=[60, 120], gamma=0.2, inhibition_schedule="constant", inhibition_warmup=0.0,
                  inhibition_rate=0.5, sigma=11.0, lr=0.1)
    none = Run(tmp_path / "none-seed0", dict(common, mask="none"))
    lateral = Run(tmp_path / "lateral-seed0", dict(common, mask="lateral"))
    keys = dict(setting([none, lateral]))
    assert keys["dataset"] == "cifar10" and keys["lr"] == "0.1" and keys["schedule"] == "onecycle"
    for hidden in ("synthetic_train", "synthetic_clutter", "milestones", "gamma", "inhibition_warmup"):
        assert hidden not in keys
    assert keys["inhibition_rate"] == "0.5"                   # changes the lateral run
    assert "inhibition_rate" not in dict(setting([none]))     # changes no run of a none-only table
    shown = dict(setting([Run(tmp_path / "s", dict(common, dataset="synthetic", schedule="multistep",
                                                       inhibition_schedule="warmup", mask="lateral"))]))
    assert {"synthetic_train", "synthetic_clutter", "milestones", "gamma", "inhibition_warmup"} <= set(shown)


def test_the_report_shows_the_difference_to_none_per_epoch(tmp_path):
    for seed, (a, b) in enumerate([(0.60, 0.50), (0.62, 0.54), (0.64, 0.49)]):
        make_run(tmp_path, "none", seed, a, epochs=3)
        make_run(tmp_path, "lateral", seed, b, epochs=3)
    make_run(tmp_path, "lateral", 3, 0.9, epochs=3, done=1)          # unfinished: left out
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Per epoch: difference to none" in md
    from gradmask.compare.stats import diff_confidence_interval
    for epoch in (1, 2, 3):       # make_run: accuracy after epoch e = final * e / epochs
        d = diff_confidence_interval([100 * b * epoch / 3 for b in (0.50, 0.54, 0.49)],
                                     [100 * a * epoch / 3 for a in (0.60, 0.62, 0.64)])
        assert f"| {epoch} | {d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}] |" in md
    results = json.loads((tmp_path / "results.json").read_text())
    lateral = next(v for v in results["summary"] if v["variant"] == "lateral")
    assert f"| 3 | {lateral['delta_vs_none_pp']:+.2f}" in md              # the last epoch is the main table's Δ
    assert [r["epoch"] for r in results["per_epoch_vs_none"]["lateral"]] == [1, 2, 3]
    assert results["per_epoch_vs_none"]["lateral"][-1]["diff_pp"] == pytest.approx(lateral["delta_vs_none_pp"])
