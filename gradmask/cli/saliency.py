"""The saliency commands: ``gradmask saliency`` (Table 3), ``gradmask sanity`` (Appendix A,
cascading randomization) and ``gradmask blur-eval`` (Figure 10).

Each loads trained models with :func:`gradmask.train.checkpoint.load_trained` (a run directory
or a ``checkpoint.pt``) and images with boxes with
:func:`~gradmask.saliency.boxes.load_box_dataset`: ``--data synthetic`` (default: the synthetic
test split the training engine uses, nothing from outside, with the clutter the model was trained
with unless ``--synthetic-clutter`` says otherwise), a VOC 2007 tree or an ImageFolder
tree with box XMLs (``--dataset`` is inferred from the path when not given). The images are
resized to the side the model was trained at (recorded in its checkpoint) unless
``--image-size`` says otherwise; the command says which it used. The labels of an ImageFolder
tree are matched to the model's training classes by name.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..saliency import boxes as _boxes
from ..saliency.base import SALIENCY_METHODS
from ..saliency.blur_eval import blurred_background_accuracy, write_blur_report
from ..saliency.boxes import match_box_classes
from ..saliency.evaluate import (
    METHODS,
    check_classes,
    default_cam_layer,
    evaluate_localization,
    make_method,
    predict,
    save_figure_grid,
    write_localization_report,
)
from ..saliency.sanity import cascading_randomization, save_sanity_maps, write_sanity_report
from ..train.checkpoint import load_trained
from ..util.device import resolve_device
from ..util.reporting import evaluation_warnings
from .options import register, show_default


# ------------------------------------------------------------------------------ shared
def _add_data_arguments(parser: argparse.ArgumentParser, images_default=None, images_help: str = "") -> None:
    group = parser.add_argument_group("data (images with boxes)")
    show_default(group.add_argument("--data", default=None,
                                    help="'synthetic' (the synthetic test split) or the path of a VOC 2007 tree "
                                         "(VOCdevkit) or of an ImageFolder tree with box XMLs; its classes must "
                                         "be the model's"),
                 "the model's own dataset where it has boxes: synthetic")
    show_default(group.add_argument("--dataset", default=None, choices=sorted(_boxes.BOX_DATASETS),
                                    help="what --data is"), "inferred")
    show_default(group.add_argument("--split", default=None, help="split to read"),
                 "test for synthetic / voc2007, val for xml")
    show_default(group.add_argument("--image-size", type=int, default=None, help="resize images to this side"),
                 "the side the model was trained at")
    show_default(group.add_argument("--synthetic-clutter", type=float, default=None,
                                    help="--data synthetic: the distractors' amount, >= 0"),
                 "the one the model was trained with, its synthetic_clutter")
    images = group.add_argument("--images", type=int, default=images_default,
                                help=images_help or "use the first N images")
    if images_default is None:
        show_default(images, "all; synthetic: 1000")
    group.add_argument("--batch-size", type=int, default=64, help="images per forward/backward")
    group.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")


def _dataset_name(args: argparse.Namespace, trained: list) -> str:
    """The box data's kind: ``--dataset``, else inferred from ``--data``, else the models' own
    dataset where it has boxes (synthetic); an error saying which ``--data`` to give otherwise."""
    if args.data is None:
        if args.dataset not in (None, "synthetic"):
            raise ValueError(f"--dataset {args.dataset} needs --data PATH (its folder)")
        own = sorted({t.config.dataset for t in trained})
        if own != ["synthetic"]:
            runs = ", ".join(f"{t.path.parent.name} on {t.config.dataset}" for t in trained)
            raise ValueError(f"the model's own data has no object boxes ({runs}): pass --data with images with "
                             f"boxes of its classes (a VOC 2007 tree, or an ImageFolder tree with box XMLs, "
                             f"--dataset xml)")
        args.data = "synthetic"
    if args.dataset is not None:
        return args.dataset
    if args.data == "synthetic":
        return "synthetic"
    path = Path(args.data).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--data {path} does not exist (or pass --data synthetic)")
    try:
        _boxes._voc_root(path)
        return "voc2007"
    except FileNotFoundError:
        return "xml"


def _check_options(args: argparse.Namespace) -> None:
    """Options every command takes, checked before anything is loaded."""
    for option, value in (("--batch-size", args.batch_size), ("--images", args.images),
                          ("--image-size", args.image_size)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be an integer >= 1, got {value}")
    if args.synthetic_clutter is not None and not args.synthetic_clutter >= 0:
        raise ValueError(f"--synthetic-clutter must be a number >= 0, got {args.synthetic_clutter}")


def _image_size(args: argparse.Namespace, trained: list) -> int:
    """The side the images are evaluated at: ``--image-size``, else the one the models were trained
    at (they must agree), else the dataset's default; says on stderr which and why."""
    sizes = {t.image_size for t in trained}
    if args.image_size is not None:
        known = sorted(s for s in sizes if s)
        plural = "s" if len(trained) > 1 else ""
        note = f"; the model{plural} trained at {'/'.join(map(str, known))} px" if known else ""
        print(f"evaluating at {args.image_size} px (--image-size{note})", file=sys.stderr)
        return args.image_size
    if None in sizes:
        name = _dataset_name(args, trained)
        side = 32 if name == "synthetic" else _boxes.DEFAULT_IMAGE_SIZE
        print(f"evaluating at {side} px, the default of {name} data: the checkpoint does not record its training "
              f"image size (written by an older gradmask); pass --image-size to choose", file=sys.stderr)
        return side
    if len(sizes) > 1:
        raise ValueError(f"the runs were trained at different image sizes "
                         f"({', '.join(f'{t.path.parent.name}: {t.image_size} px' for t in trained)}); "
                         f"pass --image-size to evaluate them at one")
    side = sizes.pop()
    print(f"evaluating at {side} px, the training image size of the model{'s' if len(trained) > 1 else ''} "
          f"(--image-size overrides)", file=sys.stderr)
    return side


def _synthetic_clutter(args: argparse.Namespace, trained: list) -> float:
    """The synthetic images' clutter: ``--synthetic-clutter``, else the one the models were trained
    with (their configs' ``synthetic_clutter``; they must agree)."""
    if args.synthetic_clutter is not None:
        return args.synthetic_clutter
    clutters = {t.config.synthetic_clutter for t in trained}
    if len(clutters) > 1:
        raise ValueError(f"the runs were trained on synthetic data of different clutter "
                         f"({', '.join(f'{t.path.parent.name}: {t.config.synthetic_clutter}' for t in trained)}); "
                         f"pass --synthetic-clutter to evaluate them on one")
    return clutters.pop()


def _load_data(args: argparse.Namespace, trained: list) -> tuple[str, "_boxes.BoxDataset"]:
    """The box data (see :func:`_dataset_name`), labelled by the models' classes (recorded in their
    checkpoints; those of an older gradmask, which does not record them, are checked by their number
    of logits only, :func:`_check_classes`)."""
    name = _dataset_name(args, trained)
    root = None if name == "synthetic" else args.data
    if name == "synthetic":
        extra = {"clutter": _synthetic_clutter(args, trained)}
    elif args.synthetic_clutter is not None:
        raise ValueError(f"--synthetic-clutter applies to --data synthetic, not to {name} data")
    else:
        extra = {}
    data = _boxes.load_box_dataset(name, root=root, split=args.split, image_size=_image_size(args, trained),
                                   limit=args.images, **extra)
    for t in trained:
        if t.classes:
            data = match_box_classes(data, t.classes, f"run {t.path.parent}")
        else:
            print(f"note: {t.path} does not record its classes (written by an older gradmask): the data's classes "
                  f"cannot be checked against the model's", file=sys.stderr)
    return name, data


def _load_model(path: str, device: torch.device):
    """The :class:`~gradmask.train.checkpoint.TrainedModel` of a run directory or checkpoint."""
    return load_trained(path, map_location=device)


def _run_dir(path: str) -> Path:
    p = Path(path)
    return p if p.is_dir() else p.parent


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in SALIENCY_METHODS]
    if unknown or not names:
        raise ValueError(f"--methods must be a comma-separated subset of {','.join(sorted(SALIENCY_METHODS))}, "
                         f"got {text!r}")
    return names


def _describe(args, name, data) -> str:
    where = "synthetic test split" if name == "synthetic" else args.data
    return f"{name} ({where}, split {data.split!r}, {len(data)} images, {data.image_size[0]} px)"


# ------------------------------------------------------------------------------ gradmask saliency
def _saliency_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run directory or its checkpoint.pt")
    _add_data_arguments(parser)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated saliency methods")
    parser.add_argument("--top-fraction", type=float, default=0.15, help="share of pixels forming the box")
    parser.add_argument("--max-box-fraction", type=float, default=0.5,
                        help="exclude images whose box covers more of the image")
    parser.add_argument("--multi-object", action="store_true", help="keep images with several boxes (best IoU)")
    parser.add_argument("--no-correct-only", action="store_true", help="keep misclassified images too")
    show_default(parser.add_argument("--target-layer", default=None, help="Grad-CAM(++) layer"), "last residual stage")
    parser.add_argument("--figure-images", type=int, default=8, help="rows of the figure grid")
    show_default(parser.add_argument("--out", default=None, help="output folder"), "<run>/saliency")


@register("saliency", "localisation of LI-Map, Grad-CAM, Grad-CAM++ against object boxes (Table 3)",
          _saliency_arguments)
def saliency_command(args: argparse.Namespace) -> int:
    _check_options(args)
    device = resolve_device(args.device)
    methods = _methods(args.methods)
    trained = _load_model(args.checkpoint, device)
    model, config = trained.model, trained.config
    name, data = _load_data(args, [trained])
    check_classes(model, data, args.checkpoint)
    out = Path(args.out) if args.out else _run_dir(args.checkpoint) / "saliency"
    results = evaluate_localization(model, data.images, data.labels, data.boxes, methods=methods,
                                    top_fraction=args.top_fraction, single_object=not args.multi_object,
                                    max_box_fraction=args.max_box_fraction,
                                    correct_only=not args.no_correct_only, batch_size=args.batch_size,
                                    target_layer=args.target_layer, return_maps=True, progress=sys.stderr.isatty())
    figure = None
    shown = results["index"][: max(args.figure_images, 0)]
    if shown:
        figure = save_figure_grid(out / "localization.png", data.images[shown],
                                  [data.boxes[i] for i in shown],
                                  {m: results["maps"][m][: len(shown)] for m in methods},
                                  n=len(shown), top_fraction=args.top_fraction,
                                  titles=[data.classes[int(data.labels[i])] for i in shown])
    setting = {"checkpoint": args.checkpoint, "model": config.model, "mask": config.mask,
               "data": _describe(args, name, data)}
    warnings = evaluation_warnings(results["accuracy"], len(data.classes), data.labels[results["index"]].tolist()
                                   if results["index"] else ())
    if warnings:
        setting["warning"] = "; ".join(warnings)
    paths = write_localization_report(out, results, setting, figure)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{'method':<10} {'mean IoU':>9} {'IoU>=0.5':>9} {'images':>7}")
    for m, r in results["methods"].items():
        print(f"{m:<10} {r['mean_iou']:>9.3f} {r['frac_iou_ge_05']:>9.3f} {r['n']:>7}")
    print(f"wrote {paths['markdown']}, {paths['json']}" + (f", {figure}" if figure else ""))
    return 0


# ------------------------------------------------------------------------------ gradmask sanity
def _sanity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run directory or its checkpoint.pt")
    _add_data_arguments(parser, images_default=16, images_help="number of images")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated saliency methods")
    parser.add_argument("--granularity", default="block", choices=["block", "layer"],
                        help="randomize one block or one parametrised layer per step")
    parser.add_argument("--seed", type=int, default=0, help="re-initialisation seed")
    show_default(parser.add_argument("--target-layer", default=None, help="Grad-CAM(++) layer"), "last residual stage")
    show_default(parser.add_argument("--out", default=None, help="output folder"), "<run>/sanity")


@register("sanity", "cascading randomization test of the saliency maps (Adebayo et al. 2018; Appendix A)",
          _sanity_arguments)
def sanity_command(args: argparse.Namespace) -> int:
    _check_options(args)
    device = resolve_device(args.device)
    methods = _methods(args.methods)
    if args.images is None:
        raise ValueError("--images must be an integer >= 1 (sanity maps are drawn for each image)")
    trained = _load_model(args.checkpoint, device)
    model, config = trained.model, trained.config
    name, data = _load_data(args, [trained])
    out = Path(args.out) if args.out else _run_dir(args.checkpoint) / "sanity"
    layer = args.target_layer
    if layer is None and any(m != "limap" for m in methods):
        layer = default_cam_layer(model, data.images)
    results = {}
    for m in methods:
        steps = cascading_randomization(model, data.images, lambda mod, m=m: make_method(m, mod, layer),
                                        seed=args.seed, granularity=args.granularity,
                                        batch_size=args.batch_size, return_maps=True, progress=sys.stderr.isatty())
        save_sanity_maps(out / f"sanity_maps_{m.replace('+', 'p')}.png", data.images, steps, method=m)
        results[m] = steps
    setting = {"checkpoint": args.checkpoint, "model": config.model, "mask": config.mask,
               "data": _describe(args, name, data), "granularity": args.granularity, "seed": args.seed,
               "grad-cam layer": layer}
    accuracy = float((predict(model, data.images, args.batch_size) == data.labels).double().mean())
    warnings = evaluation_warnings(accuracy, len(data.classes), data.labels.tolist())
    if warnings:
        setting["warning"] = "; ".join(warnings)
    paths = write_sanity_report(out, results, setting)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{'step':<5} {'randomized':<16} " + " ".join(f"{m + ' rho/ssim':>22}" for m in methods))
    for i, s in enumerate(results[methods[0]]):
        cells = " ".join(f"{results[m][i]['spearman']:>10.3f} / {results[m][i]['ssim']:>9.3f}" for m in methods)
        print(f"{s['step']:<5} {s['randomized']:<16} {cells}")
    print(f"wrote {paths['markdown']}, {paths['json']}, {paths['figure']}")
    return 0


# ------------------------------------------------------------------------------ gradmask blur-eval
def _blur_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", metavar="RUN", nargs="+", help="run directories or checkpoint.pt files")
    _add_data_arguments(parser)
    parser.add_argument("--sigmas", default="0,1,2,4,8", help="background blur sigmas")
    show_default(parser.add_argument("--out", default=None, help="output folder"), "blur-eval beside the first run")


def _sigmas(text: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sigmas must be comma-separated numbers >= 0, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise ValueError(f"--sigmas must be comma-separated numbers >= 0, got {text!r}")
    return values


@register("blur-eval", "accuracy with the background outside the object boxes blurred, per model (Figure 10)",
          _blur_arguments)
def blur_eval_command(args: argparse.Namespace) -> int:
    _check_options(args)
    device = resolve_device(args.device)
    sigmas = _sigmas(args.sigmas)
    labels = [_run_dir(r).name for r in args.runs]
    if len(set(labels)) != len(labels):
        labels = [str(r) for r in args.runs]
    trained = [_load_model(run, device) for run in args.runs]
    if len({tuple(t.classes) if t.classes else None for t in trained}) > 1:
        raise ValueError("the runs were trained on different classes; blur-eval scores them on one image set: "
                         "run it separately for each")
    name, data = _load_data(args, trained)
    curves, models = {}, {}
    for label, run, t in zip(labels, args.runs, trained):
        check_classes(t.model, data, run)
        curves[label] = blurred_background_accuracy(t.model, data.images, data.labels, data.boxes, sigmas,
                                                    batch_size=args.batch_size, progress=sys.stderr.isatty())
        models[label] = f"{t.config.model}, mask {t.config.mask}"
    out = Path(args.out) if args.out else _run_dir(args.runs[0]).parent / "blur-eval"
    setting = {"data": _describe(args, name, data), "models": models}
    warnings = [w for label in labels for w in evaluation_warnings(
        next((a for s, a in curves[label] if s == 0), None), len(data.classes), data.labels.tolist(),
        what=f"model {label} (unblurred)")]
    if warnings:
        setting["warning"] = "; ".join(warnings)
    paths = write_blur_report(out, curves, setting)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{'sigma':>6} " + " ".join(f"{label[:20]:>20}" for label in labels))
    for j, s in enumerate(sigmas):
        print(f"{s:>6g} " + " ".join(f"{curves[label][j][1]:>20.4f}" for label in labels))
    print(f"wrote {paths['markdown']}, {paths['json']}, {paths['figure']}")
    return 0
