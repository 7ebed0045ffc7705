"""Figure 7: GSNR during training, read from the training runs' probes."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from ...compare import read_tuning
from ...robustness import plot_gsnr, read_gsnr
from .. import paper
from ..runs import FIGURES, runs_dir
from ..sections import Section, finished_runs, finite, interval_text, mean_std, run_setting
from ..store import read_step
from ..verdict import difference_interval, verdict
from .base import Experiment


def section(out: Path, state: dict, dataset: str) -> Optional[Section]:
    runs = finished_runs(out, dataset)
    records = {r.path: read_gsnr(r.path) for v in ("none", "lateral") for r in runs.get(v, [])}
    probed = {v: [r for r in runs.get(v, []) if records[r.path]] for v in ("none", "lateral")}
    if not probed["none"] or not probed["lateral"]:
        return None
    s = Section(paper.FIGURE7)
    per_seed = {v: [float(np.mean([math.log10(g["network"]) for g in records[r.path] if finite(g.get("network"))
                                   and g["network"] > 0])) for r in probed[v]] for v in ("none", "lateral")}
    ci = difference_interval(per_seed["lateral"], per_seed["none"])
    s.verdicts.append(("lateral > none (mean log10 GSNR over epochs)", verdict(ci)))
    s.numbers = {"mean_log10_gsnr": per_seed, "difference": ci._asdict()}
    s.blocks.append(("table", ["", "none", "lateral", "lateral − none [95% CI]"],
                     [["mean log10 GSNR over epochs", mean_std(per_seed["none"], 1, 3),
                       mean_std(per_seed["lateral"], 1, 3), interval_text(ci, 1, 3)]], ["l", "r", "r", "r"]))
    path = plot_gsnr([r.path for r in probed["none"] + probed["lateral"]], out / FIGURES / "figure7.png")
    s.blocks.append(("img", "GSNR during training", str(path.relative_to(out))))
    samples = records[probed["lateral"][0].path][0].get("n_samples")
    s.measured_on(probed["none"] + probed["lateral"], read_tuning(runs_dir(out, dataset)))
    s.finish(f"GSNR (mean^2 / variance of per-sample gradients, mean over the conv weights) on {samples} fixed "
             f"training images after every epoch; lateral runs measure the masked gradients. Runs: "
             + run_setting(probed["none"] + probed["lateral"], state))
    return s


class Figure7(Experiment):
    def sections(self, out, state, plan):
        if not plan.gsnr or not read_step(out, f"train-{plan.gsnr}"):
            return []
        return [s] if (s := section(out, state, plan.gsnr)) is not None else []


EXPERIMENT = Figure7()
