"""Figure 10: accuracy with the background blurred, models trained with and without Algorithm 2's
LI background blur (the ``blur`` step)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ...compare import read_tuning
from ...data import PLACED
from ...saliency.blur_eval import blurred_background_accuracy
from ...train import load_checkpoint
from .. import paper
from ..presets import TRAINED_BOX_SETS, Plan
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


def step_name(box_set: str) -> str:
    """The measurement step of ``box_set``: ``blur`` (synthetic, as before box sets), else ``blur-<box set>``."""
    return "blur" if box_set == "synthetic" else f"blur-{box_set}"


def run(plan: Plan, out, progress: bool = False, box_set: str = "synthetic") -> BlurResult:
    """Accuracy with the background outside the boxes blurred, for each seed's ``box_set`` model
    (a box set reproduce trains on: synthetic, cifar10-placed) trained without (``none``) and with
    the LI background-blur augmentation (``li-blur``)."""

    ev, device = plan.preset.evaluation, torch.device(plan.device)
    data = box_data(box_set, plan, ev.blur_images, run_path(out, box_set, "none", 0))
    seeds = {}
    for seed in range(plan.seeds):
        seeds[str(seed)] = {}
        for label, augment in (("baseline", None), ("li-blur", "li-blur")):
            model, _ = load_checkpoint(run_path(out, box_set, "none", seed, augment), map_location=device)
            curve = blurred_background_accuracy(model, data.images, data.labels, data.boxes, ev.blur_sigmas,
                                                progress=progress)
            seeds[str(seed)][label] = [list(p) for p in curve]
    return BlurResult(int(data.images.shape[0]), list(ev.blur_sigmas), seeds)


#: what the images of a box set are, for the section's setting
_IMAGES = {"synthetic": "synthetic test images with boxes",
           PLACED: "CIFAR-10 test objects placed on backgrounds of other CIFAR-10 test images (box: the pasted photo)"}


def section(out: Path, state: dict, box_sets=("synthetic",)) -> Optional[Section]:
    """Figure 10, judged on robustness: per seed the drop of the mean accuracy over sigmas > 0
    from the model's own unblurred accuracy (sigma 0), so a model that is merely less accurate does
    not count as less robust; the raw accuracies are shown beside it. One part per measured box set
    of ``box_sets`` (those reproduce trains on); synthetic's numbers at the top level of ``numbers``,
    the others' under their name."""
    measured = [(b, rec) for b in box_sets if b in TRAINED_BOX_SETS and (rec := read_step(out, step_name(b)))]
    if not measured:
        return None
    s = Section(paper.FIGURE10)
    several = len(measured) > 1 or measured[0][0] != "synthetic"   # name the box sets (synthetic alone: unnamed)
    parts, budgets = [], []
    for k, (box_set, rec) in enumerate(measured):
        r = BlurResult(**rec["result"])
        numbers = _part(s, out, r, box_set, several, first=k == 0)
        if box_set == "synthetic":
            s.numbers.update(numbers)
        else:
            s.numbers[box_set] = numbers
        runs = finished_runs(out, box_set).get("none", []) + finished_runs(out, box_set, "li-blur").get("none", [])
        s.measured_on(runs, read_tuning(runs_dir(out, box_set)))
        budgets.append(f"{box_set}: {s.budget}")
        images = (f"{box_set}: " if several else "") + f"{r.n_images} {_IMAGES.get(box_set, box_set)}, " \
            "background = outside the box."
        parts.append((images, "Runs: " + run_setting(runs, state)))
    augmented = ("The augmented models are trained from scratch with Algorithm 2 at the same budget as the normal "
                 "ones (the paper fine-tunes a trained ResNet-50 for 30 epochs).")
    if several:
        s.budget = "; ".join(budgets)
        s.finish(" ".join([augmented] + [f"{images} {runs}" for images, runs in parts]))
    else:
        s.finish(f"{parts[0][0]} {augmented} {parts[0][1]}")
    return s


def _part(s: Section, out: Path, r: BlurResult, box_set: str, several: bool, first: bool) -> dict:
    """The blocks and the verdict of one box set (``several``: named in them; ``first``: with the note
    on the numbers); returns its numbers."""
    arms = {"baseline": "none", "li-blur": "none + li-blur"}
    if several:
        s.blocks.append(("p", f"**{box_set}** ({r.n_images} images)."))
    rows = []
    for i, sigma in enumerate(r.sigmas):
        rows.append([f"{sigma:g}"] + [mean_std([c[i][1] for c in r.curves(v)], 100) for v in arms])
    s.blocks.append(("table", ["background blur sigma"] + list(arms.values()), rows, ["r", "r", "r"]))
    clean = {v: [clean_accuracy(c) for c in r.curves(v)] for v in arms}
    blurred = {v: [mean_beyond_zero(c) for c in r.curves(v)] for v in arms}
    change = {v: [b - c for b, c in zip(blurred[v], clean[v])] for v in arms}
    robust = difference_interval(change["li-blur"], change["baseline"])
    s.verdicts.append(((f"{box_set}: " if several else "") + "none + li-blur loses less accuracy than none when the "
                       "background is blurred (change of the mean over sigma > 0 from its own sigma 0 accuracy)",
                       verdict(robust)))
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
    if first:
        s.blocks.append(("p", "Top-1 accuracy (%), mean ± std over seeds, Welch's 95% interval over seeds. The "
                              "verdict compares the changes (higher: more robust), not the raw accuracies under "
                              "blur: the claim is about robustness to the blurred background, and a model that is "
                              "less accurate to begin with would otherwise fail it for that reason alone."))
    png = "figure10.png" if box_set == "synthetic" else f"figure10-{box_set}.png"
    path = plot_seed_curves(out / FIGURES / png, {label: r.curves(v) for v, label in arms.items()},
                            "background blur sigma (pixels)", "top-1 accuracy (%)",
                            f"Accuracy with the background blurred ({box_set})", 100)
    s.blocks.append(("img", "accuracy with a blurred background" + (f" ({box_set})" if several else ""),
                     str(path.relative_to(out))))
    return {"unblurred_accuracy": clean, "mean_blurred_accuracy": blurred, "change": change,
            "change_difference": robust._asdict(), "blurred_difference": raw._asdict()}


def clean_accuracy(curve) -> float:
    """The accuracy at sigma 0 of a ``[(sigma, accuracy)]`` curve (NaN when not measured)."""
    return next((float(y) for x, y in curve if x == 0 and finite(y)), math.nan)


class Figure10(Experiment):
    def steps(self, plan, out, progress):
        boxes = ("synthetic",) + tuple(b for b in plan.box_sets if b in TRAINED_BOX_SETS)
        return [Step(step_name(b), "accuracy with a blurred background (Figure 10)" + (f" on {b}" if b != "synthetic"
                                                                                         else ""),
                     evaluation_settings(plan), lambda b=b: run(plan, out, progress, b)) for b in boxes]

    def sections(self, out, state, plan):
        return [s] if (s := section(out, state, plan.table3_box_sets)) is not None else []


EXPERIMENT = Figure10()
