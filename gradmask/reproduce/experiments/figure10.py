"""Figure 10: accuracy with the background blurred, models trained with and without Algorithm 2's
LI background blur (the ``blur`` step)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ...compare.tuning import read_tuning
from ...train import load_checkpoint
from .. import paper
from ..presets import Plan
from ..runs import FIGURES, box_data, run_path, runs_dir
from ..sections import (
    Section,
    finished_runs,
    finite,
    interval_text,
    mean_beyond_zero,
    mean_std,
    plot_seed_curves,
    run_setting,
)
from ..store import Step, read_step
from ..verdict import difference_interval, verdict
from .base import Experiment, evaluation_settings


@dataclass(frozen=True)
class BlurResult:
    """The ``blur`` step: ``seeds[seed][arm]`` the ``[(sigma, accuracy)]`` curve of each arm
    (``baseline``: trained without, ``li-blur``: with the LI background blur) on ``n_images``."""
    n_images: int
    sigmas: list
    seeds: dict

    def curves(self, arm: str) -> list:
        return [self.seeds[k][arm] for k in self.seeds]


def run(plan: Plan, out, progress: bool = False) -> BlurResult:
    """Accuracy with the background outside the boxes blurred, for each seed's synthetic model
    trained without (``none``) and with the LI background-blur augmentation (``li-blur``)."""
    from ...saliency.blur_eval import blurred_background_accuracy

    ev, device = plan.preset.evaluation, torch.device(plan.device)
    data = box_data("synthetic", plan, ev.blur_images, run_path(out, "synthetic", "none", 0))
    seeds = {}
    for seed in range(plan.seeds):
        seeds[str(seed)] = {}
        for label, augment in (("baseline", None), ("li-blur", "li-blur")):
            model, _ = load_checkpoint(run_path(out, "synthetic", "none", seed, augment), map_location=device)
            curve = blurred_background_accuracy(model, data.images, data.labels, data.boxes, ev.blur_sigmas,
                                                progress=progress)
            seeds[str(seed)][label] = [list(p) for p in curve]
    return BlurResult(int(data.images.shape[0]), list(ev.blur_sigmas), seeds)


def section(out: Path, state: dict) -> Optional[Section]:
    """Figure 10, judged on robustness: per seed the drop of the mean accuracy over sigmas > 0
    from the model's own unblurred accuracy (sigma 0), so a model that is merely less accurate does
    not count as less robust; the raw accuracies are shown beside it."""
    rec = read_step(out, "blur")
    if rec is None:
        return None
    r = BlurResult(**rec["result"])
    s = Section(paper.FIGURE10)
    arms = {"baseline": "none", "li-blur": "none + li-blur"}
    rows = []
    for i, sigma in enumerate(r.sigmas):
        rows.append([f"{sigma:g}"] + [mean_std([c[i][1] for c in r.curves(v)], 100) for v in arms])
    s.blocks.append(("table", ["background blur sigma"] + list(arms.values()), rows, ["r", "r", "r"]))
    clean = {v: [clean_accuracy(c) for c in r.curves(v)] for v in arms}
    blurred = {v: [mean_beyond_zero(c) for c in r.curves(v)] for v in arms}
    change = {v: [b - c for b, c in zip(blurred[v], clean[v])] for v in arms}
    robust = difference_interval(change["li-blur"], change["baseline"])
    s.verdicts.append(("none + li-blur loses less accuracy than none when the background is blurred (change of "
                       "the mean over sigma > 0 from its own sigma 0 accuracy)", verdict(robust)))
    raw = difference_interval(blurred["li-blur"], blurred["baseline"])
    s.blocks.append(("table", ["", "none", "none + li-blur", "(none + li-blur) − none [95% CI]"],
                     [["unblurred accuracy (sigma 0)", mean_std(clean["baseline"], 100),
                       mean_std(clean["li-blur"], 100),
                       interval_text(difference_interval(clean["li-blur"], clean["baseline"]), 100)],
                      ["mean accuracy over sigma > 0", mean_std(blurred["baseline"], 100),
                       mean_std(blurred["li-blur"], 100), interval_text(raw, 100)],
                      ["change from its own unblurred accuracy (the verdict)", mean_std(change["baseline"], 100),
                       mean_std(change["li-blur"], 100), interval_text(robust, 100)]],
                     ["l", "r", "r", "r"]))
    s.blocks.append(("p", "Top-1 accuracy (%), mean ± std over seeds, Welch's 95% interval over seeds. The verdict "
                          "compares the changes (higher: more robust), not the raw accuracies under blur: the claim "
                          "is about robustness to the blurred background, and a model that is less accurate to "
                          "begin with would otherwise fail it for that reason alone."))
    path = plot_seed_curves(out / FIGURES / "figure10.png",
                            {label: r.curves(v) for v, label in arms.items()},
                            "background blur sigma (pixels)", "top-1 accuracy (%)",
                            "Accuracy with the background blurred (synthetic)", 100)
    s.numbers = {"unblurred_accuracy": clean, "mean_blurred_accuracy": blurred, "change": change,
                 "change_difference": robust._asdict(), "blurred_difference": raw._asdict()}
    s.blocks.append(("img", "accuracy with a blurred background", str(path.relative_to(out))))
    runs = finished_runs(out, "synthetic").get("none", []) + finished_runs(out, "synthetic", "li-blur").get("none", [])
    s.measured_on(runs, read_tuning(runs_dir(out, "synthetic")))
    s.finish(f"{r.n_images} synthetic test images with boxes, background = outside the box. The augmented "
             f"models are trained from scratch with Algorithm 2 at the same budget as the normal ones (the paper "
             f"fine-tunes a trained ResNet-50 for 30 epochs). Runs: " + run_setting(runs, state))
    return s


def clean_accuracy(curve) -> float:
    """The accuracy at sigma 0 of a ``[(sigma, accuracy)]`` curve (NaN when not measured)."""
    return next((float(y) for x, y in curve if x == 0 and finite(y)), math.nan)


class Figure10(Experiment):
    def steps(self, plan, out, progress):
        return [Step("blur", "accuracy with a blurred background (Figure 10)", evaluation_settings(plan),
                     lambda: run(plan, out, progress))]

    def sections(self, out, state, plan):
        return [s] if (s := section(out, state)) is not None else []


EXPERIMENT = Figure10()
