"""Figures 5 and 6: accuracy after L1 pruning and under FGSM (the ``robustness`` step)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...compare import read_tuning
from ...robustness.evalset import evaluation_loader
from ...robustness.measure import measure
from ...train import TrainConfig, load_checkpoint
from ...util.durations import format_duration
from .. import paper
from ..presets import Plan
from ..runs import run_path, runs_dir
from ..sections import Section, compare_curves, finished_runs, mean_std
from ..store import Step, read_step
from .base import Experiment, evaluation_settings


@dataclass(frozen=True)
class RobustnessResult:
    """The ``robustness`` step on ``n_images`` test images of ``dataset``: per seed the pruning curves
    ``[(sparsity, accuracy)]`` of each variant and scheme, and the FGSM curves (``FGSMCurve.to_dict``)."""
    dataset: str
    source: str
    n_images: int
    sparsities: list
    epsilons_255: list
    seeds: dict

    def pruning(self, variant: str, scheme: str) -> list:
        """The pruning curve of each seed."""
        return [self.seeds[k]["pruning"][variant][scheme] for k in self.seeds]

    def fgsm(self, variant: str) -> list:
        """The FGSM accuracy curve of each seed."""
        return [self.seeds[k]["fgsm"]["curves"][variant] for k in self.seeds]

    def n_joint(self) -> dict:
        """Per seed the images both models classify correctly (the ones attacked)."""
        return {k: self.seeds[k]["fgsm"]["n_joint"] for k in self.seeds}


def run(plan: Plan, out, progress: bool = False) -> RobustnessResult:
    """Pruning (global and per-layer L1) and FGSM of each seed's ``none`` and ``lateral`` models
    on ``robustness_images`` test images of the robustness dataset (a fixed random subset)."""
    ev, dataset, device = plan.preset.evaluation, plan.robustness, torch.device(plan.device)
    config = TrainConfig.from_dict(plan.training(dataset))
    loader, n, source = evaluation_loader(dataset, plan.data.get(dataset), "test", ev.robustness_images, config,
                                          256, device)
    seeds = {}
    for seed in range(plan.seeds):
        models = {v: load_checkpoint(run_path(out, dataset, v, seed), map_location=device)[0]
                  for v in ("none", "lateral")}
        measured = measure(models, loader, ev.sparsities, ev.epsilons, ("global", "layer"), subset="joint",
                           progress=progress)
        pruning = {v: {scheme: [list(p) for p in curve] for scheme, curve in curves.items()}
                   for v, curves in measured.pruning.items()}
        seeds[str(seed)] = {"pruning": pruning, "fgsm": measured.fgsm.to_dict()}
    return RobustnessResult(dataset, source, n, list(ev.sparsities), list(ev.epsilons), seeds)


def section(out: Path, state: dict) -> list[Section]:
    rec = read_step(out, "robustness")
    if rec is None:
        return []
    r = RobustnessResult(**rec["result"])
    setting = (f"{r.dataset} test images ({r.n_images}, fixed random subset), each seed's none and "
               f"lateral models from Table 1/2's runs; wall time {format_duration(rec.get('wall_seconds'), 'report')}.")
    s5 = Section(paper.FIGURE5)
    s5.blocks.append(("p", "Top-1 accuracy (%) after L1 pruning (`torch.nn.utils.prune`), mean ± std over seeds."))
    rows = []
    for i, sp in enumerate(r.sparsities):
        row = [f"{sp:g}"]
        for scheme in ("global", "layer"):
            for v in ("none", "lateral"):
                row.append(mean_std([c[i][1] for c in r.pruning(v, scheme)], 100))
        rows.append(row)
    s5.blocks.append(("table", ["sparsity", "global: none", "global: lateral", "per layer: none",
                                "per layer: lateral"], rows, ["r", "r", "r", "r", "r"]))
    for scheme in ("global", "layer"):
        means, ci, path = compare_curves(
            s5, out, f"figure5-{scheme}.png",
            {v: (v, r.pruning(v, scheme)) for v in ("none", "lateral")},
            f"{scheme} pruning: lateral > none (mean accuracy over sparsities > 0)",
            "sparsity (fraction of conv/linear weights removed)", f"L1 pruning ({scheme}) on {r.dataset}")
        s5.numbers[scheme] = {"mean_pruned_accuracy": means, "difference": ci._asdict()}
        s5.blocks.append(("img", f"accuracy after {scheme} L1 pruning", str(path.relative_to(out))))
    runs = finished_runs(out, r.dataset)
    s5.measured_on(runs.get("none", []) + runs.get("lateral", []), read_tuning(runs_dir(out, r.dataset)))
    s5.finish(setting)

    s6 = Section(paper.FIGURE6)
    s6.budget, s6.warnings = s5.budget, list(s5.warnings)
    joint = ", ".join(str(n) for n in r.n_joint().values())
    s6.blocks.append(("p", f"Top-1 accuracy (%) under FGSM on the images both models of a seed classify "
                           f"correctly ({joint} per seed), mean ± std over seeds."))
    rows = []
    for i, e in enumerate(r.epsilons_255):
        rows.append([f"{e:g}/255"] + [mean_std([c[i][1] for c in r.fgsm(v)], 100)
                                      for v in ("none", "lateral")])
    s6.blocks.append(("table", ["epsilon", "none", "lateral"], rows, ["r", "r", "r"]))
    means, ci, path = compare_curves(
        s6, out, "figure6.png",
        {v: (v, r.fgsm(v)) for v in ("none", "lateral")},
        "lateral > none (mean accuracy over epsilons > 0)", "epsilon (1/255)", f"FGSM on {r.dataset}")
    s6.numbers = {"mean_attacked_accuracy": means, "difference": ci._asdict(),
                  "n_joint": r.n_joint()}
    s6.blocks.append(("img", "accuracy under FGSM", str(path.relative_to(out))))
    s6.finish(setting)
    return [s5, s6]


class Figures5And6(Experiment):
    def steps(self, plan, out, progress):
        return [Step("robustness", f"pruning and FGSM on {plan.robustness} (Figures 5, 6)",
                     dict(evaluation_settings(plan), dataset=plan.robustness), lambda: run(plan, out, progress))]

    def sections(self, out, state, plan):
        return section(out, state)


EXPERIMENT = Figures5And6()
