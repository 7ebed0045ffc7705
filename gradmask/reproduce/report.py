"""The reproduction report: for each table and figure of the paper, the paper's number beside ours,
the exact setting, a verdict computed from the numbers (:mod:`.verdict`) and the figures.

Drawn only from stored files (``reproduce.json``, ``steps/*.json``, the run directories), so it can
be rewritten at any time. Writes ``report.md``, a self-contained ``report.html`` (figures as data
URIs, no script, no network), ``results.json`` (every number shown) and ``verdicts.csv``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..compare.report import fmt_duration, load_runs, report_paths, tuning_blocks
from ..compare.tuning import read_tuning
from ..files import write_atomic, write_csv
from ..reporting import evaluation_warnings, figure, render_html, render_markdown, save_figure
from . import paper
from .experiments import FIGURES, runs_dir
from .presets import ACCURACY_DATASETS, figure7_dataset
from .runner import STEPS, read_state, read_step
from .verdict import combine, difference_interval, mean_interval, verdict

SANITY_RHO = 0.5
"""Appendix A passes when the mean Spearman correlation between the trained model's LI-Map and the
fully randomized model's is below this (95% interval over images entirely below it)."""
SLOWDOWN = 2.0
"""Table 2's "3 times slower" is read as "at least 2x slower": the 95% interval of the per-round
ratio of paired step times pixel / lateral (the ``cost`` step) entirely above 2."""
#: classes of each dataset (chance level: 1 / classes)
NUM_CLASSES = {"synthetic": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}
#: training-set sizes of the datasets whose runs use all their images (``train_limit`` None)
TRAIN_IMAGES = {"cifar10": 50000, "cifar100": 50000, "imagenet": 1281167}
#: the earlier small-budget Table 1 measurement (preset cifar: 4 epochs on 15,000 CIFAR-10 images, not
#: tuned), shown beside the longer runs; read from the published results of a source checkout
SMALL_BUDGET = Path(__file__).resolve().parents[2] / "docs" / "results" / "2026-11-23-cifar-2"
METHOD_NAMES = {"limap": "LI-Map", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
#: the paper's name of each arm; the report names arms by their ``--mask`` / ``--augment`` value everywhere
#: (tables, figures, verdicts) and shows these once, at the top
PAPER_NAMES = {"none": "normal training", "lateral": "Gradient Mask (the masked network)", "norm": "without LI",
               "pixel": "without minicolumn", "li-blur": "trained with the LI background blur (Algorithm 2)"}
NAMES_NOTE = ("**Names.** Arms are named by their `--mask` value: " + ", ".join(
    f"`{k}` = the paper's {v}" for k, v in PAPER_NAMES.items() if k != "li-blur") +
    f"; `none + li-blur` = the `none` model {PAPER_NAMES['li-blur']}. The paper's numbers stand beside ours "
    "only where ours are measured on the paper's data (else —; each section lists them under **Paper**).")


# ------------------------------------------------------------------------------ formatting
def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _mean_std(values, scale: float = 1.0, digits: int = 2) -> str:
    vals = [v * scale for v in values if _finite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f} (1 run)"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def _interval(ci, scale: float = 1.0, digits: int = 2) -> str:
    if not _finite(ci.diff):
        return "n/a"
    if not (_finite(ci.low) and _finite(ci.high)):
        return f"{ci.diff * scale:+.{digits}f} (no interval: < 2 values)"
    return f"{ci.diff * scale:+.{digits}f} [{ci.low * scale:+.{digits}f}, {ci.high * scale:+.{digits}f}]"


def _paper(v, digits: int = 2) -> str:
    """A number of the paper: shown only where ours are measured on the paper's data (else None: —)."""
    return "—" if v is None else f"{v:.{digits}f}"


def _median(values) -> float:
    vals = [v for v in values if _finite(v)]
    return float(np.median(vals)) if vals else math.nan


# ------------------------------------------------------------------------------ figures
def plot_seed_curves(path: Path, curves: dict, xlabel: str, ylabel: str, title: str, scale: float = 1.0) -> Path:
    """``curves``: ``{label: [[(x, y), ...] per seed]}`` -> mean line with a min-max band per label."""
    fig = figure(6.4, 4.0)
    ax = fig.subplots()
    for i, (label, per_seed) in enumerate(curves.items()):
        per_seed = [c for c in per_seed if c]
        if not per_seed:
            continue
        xs = [x for x, _ in per_seed[0]]
        ys = np.array([[y * scale if _finite(y) else np.nan for _, y in c] for c in per_seed], dtype=float)
        color = f"C{i}"
        ax.plot(xs, np.nanmean(ys, 0), "o-", color=color, label=f"{label} (mean of {len(per_seed)})")
        if len(per_seed) > 1:
            ax.fill_between(xs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=color, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ sections
class Section:
    """One table or figure of the paper: blocks for the report and its numbers for results.json."""

    def __init__(self, claim: paper.Claim):
        self.claim = claim
        self.blocks: list[tuple] = [("h2", claim.title)]
        self.numbers: dict = {}
        self.verdicts: list[tuple[str, str]] = []   # (what was tested, verdict)
        self.budget = "no finished run"             # training images x epochs, seeds, model, tuned or not
        self.warnings: list[str] = []               # the models are near chance, the images one class, ...

    def measured_on(self, runs: list, tuning: Optional[dict]) -> None:
        """The runs behind the section: its budget line and its warnings about them."""
        self.budget = budget(runs, tuning)
        self.warnings += chance_warnings(runs)

    @property
    def verdict(self) -> str:
        return combine(v for _, v in self.verdicts)

    def finish(self, setting: str) -> None:
        numbers = "; ".join(f"{row}: " + ", ".join(f"{k} {v:g}" for k, v in cols.items())
                            for row, cols in self.claim.numbers.items())
        self.blocks.insert(1, ("p", f"**Paper:** {self.claim.claim} ({self.claim.setting})."
                                    + (f" Its numbers: {numbers}." if numbers else "")))
        self.blocks.insert(2, ("p", f"**Our setting:** {setting}"))
        lines = "; ".join(f"{what}: **{v}**" for what, v in self.verdicts) or "nothing measured"
        if self.warnings:
            self.blocks.append(("p", "**Warning:** " + "; ".join(self.warnings) + "."))
        self.blocks.append(("p", f"**Verdict: {self.verdict}** ({lines}). Budget: {self.budget}."))


def _runs(out: Path, dataset: str, augment: Optional[str] = None, ablation: bool = False) -> dict:
    """``{variant: [finished Run, ...]}`` of a dataset's folder."""
    folder = runs_dir(out, dataset, augment, ablation)
    by_variant: dict = {}
    if folder.is_dir():
        for r in load_runs(folder):
            if r.finished:
                by_variant.setdefault(r.variant, []).append(r)
    return by_variant


def _train_images(config: dict) -> Optional[int]:
    """Training images per epoch of a run's config (None when unknown)."""
    dataset = config.get("dataset")
    full = config.get("synthetic_train") if dataset == "synthetic" else TRAIN_IMAGES.get(dataset)
    limit = config.get("train_limit")
    return full if limit is None else (limit if full is None else min(limit, full))


def budget(runs: list, tuning: Optional[dict]) -> str:
    """``"50,000 training images x 15 epochs, 3 seeds, resnet18_narrow, tuned: lr per arm on a 10%
    validation split"``: what a verdict was measured at (``tuning``: the runs' tuning.json or None)."""
    if not runs:
        return "no finished run"
    images = sorted({n for n in (_train_images(r.config) for r in runs) if n is not None})
    epochs = sorted({r.epochs_done for r in runs})
    models = sorted({str(r.config.get("model")) for r in runs})
    tuned = ("not tuned (one setting for every arm)" if tuning is None else
             f"tuned: {', '.join(tuning['grid'])} per arm on a {tuning['val_fraction']:.0%} validation split")
    seeds = len({r.seed for r in runs})
    return (f"{' / '.join(f'{n:,}' for n in images) or 'all'} training images x "
            f"{' / '.join(map(str, epochs))} epoch{'s' if max(epochs) != 1 else ''}, "
            f"{seeds} seed{'s' if seeds != 1 else ''}, {', '.join(models)}, {tuned}")


def chance_warnings(runs: list) -> list[str]:
    """Warnings for the arms (dataset, variant, augmentation) of ``runs`` whose mean final test
    accuracy is near chance (:func:`gradmask.reporting.evaluation_warnings`)."""
    arms: dict[tuple, list[float]] = {}
    for r in runs:
        if (acc := r.value("test_acc")) is not None:
            arms.setdefault((r.config.get("dataset"), r.variant, r.config.get("augment")), []).append(acc)
    warnings = []
    for (dataset, variant, augment), accs in arms.items():
        name = f"{variant} + li-blur" if augment == "li-blur" else variant
        warnings += evaluation_warnings(float(np.mean(accs)), NUM_CLASSES.get(dataset),
                                        what=f"{name} on {dataset} (the mean final test accuracy of its runs)")
    return warnings


def _per_variant(runs: list, key: str) -> str:
    """A config value, or ``value (variant) / ...`` when the variants' runs differ (tuned arms)."""
    by_variant = {}
    for r in runs:
        by_variant.setdefault(r.variant, set()).add(str(r.config.get(key)))
    values = {v for vs in by_variant.values() for v in vs}
    if len(values) == 1:
        return values.pop()
    return " / ".join(f"{'/'.join(sorted(vs))} ({v})" for v, vs in by_variant.items())


def _run_setting(runs: list, state: dict) -> str:
    if not runs:
        return "no finished run"
    c = runs[0].config
    images = _train_images(c) or "all"
    seconds = sum(r.train_seconds or 0.0 for r in runs)
    seeds = sorted({r.seed for r in runs})
    augments = " / ".join(dict.fromkeys(str(r.config.get("augment")) for r in runs))
    return (f"{c.get('dataset')} ({images} training images, {c.get('test_limit') or 'all'} test images), "
            f"{c.get('model')} (groups {c.get('groups')}, sigma {c.get('sigma')}, kernel {c.get('kernel_size')}, "
            f"rate {_per_variant(runs, 'inhibition_rate')}), {c.get('epochs')} epochs, batch {c.get('batch_size')}, "
            f"lr {_per_variant(runs, 'lr')} {c.get('schedule')}, augment {augments}, seeds {seeds}, device "
            f"{runs[0].final.get('device', state.get('device'))}, training wall time {fmt_duration(seconds)} "
            f"({len(runs)} runs).")


def _accuracies(runs: list) -> list[float]:
    return [r.value("test_acc") for r in runs if r.value("test_acc") is not None]


def epoch_gap(none: list, lateral: list) -> list[tuple[int, object]]:
    """``[(epoch, Welch interval of lateral - none test accuracy)]`` over the seeds, for every epoch
    recorded by both arms' runs (from ``metrics.jsonl``)."""
    def per_epoch(runs):
        values: dict[int, list[float]] = {}
        for r in runs:
            for e, v in zip(*r.series("test_acc")):
                values.setdefault(e, []).append(v)
        return values
    a, b = per_epoch(lateral), per_epoch(none)
    return [(e, difference_interval(a[e], b[e])) for e in sorted(set(a) & set(b))]


def small_budget_point(root: Path = SMALL_BUDGET) -> Optional[dict]:
    """The earlier cifar-preset Table 1 measurement: ``{"epochs", "images", "test_images", "none",
    "lateral", "difference", "source"}``; None when its published files are not there."""
    try:
        table1 = json.loads((root / "results.json").read_text())["sections"]["table1"]["numbers"]["cifar10"]
        fields = json.loads((root / "steps" / "train-cifar10.json").read_text())["settings"]["fields"]
    except (OSError, KeyError, ValueError):
        return None
    return {"epochs": fields["epochs"], "images": fields.get("train_limit"), "test_images": fields.get("test_limit"),
            "lr": fields.get("lr"), "none": table1["none"], "lateral": table1["lateral"],
            "difference": difference_interval(table1["lateral"], table1["none"]),
            "source": f"docs/results/{root.name}"}


def plot_epoch_gap(path: Path, gaps: dict, small: Optional[dict]) -> Path:
    """Per dataset the difference masked - normal per epoch (points) with its 95% interval (band);
    the small-budget point as a separate marker."""
    fig = figure(6.4, 4.0)
    ax = fig.subplots()
    for i, (dataset, gap) in enumerate(gaps.items()):
        xs = [e for e, _ in gap]
        ax.plot(xs, [100 * ci.diff for _, ci in gap], "o-", color=f"C{i}", label=f"{dataset}: lateral − none")
        lows = [100 * ci.low if _finite(ci.low) else np.nan for _, ci in gap]
        highs = [100 * ci.high if _finite(ci.high) else np.nan for _, ci in gap]
        ax.fill_between(xs, lows, highs, color=f"C{i}", alpha=0.2, label="95% interval over seeds")
    if small is not None:
        d = small["difference"]
        ax.errorbar([small["epochs"]], [100 * d.diff], yerr=[[100 * (d.diff - d.low)], [100 * (d.high - d.diff)]],
                    fmt="s", color="k", capsize=4,
                    label=f"earlier: {small['epochs']} epochs on {small['images']:,} images "
                          f"({small['source'].rsplit('/', 1)[-1]})")
    ax.axhline(0.0, color="grey", linewidth=1, linestyle="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 difference (points)")
    ax.set_title("Test accuracy, lateral − none, per epoch", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def table1(out: Path, state: dict, datasets: list[str]) -> Section:
    s = Section(paper.TABLE1)
    rows, settings, figures, budgets, extra = [], [], [], [], []
    gaps = {}
    for dataset in datasets:
        runs = _runs(out, dataset)
        tuning = read_tuning(runs_dir(out, dataset))
        arms = runs.get("none", []) + runs.get("lateral", [])
        none, lateral = _accuracies(runs.get("none", [])), _accuracies(runs.get("lateral", []))
        ci = difference_interval(lateral, none)
        p_none = paper.TABLE1.numbers["none"].get(dataset)
        p_mask = paper.TABLE1.numbers["lateral"].get(dataset)
        v = verdict(ci)
        b = budget(arms, tuning)
        budgets.append(f"{dataset}: {b}")
        s.warnings += chance_warnings(arms)
        s.verdicts.append((f"{dataset}: lateral > none ({b})", v))
        rows.append([dataset, _paper(p_none), _paper(p_mask), _mean_std(none, 100), _mean_std(lateral, 100),
                     _interval(ci, 100), v])
        gap = epoch_gap(runs.get("none", []), runs.get("lateral", []))
        s.numbers[dataset] = {"none": none, "lateral": lateral, "difference": ci._asdict(),
                              "paper": {"none": p_none, "lateral": p_mask}, "verdict": v, "budget": b,
                              "tuning": tuning, "difference_per_epoch": [[e, g._asdict()] for e, g in gap]}
        settings.append(_run_setting(arms, state))
        if tuning is not None:
            extra.append(("p", f"**Tuning ({dataset}).**"))
            extra += tuning_blocks(tuning, arms)[1:]
        if gap:
            gaps[dataset] = gap
        accuracy_png = report_paths(runs_dir(out, dataset))["accuracy"]
        if accuracy_png.is_file():
            figures.append(("img", f"test accuracy per epoch on {dataset}", str(accuracy_png.relative_to(out))))
    s.blocks.append(("table", ["data", "paper none", "paper lateral", "ours none", "ours lateral",
                               "lateral − none [95% CI]", "verdict"], rows, ["l", "r", "r", "r", "r", "r", "l"]))
    s.blocks.append(("p", "Top-1 accuracy (%), mean ± std over seeds; the interval is Welch's t over seeds."))
    s.blocks += extra
    small = small_budget_point() if "cifar10" in datasets else None
    if gaps:
        rows = [[dataset, str(e), _interval(ci, 100)] for dataset, gap in gaps.items() for e, ci in gap]
        if small is not None:
            rows.append([f"cifar10, earlier: {small['images']:,} images, lr {small['lr']} not tuned "
                         f"({small['source']})", str(small["epochs"]), _interval(small["difference"], 100)])
        s.blocks.append(("p", "**Per epoch.** The difference lateral − none of the test accuracy after each "
                              "epoch (points, Welch's 95% interval over seeds), from the final runs' "
                              "metrics.jsonl: does the gap close, open or stay as training goes on? The "
                              "earlier small-budget measurement stands beside it as one point."))
        s.blocks.append(("table", ["data", "epoch", "lateral − none [95% CI]"], rows, ["l", "r", "r"]))
        path = plot_epoch_gap(out / FIGURES / "table1-gap-per-epoch.png", gaps, small)
        s.blocks.append(("img", "lateral − none per epoch with its 95% interval", str(path.relative_to(out))))
        if small is not None:
            s.numbers["small_budget"] = {**small, "difference": small["difference"]._asdict()}
    s.blocks += figures
    s.budget = "; ".join(budgets) or "no dataset"
    s.finish(" ".join(settings) or "no dataset")
    return s


def table2(out: Path, state: dict, dataset: str, separate: bool = False) -> Section:
    """Table 2 from Table 1's runs of ``dataset``, or (``separate``) from its own ``ablation/`` runs;
    the training cost from the ``cost`` step (paired, interleaved step times in one process)."""
    s = Section(paper.TABLE2)
    runs = _runs(out, dataset, ablation=separate)
    acc = {v: _accuracies(runs.get(v, [])) for v in ("lateral", "norm", "pixel")}
    cost = (read_step(out, "cost") or {}).get("result")
    if cost is not None and cost.get("dataset") != dataset:
        cost = None
    rows = []
    for v in ("lateral", "norm", "pixel"):
        ci = difference_interval(acc[v], acc["lateral"]) if v != "lateral" else None
        step = _median(cost["seconds"][v]) if cost else math.nan
        rows.append([v, _paper(paper.TABLE2.numbers["accuracy"][v] if dataset == paper.TABLE2_DATA else None),
                     _mean_std(acc[v], 100), _interval(ci, 100) if ci else "—",
                     f"{1000 * step:.0f}" if _finite(step) else "n/a",
                     f"{_median(cost['ratios'][v]):.2f}" if cost else "n/a",
                     _paper(paper.TABLE2.numbers["slowdown"].get(v, 1.0) if dataset == paper.TABLE2_DATA else None,
                            0 if v == "pixel" else 2)])
        s.numbers[v] = {"accuracy": acc[v], "difference_to_lateral": ci._asdict() if ci else None,
                        "step_seconds": cost["seconds"][v] if cost else None}
    for v, label in (("norm", "norm is less accurate than lateral"), ("pixel", "pixel is less accurate than lateral")):
        ci = difference_interval(acc["lateral"], acc[v])
        s.verdicts.append((label, verdict(ci)))
    ratio = mean_interval(cost["ratios"]["pixel"]) if cost else mean_interval([])
    s.verdicts.append((f"pixel trains >= {SLOWDOWN:g}x slower than lateral (paired step times)",
                       verdict(ratio, SLOWDOWN)))
    s.numbers["slowdown_pixel"] = ratio._asdict()
    if cost:
        s.numbers["cost"] = cost
    s.blocks.append(("table", ["variant", "paper acc.", "ours acc.", "− lateral [95% CI]", "step ms (median)",
                               "step time / lateral (median)", "paper slowdown"], rows,
                     ["l", "r", "r", "r", "r", "r", "r"]))
    cost_text = ("not measured (no `cost` step)" if cost is None else
                 f"{cost['rounds']} rounds in one process, in each the variants {', '.join(cost['ratios'])} in turn "
                 f"on one fixed batch of {cost['batch_size']} images of {cost['image_size']}x{cost['image_size']} "
                 f"(forward, masked backward, SGD step; {cost['steps']} timed steps per variant after one settling "
                 f"step, a warm-up round first, torch threads {cost['threads']}), the ratio taken within each round")
    s.blocks.append(("p", "`norm`: the mask from the channel-group norm alone (no LoG). `pixel`: one mask per "
                          "channel from |gradient| and the LoG. Training cost: " + cost_text +
                          f"; the verdict is the 95% interval of the per-round ratio pixel / lateral against "
                          f"{SLOWDOWN:g}x."))
    if separate:
        s.blocks.append(("p", "These ablation runs keep their own, smaller scale (see the setting below), not "
                              "Table 1's: there was no time to train them at Table 1's budget. They are not tuned."))
    arms = sum((runs.get(v, []) for v in ("lateral", "norm", "pixel")), [])
    s.measured_on(arms, read_tuning(runs_dir(out, dataset, ablation=separate)))
    s.finish(_run_setting(arms, state))
    return s


def table3(out: Path, state: dict, box_sets: Iterable[str] = ("synthetic",)) -> Optional[Section]:
    """Table 3 from the stored ``saliency-<box set>`` steps of ``box_sets`` (those measured)."""
    s = Section(paper.TABLE3)
    settings = []
    for box_set in box_sets:
        rec = read_step(out, f"saliency-{box_set}")
        if rec is None:
            continue
        r = rec["result"]
        paper_row = paper.TABLE3.numbers.get("imagenet" if box_set == "imagenet-boxes" else box_set, {})
        rows = []
        for m in ("gradcam", "gradcam++", "limap"):
            per_seed = {v: [r["seeds"][k][v]["methods"][m]["mean_iou"] for k in r["seeds"]]
                        for v in ("lateral", "none")}
            rows.append([METHOD_NAMES[m], _paper(paper_row.get(m)), _mean_std(per_seed["lateral"], 1, 3),
                         _mean_std(per_seed["none"], 1, 3)])
        tests = {}
        for other in ("gradcam", "gradcam++"):
            diffs = []
            for k in r["seeds"]:
                ious = r["seeds"][k]["lateral"]["ious"]
                diffs += [a - b for a, b in zip(ious["limap"], ious[other])]
            ci = mean_interval(diffs)
            v = verdict(ci)
            s.verdicts.append((f"{box_set}: LI-Map > {METHOD_NAMES[other]}", v))
            tests[other] = {"difference": ci._asdict(), "n_pairs": len(diffs), "verdict": v}
            rows.append([f"LI-Map − {METHOD_NAMES[other]} (paired, lateral models) [95% CI]",
                         _paper(paper_row["limap"] - paper_row[other]) if paper_row else "—",
                         _interval(ci, 1, 3), ""])
        for k in r["seeds"]:
            for v, m in r["seeds"][k].items():
                s.warnings += evaluation_warnings(m.get("accuracy"), r.get("num_classes"),
                                                  m.get("evaluated_labels", ()),
                                                  what=f"the {v} model of seed {k} on {box_set}")
        s.blocks.append(("p", f"**{box_set}** ({r['n_images']} images; evaluated: "
                              f"{', '.join(str(r['seeds'][k]['lateral']['n_evaluated']) for k in r['seeds'])} per "
                              f"seed after the filters)."))
        s.blocks.append(("table", ["method", "paper IoU", "ours: lateral models", "ours: none models"], rows,
                         ["l", "r", "r", "r"]))
        if r.get("figure"):
            s.blocks.append(("img", f"saliency maps on {box_set} (seed 0, lateral model; green: object box, "
                                    f"red: top-15% box)", r["figure"]))
        s.numbers[box_set] = {"seeds": {k: {v: r["seeds"][k][v]["methods"] for v in r["seeds"][k]} for k in r["seeds"]},
                              "tests": tests, "paper": paper_row}
        settings.append(f"{box_set}: IoU of the box around the top 15% of pixels, images with one object whose "
                        f"box covers at most half the image" + (", correctly classified" if box_set != "voc2007"
                                                                 else ", the predicted class explained") +
                        f"; mean ± std over seeds; paired interval over all (image, seed) pairs; wall time "
                        f"{fmt_duration(rec.get('wall_seconds'))}.")
    if not settings:   # no box set measured yet
        return None
    syn = _runs(out, "synthetic")
    s.measured_on(syn.get("lateral", []) + syn.get("none", []), read_tuning(runs_dir(out, "synthetic")))
    settings.append("Models: " + _run_setting(syn.get("lateral", []) + syn.get("none", []), state))
    s.finish(" ".join(settings))
    return s


def sanity(out: Path, state: dict) -> Optional[Section]:
    rec = read_step(out, "sanity")
    if rec is None:
        return None
    r = rec["result"]
    s = Section(paper.SANITY)
    steps = r["steps"]
    rows = []
    for i, st in enumerate(steps["limap"]):
        g = steps["gradcam"][i]
        rows.append([st["step"], st["randomized"], f"{st['spearman']:.3f}", f"{st['ssim']:.3f}",
                     f"{g['spearman']:.3f}", f"{g['ssim']:.3f}"])
    last = steps["limap"][-1]
    rho = [v for v in last["spearman_images"] if _finite(v)]
    ci = mean_interval([SANITY_RHO - v for v in rho])
    s.verdicts.append((f"LI-Map correlation after full randomization < {SANITY_RHO}", verdict(ci)))
    mi = mean_interval(rho)
    s.numbers = {"steps": steps, "final_spearman": mi._asdict(), "threshold": SANITY_RHO}
    s.blocks.append(("table", ["step", "randomized (cumulative, top-down)", "LI-Map Spearman", "LI-Map SSIM",
                               "Grad-CAM Spearman", "Grad-CAM SSIM"], rows, ["r", "l", "r", "r", "r", "r"]))
    s.blocks.append(("p", f"After randomizing every block the LI-Map keeps a mean Spearman correlation of "
                          f"{_interval(mi, 1, 3).lstrip('+')} with the trained model's map (a map that ignored "
                          f"the weights would keep 1)."))
    for f in r["figures"]:
        if (out / f).is_file():
            s.blocks.append(("img", "cascading randomization", f))
    s.measured_on([r for r in _runs(out, "synthetic").get("lateral", []) if r.seed == 0],
                      read_tuning(runs_dir(out, "synthetic")))
    s.finish(f"seed 0's lateral synthetic model, {r['n_images']} synthetic test images, groups re-initialised "
             f"top-down per block, Grad-CAM on {r['gradcam_layer']}; wall time "
             f"{fmt_duration(rec.get('wall_seconds'))}.")
    return s


def _per_seed_mean(curve, skip_zero: bool = True) -> float:
    vals = [y for x, y in curve if (x > 0 or not skip_zero) and _finite(y)]
    return float(np.mean(vals)) if vals else math.nan


def _compare_curves(s: Section, out: Path, png: str, curves: dict, what: str, xlabel: str, title: str):
    """``curves``: ``{key: (label, [accuracy curve per seed])}``, the baseline first. Per seed the
    mean accuracy over the points with x > 0; the verdict on (second − first) over seeds; the
    figure. Returns ``(means by key, interval, figure path)``."""
    (base, (base_label, base_curves)), (test, (test_label, test_curves)) = curves.items()
    means = {base: [_per_seed_mean(c) for c in base_curves], test: [_per_seed_mean(c) for c in test_curves]}
    ci = difference_interval(means[test], means[base])
    s.verdicts.append((what, verdict(ci)))
    path = plot_seed_curves(out / FIGURES / png, {base_label: base_curves, test_label: test_curves}, xlabel,
                            "top-1 accuracy (%)", title, 100)
    return means, ci, path


def figure5_6(out: Path, state: dict) -> list[Section]:
    rec = read_step(out, "robustness")
    if rec is None:
        return []
    r = rec["result"]
    setting = (f"{r['dataset']} test images ({r['n_images']}, fixed random subset), each seed's none and "
               f"lateral models from Table 1/2's runs; wall time {fmt_duration(rec.get('wall_seconds'))}.")
    seeds = list(r["seeds"])
    s5 = Section(paper.FIGURE5)
    s5.blocks.append(("p", "Top-1 accuracy (%) after L1 pruning (`torch.nn.utils.prune`), mean ± std over seeds."))
    rows = []
    for i, sp in enumerate(r["sparsities"]):
        row = [f"{sp:g}"]
        for scheme in ("global", "layer"):
            for v in ("none", "lateral"):
                row.append(_mean_std([r["seeds"][k]["pruning"][v][scheme][i][1] for k in seeds], 100))
        rows.append(row)
    s5.blocks.append(("table", ["sparsity", "global: none", "global: lateral", "per layer: none",
                                "per layer: lateral"], rows, ["r", "r", "r", "r", "r"]))
    for scheme in ("global", "layer"):
        means, ci, path = _compare_curves(
            s5, out, f"figure5-{scheme}.png",
            {v: (v, [r["seeds"][k]["pruning"][v][scheme] for k in seeds]) for v in ("none", "lateral")},
            f"{scheme} pruning: lateral > none (mean accuracy over sparsities > 0)",
            "sparsity (fraction of conv/linear weights removed)", f"L1 pruning ({scheme}) on {r['dataset']}")
        s5.numbers[scheme] = {"mean_pruned_accuracy": means, "difference": ci._asdict()}
        s5.blocks.append(("img", f"accuracy after {scheme} L1 pruning", str(path.relative_to(out))))
    runs = _runs(out, r["dataset"])
    s5.measured_on(runs.get("none", []) + runs.get("lateral", []), read_tuning(runs_dir(out, r["dataset"])))
    s5.finish(setting)

    s6 = Section(paper.FIGURE6)
    s6.budget, s6.warnings = s5.budget, list(s5.warnings)
    joint = ", ".join(str(r["seeds"][k]["fgsm"]["n_joint"]) for k in seeds)
    s6.blocks.append(("p", f"Top-1 accuracy (%) under FGSM on the images both models of a seed classify "
                           f"correctly ({joint} per seed), mean ± std over seeds."))
    rows = []
    for i, e in enumerate(r["epsilons_255"]):
        rows.append([f"{e:g}/255"] + [_mean_std([r["seeds"][k]["fgsm"]["curves"][v][i][1] for k in seeds], 100)
                                      for v in ("none", "lateral")])
    s6.blocks.append(("table", ["epsilon", "none", "lateral"], rows, ["r", "r", "r"]))
    means, ci, path = _compare_curves(
        s6, out, "figure6.png",
        {v: (v, [r["seeds"][k]["fgsm"]["curves"][v] for k in seeds]) for v in ("none", "lateral")},
        "lateral > none (mean accuracy over epsilons > 0)", "epsilon (1/255)", f"FGSM on {r['dataset']}")
    s6.numbers = {"mean_attacked_accuracy": means, "difference": ci._asdict(),
                  "n_joint": {k: r["seeds"][k]["fgsm"]["n_joint"] for k in seeds}}
    s6.blocks.append(("img", "accuracy under FGSM", str(path.relative_to(out))))
    s6.finish(setting)
    return [s5, s6]


def figure7(out: Path, state: dict, dataset: str) -> Optional[Section]:
    from ..robustness import plot_gsnr, read_gsnr
    runs = _runs(out, dataset)
    records = {r.path: read_gsnr(r.path) for v in ("none", "lateral") for r in runs.get(v, [])}
    probed = {v: [r for r in runs.get(v, []) if records[r.path]] for v in ("none", "lateral")}
    if not probed["none"] or not probed["lateral"]:
        return None
    s = Section(paper.FIGURE7)
    per_seed = {v: [float(np.mean([math.log10(g["network"]) for g in records[r.path] if _finite(g.get("network"))
                                   and g["network"] > 0])) for r in probed[v]] for v in ("none", "lateral")}
    ci = difference_interval(per_seed["lateral"], per_seed["none"])
    s.verdicts.append(("lateral > none (mean log10 GSNR over epochs)", verdict(ci)))
    s.numbers = {"mean_log10_gsnr": per_seed, "difference": ci._asdict()}
    s.blocks.append(("table", ["", "none", "lateral", "lateral − none [95% CI]"],
                     [["mean log10 GSNR over epochs", _mean_std(per_seed["none"], 1, 3),
                       _mean_std(per_seed["lateral"], 1, 3), _interval(ci, 1, 3)]], ["l", "r", "r", "r"]))
    path = plot_gsnr([r.path for r in probed["none"] + probed["lateral"]], out / FIGURES / "figure7.png")
    s.blocks.append(("img", "GSNR during training", str(path.relative_to(out))))
    samples = records[probed["lateral"][0].path][0].get("n_samples")
    s.measured_on(probed["none"] + probed["lateral"], read_tuning(runs_dir(out, dataset)))
    s.finish(f"GSNR (mean^2 / variance of per-sample gradients, mean over the conv weights) on {samples} fixed "
             f"training images after every epoch; lateral runs measure the masked gradients. Runs: "
             + _run_setting(probed["none"] + probed["lateral"], state))
    return s


def figure10(out: Path, state: dict) -> Optional[Section]:
    """Figure 10, judged on robustness: per seed the drop of the mean accuracy over sigmas > 0
    from the model's own unblurred accuracy (sigma 0), so a model that is merely less accurate does
    not count as less robust; the raw accuracies are shown beside it."""
    rec = read_step(out, "blur")
    if rec is None:
        return None
    r = rec["result"]
    s = Section(paper.FIGURE10)
    seeds = list(r["seeds"])
    arms = {"baseline": "none", "li-blur": "none + li-blur"}
    rows = []
    for i, sigma in enumerate(r["sigmas"]):
        rows.append([f"{sigma:g}"] + [_mean_std([r["seeds"][k][v][i][1] for k in seeds], 100) for v in arms])
    s.blocks.append(("table", ["background blur sigma"] + list(arms.values()), rows, ["r", "r", "r"]))
    clean = {v: [_clean(r["seeds"][k][v]) for k in seeds] for v in arms}
    blurred = {v: [_per_seed_mean(r["seeds"][k][v]) for k in seeds] for v in arms}
    change = {v: [b - c for b, c in zip(blurred[v], clean[v])] for v in arms}
    robust = difference_interval(change["li-blur"], change["baseline"])
    s.verdicts.append(("none + li-blur loses less accuracy than none when the background is blurred (change of "
                       "the mean over sigma > 0 from its own sigma 0 accuracy)", verdict(robust)))
    raw = difference_interval(blurred["li-blur"], blurred["baseline"])
    s.blocks.append(("table", ["", "none", "none + li-blur", "(none + li-blur) − none [95% CI]"],
                     [["unblurred accuracy (sigma 0)", _mean_std(clean["baseline"], 100),
                       _mean_std(clean["li-blur"], 100),
                       _interval(difference_interval(clean["li-blur"], clean["baseline"]), 100)],
                      ["mean accuracy over sigma > 0", _mean_std(blurred["baseline"], 100),
                       _mean_std(blurred["li-blur"], 100), _interval(raw, 100)],
                      ["change from its own unblurred accuracy (the verdict)", _mean_std(change["baseline"], 100),
                       _mean_std(change["li-blur"], 100), _interval(robust, 100)]],
                     ["l", "r", "r", "r"]))
    s.blocks.append(("p", "Top-1 accuracy (%), mean ± std over seeds, Welch's 95% interval over seeds. The verdict "
                          "compares the changes (higher: more robust), not the raw accuracies under blur: the claim "
                          "is about robustness to the blurred background, and a model that is less accurate to "
                          "begin with would otherwise fail it for that reason alone."))
    path = plot_seed_curves(out / FIGURES / "figure10.png",
                            {label: [r["seeds"][k][v] for k in seeds] for v, label in arms.items()},
                            "background blur sigma (pixels)", "top-1 accuracy (%)",
                            "Accuracy with the background blurred (synthetic)", 100)
    s.numbers = {"unblurred_accuracy": clean, "mean_blurred_accuracy": blurred, "change": change,
                 "change_difference": robust._asdict(), "blurred_difference": raw._asdict()}
    s.blocks.append(("img", "accuracy with a blurred background", str(path.relative_to(out))))
    runs = _runs(out, "synthetic").get("none", []) + _runs(out, "synthetic", "li-blur").get("none", [])
    s.measured_on(runs, read_tuning(runs_dir(out, "synthetic")))
    s.finish(f"{r['n_images']} synthetic test images with boxes, background = outside the box. The augmented "
             f"models are trained from scratch with Algorithm 2 at the same budget as the normal ones (the paper "
             f"fine-tunes a trained ResNet-50 for 30 epochs). Runs: " + _run_setting(runs, state))
    return s


def _clean(curve) -> float:
    """The accuracy at sigma 0 of a ``[(sigma, accuracy)]`` curve (NaN when not measured)."""
    return next((float(y) for x, y in curve if x == 0 and _finite(y)), math.nan)


# ------------------------------------------------------------------------------ the report
@dataclass(frozen=True)
class StoredPlan:
    """The plan's decisions the report follows (``reproduce.json``'s ``plan``): Table 1's datasets,
    Table 2's dataset (and whether it has its own runs), Figure 7's dataset, Table 3's box sets."""
    accuracy: tuple
    ablation: Optional[str]
    separate_ablation: bool
    gsnr: Optional[str]
    table3_box_sets: tuple

    @classmethod
    def read(cls, out: Path, state: dict) -> "StoredPlan":
        """The stored plan, or (a run written before plans were stored) one derived from the step files."""
        if "plan" in state:
            p = state["plan"]
            return cls(tuple(p["accuracy"]), p["ablation"], bool(p["separate_ablation"]), p["gsnr"],
                       tuple(p["table3_box_sets"]))
        trained = {d: rec for d in ACCURACY_DATASETS if (rec := read_step(out, f"train-{d}"))}
        if state.get("preset") != "quick" and len(trained) > 1:
            trained.pop("synthetic", None)   # synthetic runs only serve the box experiments
        separate = next((d for d in ACCURACY_DATASETS if read_step(out, f"train-{d}-ablation")), None)
        ablation = separate or next((d for d in trained if "norm" in trained[d]["settings"]["variants"]), None)
        box_sets = sorted((p.stem.split("-", 1)[1] for p in (out / STEPS).glob("saliency-*.json")),
                          key=lambda b: (b != "synthetic", b))
        return cls(tuple(trained), ablation, separate is not None, figure7_dataset(list(trained)), tuple(box_sets))


def sections(out: Path, state: dict) -> list[Section]:
    """The report's sections from the stored steps of ``out`` (``state``: its reproduce.json),
    following the stored plan; an experiment whose step has not run yet is left out."""
    plan = StoredPlan.read(out, state)
    datasets = [d for d in plan.accuracy if read_step(out, f"train-{d}")]
    table2_step = f"train-{plan.ablation}-ablation" if plan.separate_ablation else f"train-{plan.ablation}"
    result = [table1(out, state, datasets)] if datasets else []
    if plan.ablation and (rec := read_step(out, table2_step)) and "norm" in rec["settings"]["variants"]:
        result.append(table2(out, state, plan.ablation, separate=plan.separate_ablation))
    for part in (table3(out, state, plan.table3_box_sets), sanity(out, state)):
        if part is not None:
            result.append(part)
    result += figure5_6(out, state)
    if plan.gsnr in datasets and (s := figure7(out, state, plan.gsnr)) is not None:
        result.append(s)
    if (s := figure10(out, state)) is not None:
        result.append(s)
    return result


def write_report(out) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``results.json`` and ``verdicts.csv`` in ``out``."""
    out = Path(out)
    state = read_state(out)
    parts = sections(out, state)
    m = state.get("machine", {})
    machine = f"{m.get('cpu_count', '?')} CPU cores ({m.get('cpu', '?')})" \
        + (f", GPU {m['gpu']}" if m.get("gpu") else "") \
        + f", Python {m.get('python', '?')}, torch {m.get('torch', '?')}"
    total = sum(v.get("wall_seconds", 0.0) for v in state.get("steps", {}).values())
    blocks: list[tuple] = [("h1", f"Reproducing Gradient Mask: preset {state.get('preset', '?')}"),
                           ("p", f"Command: `{state.get('command', '?')}`"),
                           ("p", f"Preset: {state.get('summary', '?')}. Device: {state.get('device', '?')}; "
                                 f"machine: {machine}; seeds: {state.get('seeds', '?')}; measured wall time "
                                 f"{fmt_duration(total)} (of the steps run by the last invocations)."),
                           ("p", "Each verdict is computed from the numbers: **holds** when the 95% confidence "
                                 "interval of the tested difference lies entirely on the paper's side, **does not "
                                 "hold** when it lies entirely on the other side, **not established at this scale** "
                                 "otherwise. Accuracy comparisons use Welch's t over seeds.")]
    rows = [[p.claim.title, p.claim.claim, p.verdict, "; ".join(f"{what}: {v}" for what, v in p.verdicts), p.budget,
             "; ".join(p.warnings) or "—"] for p in parts]
    blocks.append(("p", NAMES_NOTE))
    blocks.append(("h2", "Summary"))
    blocks.append(("table", ["paper", "claim", "verdict", "tests", "budget", "warnings"], rows,
                   ["l", "l", "l", "l", "l", "l"]))
    if state.get("skipped"):
        blocks.append(("p", "Not run: " + "; ".join(f"{what} ({why})" for what, why in state["skipped"]) + "."))
    for p in parts:
        blocks += p.blocks
    md, page = render_markdown(blocks), render_html(blocks, out)
    paths = {"markdown": out / "report.md", "html": out / "report.html", "json": out / "results.json",
             "csv": out / "verdicts.csv"}
    results = {"preset": state.get("preset"), "machine": m, "sections": {
        p.claim.key: {"title": p.claim.title, "verdict": p.verdict, "tests": p.verdicts, "budget": p.budget,
                      "warnings": p.warnings, "numbers": p.numbers}
        for p in parts}}
    for key, text in (("markdown", md), ("html", page), ("json", json.dumps(results, indent=1, default=str) + "\n")):
        write_atomic(paths[key], text)
    write_csv(paths["csv"], ["section", "test", "verdict", "budget"],
              ([p.claim.key, what, v, p.budget] for p in parts for what, v in p.verdicts))
    return paths


__all__ = ["SANITY_RHO", "SLOWDOWN", "plot_seed_curves", "sections", "write_report"]
