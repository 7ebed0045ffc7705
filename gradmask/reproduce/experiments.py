"""The measurements of ``gradmask reproduce``: each reads trained run directories and returns a
JSON-able result (the runner stores it; the report reads only stored results).

Run directories are ``{out}/{dataset}/runs/{variant}-seed{s}`` (Tables 1-2, Figures 5-7) and
``{out}/synthetic/li-blur/none-seed{s}`` (Figure 10, trained with Algorithm 2's augmentation).
Every function takes the :class:`~gradmask.reproduce.presets.Plan` and the output folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch

from ..compare.runner import compare, run_dir
from ..compare.tuning import Tuning, read_tuning
from ..train import TrainConfig, load_checkpoint
from ..train.checkpoint import read_checkpoint, trained_image_size
from .presets import Plan

FIGURES = "figures"


def runs_dir(out, dataset: str, augment: str | None = None, ablation: bool = False) -> Path:
    """Folder of a dataset's compared runs; ``augment="li-blur"``: the Figure 10 runs; ``ablation``:
    Table 2's runs when they have their own scale."""
    return Path(out) / dataset / ("li-blur" if augment == "li-blur" else "ablation" if ablation else "runs")


def run_path(out, dataset: str, variant: str, seed: int, augment: str | None = None) -> Path:
    return Path(run_dir(runs_dir(out, dataset, augment), variant, seed))


def train_runs(plan: Plan, out, dataset: str, variants: Iterable[str], augment: str | None = None,
               train_fn: Callable | None = None, log: Callable[[str], None] = print,
               tuning: Tuning | None = None, ablation: bool = False, progress: bool = False) -> dict:
    """Train ``variants`` x ``plan.seeds`` runs of ``dataset`` with :func:`gradmask.compare.compare`
    (resuming finished / interrupted ones; it writes the comparison report of that folder), each
    variant first tuned on a validation split when ``tuning`` is given; ``ablation``: Table 2's
    runs at their own scale; ``progress``: the engine's epoch bar (a terminal). Returns
    ``{"runs": [paths], "config": fields}`` (+ ``"tuning"``)."""
    fields = plan.training(dataset, ablation=ablation)
    if augment is not None:
        fields["augment"] = augment
    base = TrainConfig(**fields, progress=progress)
    folder = runs_dir(out, dataset, augment, ablation)
    tune = {} if tuning is None else dict(tune=dict(tuning.grid), tune_epochs=tuning.epochs,
                                         tune_seeds=tuning.seeds, val_fraction=tuning.val_fraction)
    label = f"{dataset}{f' ({augment})' if augment else ''}{' (ablation)' if ablation else ''}"
    runs = compare(base, tuple(variants), plan.seeds, folder, train_fn=train_fn,
                   log=lambda line: log(f"  {label} {line}"), **tune)
    result = {"runs": [str(p) for p in runs], "config": fields}
    if tuning is not None:
        result["tuning"] = read_tuning(folder)
    return result


# ----------------------------------------------------------------------------- Table 2's cost
COST_VARIANTS = ("none", "lateral", "norm", "pixel")
COST_ROUNDS = 5          # timed rounds (a warm-up round before them is not recorded)
COST_STEPS = 2           # timed steps per variant and round


def training_cost(plan: Plan, out, rounds: int = COST_ROUNDS, steps: int = COST_STEPS) -> dict:
    """Table 2's "trains 3 times slower", measured the way the benchmarks do: in one process, on one
    model of Table 2's runs (seed 0's ``lateral`` checkpoint: its architecture and image size), one
    fixed random batch of the runs' batch size; in each of ``rounds`` rounds every variant of
    :data:`COST_VARIANTS` is attached in turn, settled by one step and timed over ``steps`` SGD
    steps (forward, backward with the mask, optimizer), so drift and other load hit all variants
    alike. Returns ``{"seconds": {variant: [s per step, per round]}, "ratios": {variant: [per-round
    ratio to lateral]}, ...}``."""
    import dataclasses
    import time

    import torch.nn.functional as F

    from ..hooks import attach
    from ..mask import GradientMask

    if rounds < 2 or steps < 1:
        raise ValueError(f"rounds must be >= 2 and steps >= 1, got {rounds} and {steps}")
    device = torch.device(plan.device)
    config = TrainConfig(**plan.training(plan.ablation, ablation=plan.separate_ablation))
    run = Path(run_dir(runs_dir(out, plan.ablation, ablation=plan.separate_ablation), "lateral", 0))
    state = read_checkpoint(run / "checkpoint.pt")
    size = trained_image_size(TrainConfig.from_dict(dict(state["config"])), state["model_args"])
    model, _ = load_checkpoint(run, map_location=device)
    model.train()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(config.batch_size, 3, size, size, generator=generator).to(device)
    classes = int(state["model_args"]["num_classes"])
    labels = torch.randint(0, classes, (config.batch_size,), generator=generator).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def sgd_step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds: dict[str, list[float]] = {v: [] for v in COST_VARIANTS}
    for round_index in range(rounds + 1):  # round 0 warms up every variant
        for variant in COST_VARIANTS:
            gm = GradientMask.from_settings(dataclasses.replace(config, mask=variant))
            handle = None if gm is None else attach(model, gm, targets=list(config.targets) if config.targets
                                                    else None, skip_last=config.skip_last)
            sgd_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                sgd_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index:
                seconds[variant].append((time.perf_counter() - start) / steps)
            if handle is not None:
                handle.remove()
    ratios = {v: [t / b for t, b in zip(seconds[v], seconds["lateral"])] for v in COST_VARIANTS}
    return {"dataset": plan.ablation, "batch_size": config.batch_size, "image_size": size, "rounds": rounds,
            "steps": steps, "threads": torch.get_num_threads(), "seconds": seconds, "ratios": ratios}


# ----------------------------------------------------------------------------- Figures 5 and 6
def robustness(plan: Plan, out, progress: bool = False) -> dict:
    """Pruning (global and per-layer L1) and FGSM of each seed's ``none`` and ``lateral`` models
    on ``robustness_images`` test images of the robustness dataset (a fixed random subset)."""
    from ..robustness import fgsm_curve, pruning_curve
    from ..robustness.evalset import evaluation_loader

    ev, dataset, device = plan.preset.evaluation, plan.robustness, torch.device(plan.device)
    config = TrainConfig(**plan.training(dataset))
    loader, n, source = evaluation_loader(dataset, plan.data.get(dataset), "test", ev.robustness_images, config,
                                          256, device)
    seeds = {}
    for seed in range(plan.seeds):
        models = {v: load_checkpoint(run_path(out, dataset, v, seed), map_location=device)[0]
                  for v in ("none", "lateral")}
        pruning = {v: {scheme: [list(p) for p in pruning_curve(m, loader, ev.sparsities, scheme=scheme,
                                                                 progress=progress)]
                       for scheme in ("global", "layer")} for v, m in models.items()}
        fgsm = fgsm_curve(models, loader, ev.epsilons, subset="joint", progress=progress).to_dict()
        seeds[str(seed)] = {"pruning": pruning, "fgsm": fgsm}
    return {"dataset": dataset, "source": source, "n_images": n, "sparsities": list(ev.sparsities),
            "epsilons_255": list(ev.epsilons), "seeds": seeds}


# ----------------------------------------------------------------------------- Table 3
def _box_data(name: str, plan: Plan, limit: int, run: Path):
    """The box images of ``name`` at the side ``run``'s model was trained at (its checkpoint)."""
    from ..saliency.boxes import load_box_dataset
    state = read_checkpoint(run / "checkpoint.pt")
    size = trained_image_size(TrainConfig.from_dict(dict(state["config"])), state["model_args"])
    if name == "synthetic":
        return load_box_dataset("synthetic", limit=limit, image_size=size)
    return load_box_dataset("voc2007" if name == "voc2007" else "xml", root=plan.data[name], limit=limit,
                            image_size=size)


def saliency(plan: Plan, out, box_set: str = "synthetic", progress: bool = False) -> dict:
    """Table 3: LI-Map, Grad-CAM, Grad-CAM++ box IoU on ``box_set`` for each seed's ``lateral``
    (and ``none``) model; per-image IoUs kept for paired comparisons. Synthetic boxes use the
    synthetic runs; VOC 2007 / ImageNet boxes the ImageNet runs (VOC: the predicted class is
    explained and misclassified images are kept, as VOC labels are not ImageNet classes)."""
    from ..saliency.evaluate import evaluate_localization, save_figure_grid

    ev, device = plan.preset.evaluation, torch.device(plan.device)
    dataset = "synthetic" if box_set == "synthetic" else "imagenet"
    data = _box_data(box_set, plan, ev.saliency_images, run_path(out, dataset, "lateral", 0))
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
            seeds[str(seed)][variant] = {"methods": r["methods"], "ious": r["ious"], "index": r["index"],
                                         "accuracy": r["accuracy"], "n_evaluated": r["n_evaluated"],
                                         "evaluated_labels": [int(v) for v in evaluated]}
    return {"box_set": box_set, "n_images": int(data.images.shape[0]), "num_classes": len(data.classes), "seeds": seeds,
            "figure": str(figure.relative_to(out)) if figure else None}


# ----------------------------------------------------------------------------- Appendix A
def sanity(plan: Plan, out, progress: bool = False) -> dict:
    """Cascading randomization of LI-Map and Grad-CAM on seed 0's ``lateral`` synthetic model."""
    from ..saliency import GradCAM, LIMap
    from ..saliency.evaluate import default_cam_layer
    from ..saliency.sanity import cascading_randomization, plot_sanity, save_sanity_maps

    ev, device = plan.preset.evaluation, torch.device(plan.device)
    data = _box_data("synthetic", plan, ev.sanity_images, run_path(out, "synthetic", "lateral", 0))
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
    return {"n_images": int(data.images.shape[0]), "gradcam_layer": layer, "steps": steps,
            "figures": [f"{FIGURES}/sanity.png", f"{FIGURES}/sanity-maps.png"]}


# ----------------------------------------------------------------------------- Figure 10
def blur(plan: Plan, out, progress: bool = False) -> dict:
    """Accuracy with the background outside the boxes blurred, for each seed's synthetic model
    trained without (``none``) and with the LI background-blur augmentation (``li-blur``)."""
    from ..saliency.robustness_blur import blurred_background_accuracy

    ev, device = plan.preset.evaluation, torch.device(plan.device)
    data = _box_data("synthetic", plan, ev.blur_images, run_path(out, "synthetic", "none", 0))
    seeds = {}
    for seed in range(plan.seeds):
        seeds[str(seed)] = {}
        for label, augment in (("baseline", None), ("li-blur", "li-blur")):
            model, _ = load_checkpoint(run_path(out, "synthetic", "none", seed, augment), map_location=device)
            curve = blurred_background_accuracy(model, data.images, data.labels, data.boxes, ev.blur_sigmas,
                                                progress=progress)
            seeds[str(seed)][label] = [list(p) for p in curve]
    return {"n_images": int(data.images.shape[0]), "sigmas": list(ev.blur_sigmas), "seeds": seeds}
