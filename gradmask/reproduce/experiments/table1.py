"""Table 1: top-1 accuracy with and without Gradient Mask, read from the training runs
(per dataset, with the per-epoch gap and the earlier small-budget point)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from ...compare import arm_mechanisms, epoch_difference, mechanism_blocks, read_tuning, report_paths, tuning_blocks
from ...util.reporting import ARM_COLORS, figure, save_figure
from .. import paper
from ..runs import FIGURES, runs_dir
from ..sections import (
    Section,
    accuracies,
    budget,
    chance_warnings,
    finished_runs,
    finite,
    interval_text,
    mean_std,
    paper_value,
    run_setting,
)
from ..store import read_step
from ..verdict import difference_interval, verdict
from .base import Experiment

#: the earlier small-budget Table 1 measurement (preset cifar: 4 epochs on 15,000 CIFAR-10 images, not
#: tuned), shown beside the longer runs; read from the published results of a source checkout
SMALL_BUDGET = Path(__file__).resolve().parents[3] / "docs" / "results" / "2026-11-23-cifar-2"


def epoch_gap(none: list, lateral: list) -> list[tuple[int, object]]:
    """``[(epoch, Welch interval of lateral - none test accuracy)]`` over the seeds, for every epoch
    recorded by both arms' runs (from ``metrics.jsonl``)."""
    return epoch_difference(lateral, none)


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


def _arm_blocks(dataset: str, runs: dict, others: list, s: Section) -> list[tuple]:
    """The arms beyond none and lateral (e.g. ``lateral@sigma=1``, ``norm``): each against none and,
    for an arm of the lateral mask with other settings, against lateral; verdicts computed like
    Table 1's, shown here and stored in results.json, outside the paper claim's headline."""
    rows, stored = [], {}
    pairs = [(v, "none") for v in others if "none" in runs]
    pairs += [(v, "lateral") for v in others if v.startswith("lateral@") and "lateral" in runs]
    for arm, against in pairs:
        a, b = accuracies(runs[arm]), accuracies(runs[against])
        ci = difference_interval(a, b)
        v = verdict(ci)
        rows.append([dataset, f"{arm} > {against}", mean_std(a, 100), mean_std(b, 100), interval_text(ci, 100), v])
        stored[f"{arm} vs {against}"] = {"difference": ci._asdict(), "verdict": v, arm: a, against: b}
    s.numbers[dataset]["arms"] = stored
    return [("p", f"**Other arms ({dataset}).** Each against none and, for the lateral mask with other "
                  "settings, against the paper's lateral (top-1 %, Welch's 95% interval; verdicts computed as above, "
                  "not part of Table 1's headline, which is the paper's claim lateral > none)."),
            ("table", ["data", "claim", "arm", "against", "arm − against [95% CI]", "verdict"], rows,
             ["l", "l", "r", "r", "r", "l"])]


def plot_epoch_gap(path: Path, gaps: dict, small: Optional[dict]) -> Path:
    """Per dataset the difference masked - normal per epoch (points) with its 95% interval (band);
    the small-budget point as a separate marker."""
    fig = figure(6.4, 4.0)
    ax = fig.subplots()
    color = ARM_COLORS["lateral"]  # lateral's gap to none, in lateral's colour; datasets by line style
    for i, (dataset, gap) in enumerate(gaps.items()):
        xs = [e for e, _ in gap]
        ax.plot(xs, [100 * ci.diff for _, ci in gap], color=color, linestyle=("-", "--", ":")[i % 3],
                marker="os^"[i % 3], label=f"{dataset}: lateral − none")
        lows = [100 * ci.low if finite(ci.low) else np.nan for _, ci in gap]
        highs = [100 * ci.high if finite(ci.high) else np.nan for _, ci in gap]
        ax.fill_between(xs, lows, highs, color=color, alpha=0.15, label="95% interval over seeds")
    if small is not None:
        d = small["difference"]
        ax.errorbar([small["epochs"]], [100 * d.diff], yerr=[[100 * (d.diff - d.low)], [100 * (d.high - d.diff)]],
                    fmt="s", color="k", capsize=4,
                    label=f"earlier: {small['epochs']} epochs on {small['images']:,} images "
                          f"({small['source'].rsplit('/', 1)[-1]})")
    ax.axhline(0.0, color="grey", linewidth=1, linestyle="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 difference (points)")
    ax.set_title("Test accuracy, lateral − none, per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def section(out: Path, state: dict, datasets: list[str]) -> Section:
    """Table 1 on ``datasets`` (their Table 1 runs, per-epoch gap, tuning)."""
    s = Section(paper.TABLE1)
    rows, settings, figures, budgets, extra = [], [], [], [], []
    gaps = {}
    for dataset in datasets:
        runs = finished_runs(out, dataset)
        tuning = read_tuning(runs_dir(out, dataset))
        arms = runs.get("none", []) + runs.get("lateral", [])
        none, lateral = accuracies(runs.get("none", [])), accuracies(runs.get("lateral", []))
        ci = difference_interval(lateral, none)
        p_none = paper.TABLE1.numbers["none"].get(dataset)
        p_mask = paper.TABLE1.numbers["lateral"].get(dataset)
        v = verdict(ci)
        b = budget(arms, tuning)
        budgets.append(f"{dataset}: {b}")
        s.warnings += chance_warnings(arms)
        s.verdicts.append((f"{dataset}: lateral > none ({b})", v))
        rows.append([dataset, paper_value(p_none), paper_value(p_mask), mean_std(none, 100), mean_std(lateral, 100),
                     interval_text(ci, 100), v])
        gap = epoch_gap(runs.get("none", []), runs.get("lateral", []))
        s.numbers[dataset] = {"none": none, "lateral": lateral, "difference": ci._asdict(),
                              "paper": {"none": p_none, "lateral": p_mask}, "verdict": v, "budget": b,
                              "tuning": tuning, "difference_per_epoch": [[e, g._asdict()] for e, g in gap]}
        settings.append(run_setting(arms, state))
        if tuning is not None:
            extra.append(("p", f"**Tuning ({dataset}).**"))
            extra += tuning_blocks(tuning, arms)[1:]
        if gap:
            gaps[dataset] = gap
        # Table 1's arms (reproduce.json's plan; stored before arms existed: none and lateral); a folder
        # that Table 2 shares (norm, pixel at this scale) adds no arms to Table 1
        table1_arms = [v for v in (state.get("plan") or {}).get("arms") or ("none", "lateral") if v in runs]
        others = [v for v in table1_arms if v not in ("none", "lateral")]
        if others:
            extra += _arm_blocks(dataset, runs, others, s)
        arms_mech, changes = arm_mechanisms({v: runs[v] for v in table1_arms}, "none")
        extra += [("p", f"**{args[0]} ({dataset}).**") if kind == "h2" else (kind, *args)
                  for kind, *args in mechanism_blocks(arms_mech, changes, "none")]
        s.numbers[dataset]["mechanism"] = [a.to_json() for a in arms_mech]
        s.numbers[dataset]["trends"] = {v: [c.to_json() for c in cs] for v, cs in changes.items()}
        accuracy_png = report_paths(runs_dir(out, dataset))["accuracy"]
        if accuracy_png.is_file():
            figures.append(("img", f"test accuracy per epoch on {dataset}", str(accuracy_png.relative_to(out))))
    s.blocks.append(("table", ["data", "paper none", "paper lateral", "ours none", "ours lateral",
                               "lateral − none [95% CI]", "verdict"], rows, ["l", "r", "r", "r", "r", "r", "l"]))
    s.blocks.append(("p", "Top-1 accuracy (%), mean ± std over seeds; the interval is Welch's t over seeds."))
    s.blocks += extra
    small = small_budget_point() if "cifar10" in datasets else None
    if gaps:
        rows = [[dataset, str(e), interval_text(ci, 100)] for dataset, gap in gaps.items() for e, ci in gap]
        if small is not None:
            rows.append([f"cifar10, earlier: {small['images']:,} images, lr {small['lr']} not tuned "
                         f"({small['source']})", str(small["epochs"]), interval_text(small["difference"], 100)])
        s.blocks.append(("p", "**Per epoch.** The difference lateral − none of the test accuracy after each "
                              "epoch (points, Welch's 95% interval over seeds), from the final runs' "
                              "metrics.jsonl. Whether it changes over training is said only by the computed "
                              "trend tests of this section (where the runs record enough)."
                              + (" The earlier small-budget measurement stands beside it as one point."
                                 if small is not None else "")))
        s.blocks.append(("table", ["data", "epoch", "lateral − none [95% CI]"], rows, ["l", "r", "r"]))
        path = plot_epoch_gap(out / FIGURES / "table1-gap-per-epoch.png", gaps, small)
        s.blocks.append(("img", "lateral − none per epoch with its 95% interval", str(path.relative_to(out))))
        if small is not None:
            s.numbers["small_budget"] = {**small, "difference": small["difference"]._asdict()}
    s.blocks += figures
    s.budget = "; ".join(budgets) or "no dataset"
    s.finish(" ".join(settings) or "no dataset")
    return s


class Table1(Experiment):
    def sections(self, out, state, plan):
        datasets = [d for d in plan.accuracy if read_step(out, f"train-{d}")]
        return [section(out, state, datasets)] if datasets else []


EXPERIMENT = Table1()
