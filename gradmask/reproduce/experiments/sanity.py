"""Appendix A: cascading randomization of LI-Map and Grad-CAM (the ``sanity`` step)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ...compare import read_tuning
from ...saliency import GradCAM, LIMap
from ...saliency.evaluate import default_cam_layer
from ...saliency.sanity import cascading_randomization, plot_sanity, save_sanity_maps
from ...train import load_checkpoint
from ...util.durations import format_duration
from .. import paper
from ..presets import Plan
from ..runs import FIGURES, box_data, run_path, runs_dir
from ..sections import Section, finished_runs, finite, interval_text
from ..store import Step, read_step
from ..verdict import mean_interval, verdict
from .base import Experiment, evaluation_settings

SANITY_RHO = 0.5
"""Appendix A passes when the mean Spearman correlation between the trained model's LI-Map and the
fully randomized model's is below this (95% interval over images entirely below it)."""

@dataclass(frozen=True)
class SanityResult:
    """The ``sanity`` step: ``steps[method]`` the cascading-randomization records (step, group
    randomized, Spearman / SSIM with the trained model's maps, per image too) of LI-Map and Grad-CAM."""
    n_images: int
    gradcam_layer: str
    steps: dict
    figures: list


def run(plan: Plan, out, progress: bool = False) -> SanityResult:
    """Cascading randomization of LI-Map and Grad-CAM on seed 0's ``lateral`` synthetic model."""

    ev, device = plan.preset.evaluation, torch.device(plan.device)
    data = box_data("synthetic", plan, ev.sanity_images, run_path(out, "synthetic", "lateral", 0))
    model, _ = load_checkpoint(run_path(out, "synthetic", "lateral", 0), map_location=device)
    layer = default_cam_layer(model, data.images)
    factories = {"limap": lambda m: LIMap(m), "gradcam": lambda m: GradCAM(m, layer)}
    steps = {}
    for name, factory in factories.items():
        result = cascading_randomization(model, data.images, factory, seed=0, return_maps=name == "limap",
                                         progress=progress)
        if name == "limap":
            save_sanity_maps(Path(out) / FIGURES / "sanity-maps.png", data.images, result, method="LI-Map")
        steps[name] = [{k: v for k, v in s.items() if k != "maps"} for s in result]
    plot_sanity(Path(out) / FIGURES / "sanity.png", steps)
    return SanityResult(int(data.images.shape[0]), layer, steps,
                        [f"{FIGURES}/sanity.png", f"{FIGURES}/sanity-maps.png"])


def section(out: Path, state: dict) -> Optional[Section]:
    rec = read_step(out, "sanity")
    if rec is None:
        return None
    r = SanityResult(**rec["result"])
    s = Section(paper.SANITY)
    steps = r.steps
    rows = []
    for i, st in enumerate(steps["limap"]):
        g = steps["gradcam"][i]
        rows.append([st["step"], st["randomized"], f"{st['spearman']:.3f}", f"{st['ssim']:.3f}",
                     f"{g['spearman']:.3f}", f"{g['ssim']:.3f}"])
    last = steps["limap"][-1]
    rho = [v for v in last["spearman_images"] if finite(v)]
    ci = mean_interval([SANITY_RHO - v for v in rho])
    s.verdicts.append((f"LI-Map correlation after full randomization < {SANITY_RHO}", verdict(ci)))
    mi = mean_interval(rho)
    s.numbers = {"steps": steps, "final_spearman": mi._asdict(), "threshold": SANITY_RHO}
    s.blocks.append(("table", ["step", "randomized (cumulative, top-down)", "LI-Map Spearman", "LI-Map SSIM",
                               "Grad-CAM Spearman", "Grad-CAM SSIM"], rows, ["r", "l", "r", "r", "r", "r"]))
    s.blocks.append(("p", f"After randomizing every block the LI-Map keeps a mean Spearman correlation of "
                          f"{interval_text(mi, 1, 3).lstrip('+')} with the trained model's map (a map that ignored "
                          f"the weights would keep 1)."))
    for f in r.figures:
        if (out / f).is_file():
            s.blocks.append(("img", "cascading randomization", f))
    s.measured_on([r for r in finished_runs(out, "synthetic").get("lateral", []) if r.seed == 0],
                      read_tuning(runs_dir(out, "synthetic")))
    s.finish(f"seed 0's lateral synthetic model, {r.n_images} synthetic test images, groups re-initialised "
             f"top-down per block, Grad-CAM on {r.gradcam_layer}; wall time "
             f"{format_duration(rec.get('wall_seconds'), 'report')}.")
    return s


class Sanity(Experiment):
    def steps(self, plan, out, progress):
        return [Step("sanity", "cascading randomization (Appendix A)", evaluation_settings(plan),
                     lambda: run(plan, out, progress))]

    def sections(self, out, state, plan):
        return [s] if (s := section(out, state)) is not None else []


EXPERIMENT = Sanity()
