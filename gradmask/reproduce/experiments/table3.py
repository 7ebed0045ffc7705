"""Table 3: box IoU of LI-Map, Grad-CAM and Grad-CAM++ (``saliency-<box set>`` steps)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from ...compare import read_tuning
from ...saliency.evaluate import evaluate_localization, save_figure_grid
from ...train import load_checkpoint
from ...util.durations import format_duration
from ...util.reporting import evaluation_warnings
from .. import paper
from ..presets import TRAINED_BOX_SETS, Plan
from ..runs import FIGURES, box_data, run_path, runs_dir
from ..sections import METHOD_NAMES, Section, finished_runs, interval_text, mean_std, paper_value, run_setting
from ..store import Step, read_step
from ..verdict import mean_interval, verdict
from .base import Experiment, evaluation_settings


@dataclass(frozen=True)
class ModelScores:
    """One model's box IoUs: ``methods`` (method -> its summary: ``mean_iou``, ...), ``ious`` (method ->
    the IoU of each evaluated image), ``index`` (the evaluated images), the model's ``accuracy`` on
    the box images, ``n_evaluated``, ``evaluated_labels`` (None in results stored before them)."""
    methods: dict
    ious: dict
    index: list
    accuracy: float
    n_evaluated: int
    evaluated_labels: Optional[list] = None

    def mean_iou(self, method: str) -> float:
        return self.methods[method]["mean_iou"]


@dataclass(frozen=True)
class SaliencyResult:
    """A ``saliency-<box set>`` step: ``seeds[seed][variant]`` the :class:`ModelScores` of each model."""
    box_set: str
    n_images: int
    num_classes: Optional[int]
    seeds: dict
    figure: Optional[str]

    @classmethod
    def from_json(cls, d: dict) -> "SaliencyResult":
        return cls(d["box_set"], d["n_images"], d.get("num_classes"),
                   {k: {v: ModelScores(**m) for v, m in per.items()} for k, per in d["seeds"].items()},
                   d.get("figure"))


def run(plan: Plan, out, box_set: str = "synthetic", progress: bool = False) -> SaliencyResult:
    """Table 3: LI-Map, Grad-CAM, Grad-CAM++ box IoU on ``box_set`` for each seed's ``lateral``
    (and ``none``) model; per-image IoUs kept for paired comparisons. Synthetic and cifar10-placed
    boxes use their own runs; VOC 2007 / ImageNet boxes the ImageNet runs (VOC: the predicted class is
    explained and misclassified images are kept, as VOC labels are not ImageNet classes)."""

    ev, device = plan.preset.evaluation, torch.device(plan.device)
    dataset = box_set if box_set in TRAINED_BOX_SETS else "imagenet"
    data = box_data(box_set, plan, ev.saliency_images, run_path(out, dataset, "lateral", 0))
    voc = box_set == "voc2007"
    seeds, figure = {}, None
    for seed in range(plan.seeds):
        seeds[str(seed)] = {}
        for variant in ("lateral", "none"):
            model, _ = load_checkpoint(run_path(out, dataset, variant, seed), map_location=device)
            r = evaluate_localization(model, data.images, data.labels, data.boxes, correct_only=not voc,
                                      targets="predicted" if voc else "label", return_maps=True,
                                      progress=progress)
            if seed == 0 and variant == "lateral" and r["index"]:
                shown = r["index"][:6]
                figure = save_figure_grid(Path(out) / FIGURES / f"table3-{box_set}.png", data.images[shown],
                                          [data.boxes[i] for i in shown],
                                          {m: maps[: len(shown)] for m, maps in r["maps"].items()}, n=len(shown),
                                          titles=[data.classes[int(data.labels[i])] for i in shown])
            evaluated = data.labels[r["index"]].tolist() if r["index"] else []
            seeds[str(seed)][variant] = ModelScores(r["methods"], r["ious"], r["index"], r["accuracy"],
                                                    r["n_evaluated"], [int(v) for v in evaluated])
    return SaliencyResult(box_set, int(data.images.shape[0]), len(data.classes), seeds,
                          str(figure.relative_to(out)) if figure else None)


def section(out: Path, state: dict, box_sets: Iterable[str] = ("synthetic",)) -> Optional[Section]:
    """Table 3 from the stored ``saliency-<box set>`` steps of ``box_sets`` (those measured)."""
    s = Section(paper.TABLE3)
    settings = []
    for box_set in box_sets:
        rec = read_step(out, f"saliency-{box_set}")
        if rec is None:
            continue
        r = SaliencyResult.from_json(rec["result"])
        paper_row = paper.TABLE3.numbers.get("imagenet" if box_set == "imagenet-boxes" else box_set, {})
        rows = []
        for m in ("gradcam", "gradcam++", "limap"):
            per_seed = {v: [r.seeds[k][v].mean_iou(m) for k in r.seeds]
                        for v in ("lateral", "none")}
            rows.append([METHOD_NAMES[m], paper_value(paper_row.get(m)), mean_std(per_seed["lateral"], 1, 3),
                         mean_std(per_seed["none"], 1, 3)])
        tests = {}
        for other in ("gradcam", "gradcam++"):
            diffs = []
            for k in r.seeds:
                ious = r.seeds[k]["lateral"].ious
                diffs += [a - b for a, b in zip(ious["limap"], ious[other])]
            ci = mean_interval(diffs)
            v = verdict(ci)
            s.verdicts.append((f"{box_set}: LI-Map > {METHOD_NAMES[other]}", v))
            tests[other] = {"difference": ci._asdict(), "n_pairs": len(diffs), "verdict": v}
            rows.append([f"LI-Map − {METHOD_NAMES[other]} (paired, lateral models) [95% CI]",
                         paper_value(paper_row["limap"] - paper_row[other]) if paper_row else "—",
                         interval_text(ci, 1, 3), ""])
        for k in r.seeds:
            for v, m in r.seeds[k].items():
                s.warnings += evaluation_warnings(m.accuracy, r.num_classes, m.evaluated_labels or (),
                                                  what=f"the {v} model of seed {k} on {box_set}")
        s.blocks.append(("p", f"**{box_set}** ({r.n_images} images; evaluated: "
                              f"{', '.join(str(r.seeds[k]['lateral'].n_evaluated) for k in r.seeds)} per "
                              f"seed after the filters)."))
        s.blocks.append(("table", ["method", "paper IoU", "ours: lateral models", "ours: none models"], rows,
                         ["l", "r", "r", "r"]))
        if r.figure:
            s.blocks.append(("img", f"saliency maps on {box_set} (seed 0, lateral model; green: object box, "
                                    f"red: top-15% box)", r.figure))
        s.numbers[box_set] = {"seeds": {k: {v: m.methods for v, m in per.items()} for k, per in r.seeds.items()},
                              "tests": tests, "paper": paper_row}
        settings.append(f"{box_set}: IoU of the box around the top 15% of pixels, images with one object whose "
                        f"box covers at most half the image" + (", correctly classified" if box_set != "voc2007"
                                                                 else ", the predicted class explained") +
                        f"; mean ± std over seeds; paired interval over all (image, seed) pairs; wall time "
                        f"{format_duration(rec.get('wall_seconds'), 'report')}.")
    if not settings:   # no box set measured yet
        return None
    models = {}   # the runs behind each box set that reproduce trains (synthetic's always named)
    for box_set in ("synthetic",) + tuple(b for b in box_sets if b in TRAINED_BOX_SETS and b != "synthetic"):
        runs = finished_runs(out, box_set)
        if box_set == "synthetic" or runs:
            models[box_set] = runs.get("lateral", []) + runs.get("none", [])
    budgets = []
    for box_set, runs in models.items():
        s.measured_on(runs, read_tuning(runs_dir(out, box_set)))
        budgets.append(f"{box_set}: {s.budget}")
        settings.append(("Models" if len(models) == 1 else f"{box_set} models") + ": " + run_setting(runs, state))
    if len(budgets) > 1:
        s.budget = "; ".join(budgets)
    s.finish(" ".join(settings))
    return s


class Table3(Experiment):
    def steps(self, plan, out, progress):
        return [Step(f"saliency-{box_set}", f"box IoU of the saliency maps on {box_set} (Table 3)",
                     dict(evaluation_settings(plan), box_set=box_set), lambda b=box_set: run(plan, out, b, progress))
                for box_set in ("synthetic",) + tuple(plan.box_sets)]

    def sections(self, out, state, plan):
        return [s] if (s := section(out, state, plan.table3_box_sets)) is not None else []


EXPERIMENT = Table3()
