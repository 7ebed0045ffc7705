"""gradmask reproduce: plans, verdicts, an end-to-end tiny run, resume, and the report's contents."""
import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from browser import run_browser
from scipy import stats

from gradmask.compare.stats import DiffInterval
from gradmask.reproduce import make_plan, parse_data, reproduce, write_report
from gradmask.reproduce.experiments import table2 as table2_experiment
from gradmask.reproduce.presets import PRESETS, Evaluation
from gradmask.reproduce.verdict import (
    DOES_NOT_HOLD,
    HOLDS,
    MIXED,
    NOT_ESTABLISHED,
    combine,
    difference_interval,
    headline,
    mean_interval,
    verdict,
)

# the smallest plan that still exercises every step: 2 SGD steps of 16 images per run, 32 test images
TINY_TRAINING = dict(model="resnet18_narrow", groups=4, epochs=1, batch_size=16, lr=0.05, schedule="triangle",
                     warmup_epochs=0.5, augment="none", train_limit=32, test_limit=32, synthetic_train=32,
                     synthetic_test=32)
TINY_EVALUATION = Evaluation(robustness_images=32, sparsities=(0, 0.5), epsilons=(0, 2), saliency_images=32,
                             sanity_images=2, blur_images=32, blur_sigmas=(0, 2), gsnr_samples=4, gsnr_every=1)
SECTIONS = ["table1", "table2", "table3", "sanity", "figure5", "figure6", "figure7", "figure10"]


def tiny_plan(seeds=2):
    preset = dataclasses.replace(PRESETS["quick"], training={"synthetic": {"cpu": TINY_TRAINING}},
                                 boxes_training={"cpu": TINY_TRAINING}, evaluation=TINY_EVALUATION)
    return dataclasses.replace(make_plan("quick", seeds=seeds), preset=preset)


# ------------------------------------------------------------------------------ plans
def test_quick_plan_uses_synthetic_data_for_everything():
    plan = make_plan("quick")
    assert plan.accuracy == ("synthetic",) and plan.seeds == 3
    assert plan.ablation == plan.robustness == plan.gsnr == "synthetic"
    assert plan.training("synthetic")["gsnr_every"] == 1


def test_cifar_plan_needs_data(tmp_path):
    with pytest.raises(ValueError, match="--data cifar10=PATH"):
        make_plan("cifar")
    plan = make_plan("cifar", {"cifar10": str(tmp_path)})
    assert plan.accuracy == ("cifar10",) and plan.ablation == "cifar10"
    assert plan.training("cifar10")["model"] == "resnet18_narrow"
    assert make_plan("cifar", {"cifar10": str(tmp_path)}, "cuda").training("cifar10")["model"] == "resnet18"
    # the box experiments train their own synthetic models
    assert plan.training("synthetic")["dataset"] == "synthetic"


def test_paper_plan_assigns_experiments_like_the_paper(tmp_path):
    data = {name: str(tmp_path) for name in ("cifar10", "cifar100", "imagenet", "voc2007")}
    plan = make_plan("paper", data, "cuda")
    assert plan.ablation == "cifar100" and plan.gsnr == "cifar10" and plan.robustness == "imagenet"
    assert plan.box_sets == ("voc2007",)
    assert plan.training("cifar100")["epochs"] == 200 and plan.training("imagenet")["model"] == "resnet50"
    assert plan.training("imagenet")["gsnr_every"] == 0 and plan.training("cifar10")["gsnr_every"] == 10
    from gradmask.train import TrainConfig
    for dataset in ("cifar10", "cifar100", "imagenet", "synthetic"):
        TrainConfig.from_dict(plan.training(dataset))      # every recipe is a valid config
    no_imagenet = make_plan("paper", {"cifar100": str(tmp_path), "voc2007": str(tmp_path)})
    assert no_imagenet.box_sets == () and no_imagenet.gsnr == "cifar100"
    imagenet_only = make_plan("paper", {"imagenet": str(tmp_path)})   # ImageNet runs carry no GSNR probe
    assert imagenet_only.gsnr is None and "Figure 7" in dict(imagenet_only.skipped)
    assert any("voc2007" in what and "ImageNet" in why for what, why in no_imagenet.skipped)


@pytest.mark.parametrize("bad, error, match", [
    (["cifar10"], ValueError, "NAME=PATH"),
    (["mnist=/tmp"], ValueError, "unknown name"),
    (["cifar10=/no/such/path"], FileNotFoundError, "does not exist"),
])
def test_parse_data_errors_name_the_option(bad, error, match):
    with pytest.raises(error, match=match):
        parse_data(bad)


def test_parse_data_rejects_duplicates(tmp_path):
    with pytest.raises(ValueError, match="more than once"):
        parse_data([f"cifar10={tmp_path}", f"cifar10={tmp_path}"])


@pytest.mark.parametrize("kwargs, match", [({"preset": "huge"}, "--preset"),
                                           ({"preset": "quick", "seeds": 0}, "--seeds"),
                                           ({"preset": "quick", "device": "tpu"}, "device")])
def test_make_plan_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_plan(**kwargs)


# ------------------------------------------------------------------------------ verdicts
def test_mean_interval_matches_scipy():
    values = [0.3, 0.1, 0.45, 0.2, 0.33]
    ci = mean_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert ci.diff == pytest.approx(np.mean(values))
    assert (ci.low, ci.high) == (pytest.approx(low), pytest.approx(high))


def test_mean_interval_needs_two_values():
    assert math.isnan(mean_interval([1.0]).low) and mean_interval([1.0]).diff == 1.0
    assert math.isnan(mean_interval([]).diff)


def test_difference_interval_drops_missing_values():
    ci = difference_interval([1.0, 2.0, None, math.nan], [0.0, 0.5])
    assert ci.diff == pytest.approx(1.5 - 0.25)


@pytest.mark.parametrize("interval, margin, expected", [
    ((1.0, 0.5, 1.5), 0.0, HOLDS), ((-1.0, -1.5, -0.5), 0.0, DOES_NOT_HOLD),
    ((0.2, -0.1, 0.5), 0.0, NOT_ESTABLISHED), ((0.2, math.nan, math.nan), 0.0, NOT_ESTABLISHED),
    ((2.5, 2.1, 2.9), 2.0, HOLDS), ((1.5, 1.2, 1.8), 2.0, DOES_NOT_HOLD),
])
def test_verdict_rule(interval, margin, expected):
    assert verdict(DiffInterval(*interval), margin) == expected


def test_combine_verdicts():
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, NOT_ESTABLISHED]) == MIXED
    assert combine([HOLDS, DOES_NOT_HOLD, NOT_ESTABLISHED]) == MIXED
    assert combine([]) == NOT_ESTABLISHED


def test_a_cost_part_does_not_overrule_accuracy_parts_without_saying_so():
    # Table 2 at the cifar-full scale: both accuracy parts not established, the timing part does not hold
    parts = [("accuracy", NOT_ESTABLISHED), ("accuracy", NOT_ESTABLISHED), ("cost", DOES_NOT_HOLD)]
    assert headline(parts) == f"mixed: accuracy {NOT_ESTABLISHED}; cost {DOES_NOT_HOLD}"
    assert headline([("accuracy", HOLDS), ("cost", HOLDS)]) == HOLDS
    assert headline([("accuracy", HOLDS), ("accuracy", DOES_NOT_HOLD)]) == "mixed: accuracy mixed"


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(autouse=True, scope="module")
def short_cost_measurement():
    """Table 2's cost step with 2 rounds of 1 step (the real one: 5 rounds of 2)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(table2_experiment, "COST_ROUNDS", 2)
        patch.setattr(table2_experiment, "COST_STEPS", 1)
        yield


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One output folder taken through what a user does: a 1-seed invocation interrupted at the
    first evaluation step, then the same command with 2 seeds (which must resume: nothing finished
    is trained or measured again, only the new seed's runs train). The tests below read it."""
    out = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as patch:
        def interrupted(plan, out, rounds, steps):
            raise KeyboardInterrupt

        patch.setattr(table2_experiment, "training_cost", interrupted)   # the first measurement
        with pytest.raises(KeyboardInterrupt):
            reproduce(tiny_plan(seeds=1), out, log=lambda line: None)
    stored_first = sorted(p.stem for p in (out / "steps").glob("*.json"))
    from gradmask.train import train
    trained = []

    def counting_train(config):
        if not (out.joinpath(config.out) / "final.json").is_file():
            trained.append(str(Path(config.out).relative_to(out)))
        return train(config)

    lines = []
    result = reproduce(tiny_plan(), out, command="gradmask reproduce --test", train_fn=counting_train,
                       log=lines.append, progress=True)
    return out, dict(result, log=lines, stored_first=stored_first, trained=trained)


@pytest.mark.slow
def test_every_experiment_is_measured_and_reported(tiny_run):
    out, result = tiny_run
    assert result["ran"] == ["train-synthetic", "train-synthetic-li-blur", "cost", "saliency-synthetic", "sanity",
                             "robustness", "blur"]
    results = json.loads((out / "results.json").read_text())
    assert list(results["sections"]) == SECTIONS
    for key, section in results["sections"].items():
        verdict = section["verdict"]
        assert verdict in (HOLDS, DOES_NOT_HOLD, NOT_ESTABLISHED) or verdict.startswith(MIXED), key
        assert section["tests"], key
    for variant in ("none", "lateral", "norm", "pixel"):
        for seed in (0, 1):
            assert (out / "synthetic" / "runs" / f"{variant}-seed{seed}" / "final.json").is_file()
    assert (out / "synthetic" / "li-blur" / "none-seed1" / "final.json").is_file()
    # not a terminal: one plain line per training run (8 + 2 li-blur), counted with an ETA, no bars
    counted = [line for line in result["log"] if line.startswith("runs ")]
    assert [line.split(":")[0] for line in counted] == [f"runs {k}/10" for k in range(1, 11)]
    assert sum("finished earlier" in line for line in counted) == 5
    assert all("ETA" in line for line in counted) and not any("\r" in line for line in result["log"])


@pytest.mark.slow
def test_interrupted_run_continues_where_it_stopped(tiny_run):
    out, result = tiny_run
    # the interrupted invocation kept its training, and nothing after
    assert result["stored_first"] == ["train-synthetic", "train-synthetic-li-blur"]
    # the next one measured everything (its new seed's runs trained, nothing else: see below)
    assert result["skipped"] == [] and result["ran"][2:] == ["cost", "saliency-synthetic", "sanity", "robustness",
                                                             "blur"]
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_more_seeds_trains_only_the_new_runs(tiny_run):
    out, result = tiny_run
    assert sorted(result["trained"]) == sorted(["synthetic/runs/none-seed1", "synthetic/runs/lateral-seed1",
                                                "synthetic/runs/norm-seed1", "synthetic/runs/pixel-seed1",
                                                "synthetic/li-blur/none-seed1"])
    results = json.loads((out / "results.json").read_text())["sections"]
    assert len(results["table1"]["numbers"]["synthetic"]["none"]) == 2


@pytest.mark.slow
def test_report_numbers_come_from_the_runs(tiny_run):
    out, _ = tiny_run
    results = json.loads((out / "results.json").read_text())["sections"]
    accs = {v: [json.loads((out / "synthetic" / "runs" / f"{v}-seed{s}" / "final.json").read_text())["test_acc"]
                for s in (0, 1)] for v in ("none", "lateral")}
    table1 = results["table1"]["numbers"]["synthetic"]
    assert sorted(table1["none"]) == sorted(accs["none"]) and sorted(table1["lateral"]) == sorted(accs["lateral"])
    expected = difference_interval(accs["lateral"], accs["none"])
    assert table1["difference"]["diff"] == pytest.approx(expected.diff)
    assert table1["verdict"] == verdict(expected)
    # the paper's numbers stand beside ours
    md = (out / "report.md").read_text()
    assert "80.26" in md and "75.86" in md and "78.97" in md
    # and it names the code that measured and trained them
    from gradmask.train.source import source_revision
    assert f"Code: this report by gradmask {source_revision()}; the runs were trained by {source_revision()} (" in md
    assert f"the measurements were made by {source_revision()} (" in md
    assert "| synthetic |" in md


@pytest.mark.slow
def test_report_verdicts_agree_everywhere(tiny_run):
    out, _ = tiny_run
    results = json.loads((out / "results.json").read_text())["sections"]
    csv_rows = (out / "verdicts.csv").read_text().strip().splitlines()[1:]
    assert len(csv_rows) == sum(len(s["tests"]) for s in results.values())
    md = (out / "report.md").read_text()
    for section in results.values():
        assert f"**Verdict: {section['verdict']}**" in md


@pytest.mark.slow
def test_markdown_figures_exist_and_html_is_self_contained(tiny_run):
    out, _ = tiny_run
    md = (out / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(figures) >= 8
    for f in figures:
        assert (out / f).is_file(), f
    page = (out / "report.html").read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(sources) == len(figures)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("<table>") == md.count("\n|:") + md.count("\n|---:")


@pytest.mark.slow
def test_second_invocation_resumes_without_measuring(tiny_run):
    out, _ = tiny_run
    before = {p.name: p.read_text() for p in (out / "steps").glob("*.json")}
    result = reproduce(tiny_plan(), out, command="gradmask reproduce --test", log=lambda line: None)
    assert result["ran"] == [] and len(result["skipped"]) == 7
    assert {p.name: p.read_text() for p in (out / "steps").glob("*.json")} == before


@pytest.mark.slow
def test_report_can_be_rewritten_from_stored_files(tiny_run, tmp_path):
    out, _ = tiny_run
    first = json.loads((out / "results.json").read_text())
    write_report(out)
    assert json.loads((out / "results.json").read_text()) == first


# ------------------------------------------------------------------------------ a real browser
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.setAttribute("data-check", JSON.stringify({
    images: images.length, decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    tables: document.querySelectorAll("table").length,
    cells: document.querySelectorAll("td").length,
    height: document.documentElement.scrollHeight}));
});
</script>"""


@pytest.mark.slow
def test_html_report_renders_tables_and_images_in_headless_chromium(tiny_run, tmp_path):
    """Open report.html from disk with no network in Debian's chromium: every figure decodes, every
    table is laid out, and the screenshot shows the page (not a blank or an error page)."""
    import html as html_lib

    from PIL import Image

    out, _ = tiny_run
    page = (out / "report.html").read_text()
    # a copy with a load-time probe (the report itself has no script)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK_SCRIPT + "\n</body>"))
    dom = run_browser("--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'data-check="([^"]+)"', dom)
    assert found, "the load handler did not run"
    check = json.loads(html_lib.unescape(found.group(1)))
    n_images, n_tables = page.count("<img "), page.count("<table>")
    assert check["images"] == n_images >= 8
    assert check["decoded"] == n_images, "some embedded figures did not decode"
    assert check["tables"] == n_tables >= 9 and check["cells"] > 100
    assert check["height"] > 3000   # the whole report laid out, not an error page

    shot = tmp_path / "report.png"
    height = min(check["height"], 16000)               # the whole page, figures included
    run_browser(f"--window-size=1280,{height}", f"--screenshot={shot}", (out / "report.html").as_uri())
    with Image.open(shot) as screenshot:
        image = np.asarray(screenshot.convert("RGB")).astype(np.int16)
    assert image.shape[:2] == (height, 1280)
    ink = (image.sum(-1) < 600).mean()                  # text, table borders, plot lines
    colour = (image.max(-1) - image.min(-1) > 60).mean()  # the figures' coloured lines and maps
    assert 0.02 < ink < 0.9, ink
    assert colour > 0.002, colour


# ------------------------------------------------------------------------------ sections from stored steps
def _store(out, name, result):
    from gradmask.reproduce.store import write_step
    write_step(out, name, {"settings": {}, "result": result, "wall_seconds": 1.0})


def test_figure10_verdict_is_on_the_change_from_each_models_own_clean_accuracy(tmp_path):
    """A weaker augmented model (15% vs 22% unblurred) that loses less under blur holds the claim,
    though its raw accuracy under blur stays below the normal model's."""
    from gradmask.reproduce.experiments.figure10 import section as figure10
    seeds = {str(k): {"baseline": [[0, 0.22 + d], [2, 0.14 + d], [4, 0.12 + d]],
                      "li-blur": [[0, 0.15 + d], [2, 0.10 + d], [4, 0.09 + d]]}
             for k, d in enumerate((0.0, 0.01, -0.01))}
    _store(tmp_path, "blur", {"n_images": 10, "sigmas": [0, 2, 4], "seeds": seeds})
    s = figure10(tmp_path, {})
    assert s.verdicts[0][1] == HOLDS and s.verdict == HOLDS
    change = s.numbers["change"]
    assert change["baseline"] == pytest.approx([-0.09] * 3) and change["li-blur"] == pytest.approx([-0.055] * 3)
    assert s.numbers["blurred_difference"]["high"] < 0     # raw accuracy under blur: lower
    md = "\n".join(str(b) for b in s.blocks)
    assert "unblurred accuracy (sigma 0)" in md and "mean accuracy over sigma > 0" in md


def test_table2_cost_verdict_comes_from_paired_step_times(tmp_path):
    from gradmask.reproduce.experiments.table2 import section as table2
    ratios = {"none": [0.9, 0.92, 0.91], "lateral": [1.0, 1.0, 1.0], "norm": [1.0, 1.1, 1.05],
              "pixel": [3.1, 2.9, 3.0]}
    cost = {"dataset": "synthetic", "batch_size": 8, "image_size": 32, "rounds": 3, "steps": 1, "threads": 1,
            "seconds": {v: [0.1 * x for x in r] for v, r in ratios.items()}, "ratios": ratios}
    _store(tmp_path, "cost", cost)
    s = table2(tmp_path, {}, "synthetic")
    assert dict(s.verdicts)["pixel trains >= 2x slower than lateral (paired step times)"] == HOLDS
    assert s.numbers["slowdown_pixel"]["diff"] == pytest.approx(3.0)
    table = next(b for b in s.blocks if b[0] == "table")
    # the paper's CIFAR-100 numbers are not put beside synthetic ones (one rule with Tables 1 and 3)
    assert [row[1] for row in table[2]] == ["—"] * 3 and [row[6] for row in table[2]] == ["—"] * 3
    assert [row[5] for row in table[2]] == ["1.00", "1.05", "3.00"]
    # a cost step of another dataset is not used
    _store(tmp_path, "cost", dict(cost, dataset="cifar10"))
    assert dict(table2(tmp_path, {}, "synthetic").verdicts)[
        "pixel trains >= 2x slower than lateral (paired step times)"] == NOT_ESTABLISHED


# ------------------------------------------------------------------------------ progress
def test_run_progress_logs_one_plain_line_per_run_with_elapsed_and_eta(tmp_path):
    from types import SimpleNamespace

    from gradmask.util.progress import RunProgress
    now = [0.0]
    lines = []
    progress = RunProgress(4, bar=False, log=lines.append, clock=lambda: now[0])
    progress.skipped(1)                                   # a training step found finished earlier
    done_before = tmp_path / "b"
    done_before.mkdir()
    (done_before / "final.json").write_text("{}")

    def fake_train(config):
        now[0] += 0.0 if config.out == str(done_before) else 60.0
        return config.out

    train = progress.wrap(fake_train)
    assert train(SimpleNamespace(out=str(tmp_path / "a"))) == str(tmp_path / "a")
    train(SimpleNamespace(out=str(done_before)))
    assert lines == [f"runs 2/4: {tmp_path / 'a'} trained in 1m00s; elapsed 1m00s, ETA 2m00s",
                     f"runs 3/4: {done_before} finished earlier; elapsed 1m00s, ETA 1m00s"]
    assert progress.eta() == pytest.approx(60.0)
    assert not any("\r" in line for line in lines)
    with pytest.raises(ValueError, match="done <= total"):
        RunProgress(2, done=3)
    # runs trained side by side: the ETA counts rounds of `jobs` runs
    side_by_side = RunProgress(5, bar=False, log=lines.append, clock=lambda: now[0], jobs=2)
    side_by_side.finished("x", 60.0, trained=True)
    assert side_by_side.eta() == pytest.approx(120.0)          # 4 left: 2 rounds of 60 s
    side_by_side.finished("y", 60.0, trained=True)
    assert side_by_side.eta() == pytest.approx(120.0)          # 3 left: still 2 rounds
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        RunProgress(2, jobs=0)


def test_evaluation_warnings_name_chance_level_and_one_class_images():
    from gradmask.util.reporting import evaluation_warnings
    near = evaluation_warnings(0.101, 10, what="the lateral model")
    assert len(near) == 1 and "the lateral model is near chance level: accuracy 10.1%" in near[0]
    assert evaluation_warnings(0.16, 10) == [] and evaluation_warnings(0.14, 10) != []
    assert evaluation_warnings(None, 10) == [] and evaluation_warnings(float("nan"), 10) == []
    one_class = evaluation_warnings(0.9, 10, [3] * 101)
    assert len(one_class) == 1 and "101 images" in one_class[0] and "101 of class 3" in one_class[0]
    assert evaluation_warnings(0.9, 10, [0, 1, 2, 3, 3]) == []        # 40%: not dominated
    assert evaluation_warnings(0.9, 2, [1, 1, 1, 0]) == []            # two classes: no dominance rule
    both = evaluation_warnings(0.101, 10, [7] * 5)
    assert len(both) == 2


def test_sections_warn_when_the_models_are_near_chance(tmp_path):
    """A Table 3 evaluation at 10% accuracy on images of one class says so in its section."""
    from gradmask.reproduce.experiments.table3 import section as table3
    methods = {m: {"mean_iou": 0.4, "frac_iou_ge_05": 0.2, "n": 3} for m in ("limap", "gradcam", "gradcam++")}
    ious = {m: [0.5, 0.4, 0.3] for m in methods}
    model = {"methods": methods, "ious": ious, "index": [0, 1, 2], "accuracy": 0.101, "n_evaluated": 3,
             "evaluated_labels": [4, 4, 4]}
    _store(tmp_path, "saliency-synthetic", {"box_set": "synthetic", "n_images": 30, "num_classes": 10,
                                             "seeds": {"0": {"lateral": model, "none": dict(model, accuracy=0.5)}},
                                             "figure": None})
    s = table3(tmp_path, {})
    assert any("the lateral model of seed 0 on synthetic is near chance level" in w for w in s.warnings)
    assert sum("dominated by one class" in w for w in s.warnings) == 2
    assert any(b[0] == "p" and b[1].startswith("**Warning:**") for b in s.blocks)


def test_the_plan_is_stored_with_the_run_and_read_back_by_the_report(tmp_path):
    from gradmask.reproduce.store import StoredPlan
    plan = make_plan("cifar-full", {"cifar10": str(tmp_path)})
    stored = StoredPlan.read(tmp_path, {"plan": json.loads(json.dumps(plan.to_json()))})
    assert stored == StoredPlan(("cifar10",), "cifar10", True, "cifar10", ("synthetic", "cifar10-placed"))
    # a run written before plans were stored: derived from its step files (none here: nothing to report)
    assert StoredPlan.read(tmp_path, {"preset": "cifar-full"}) == StoredPlan((), None, False, None, ())


def test_training_code_counts_the_revisions_of_the_runs(tmp_path):
    from gradmask.reproduce.report import training_code
    runs = {"a/none-seed0": {"gradmask_version": "0.1.0+gb", "trained_by": ["0.1.0+gb"]},
            "a/none-seed1": {"gradmask_version": "0.1.0+gb", "trained_by": ["0.1.0+ga", "0.1.0+gb"]},
            "b/lateral-seed0": {"gradmask_version": "0.1.0+gb", "trained_by": ["0.1.0+gb"]},
            "old/none-seed0": {"gradmask_version": "0.0.9"},           # before trained_by was recorded
            "not-a-run": {"something": 1}}
    for name, saved in runs.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "config.json").write_text(json.dumps(saved))
    assert training_code(tmp_path) == "0.1.0+gb (2 runs); 0.1.0+ga then 0.1.0+gb (1 run); 0.0.9 (1 run)"
    assert training_code(tmp_path / "empty") == "no run"


def test_measuring_code_counts_the_revisions_of_the_steps():
    from gradmask.reproduce.report import measuring_code
    state = {"steps": {"a": {"gradmask": "0.1.0+gb"}, "b": {"gradmask": "0.1.0+gb"}, "c": {"title": "older"}}}
    assert measuring_code(state) == "0.1.0+gb (2 steps); unrecorded (1 step)"
    assert measuring_code({}) == "no step"


def test_a_step_stored_with_the_old_schedule_name_is_not_run_again_for_it():
    """Steps stored before "onecycle" was renamed "triangle" hold it in their settings: read as today's."""
    from gradmask.reproduce.runner import _current_names
    stored = {"fields": {"schedule": "onecycle", "lr": 0.1}, "variants": ["none"], "seeds": 3}
    assert _current_names(stored) == {"fields": {"schedule": "triangle", "lr": 0.1}, "variants": ["none"], "seeds": 3}
    assert stored["fields"]["schedule"] == "onecycle"          # the record itself is not changed
    assert _current_names({"checkpoints": ["a"]}) == {"checkpoints": ["a"]}
