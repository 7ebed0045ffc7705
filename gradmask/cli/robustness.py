"""``gradmask robustness RUN_A RUN_B ...``: pruning, FGSM and GSNR of trained runs, one report.

Each RUN is a run directory (or its ``checkpoint.pt``) written by ``gradmask train`` / ``compare``;
models are loaded with :func:`gradmask.train.load_checkpoint` (no mask hooks: they are never saved).
All runs are evaluated on one set of images, so they must share the architecture, the number of
classes and the dataset (a clear error otherwise).

Data: the test split of the runs' dataset (``--data`` / ``--dataset`` override it; ``--data
synthetic`` is the rendered synthetic set), the first ``--test-limit`` images (synthetic: the first
N rendered; other datasets: a random subset drawn with seed 0, since folder trees are sorted by
class). GSNR: ``--gsnr-samples`` images of ``--gsnr-split`` (train by default; a seed-0 random
subset), per-sample gradients with the gradient mask each run was trained with (``--gsnr-mask
run``) or without (``none``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..data import dataset_spec
from ..robustness.evalset import evaluation_loader
from ..robustness.fgsm import check_epsilons
from ..robustness.measure import check_compatible, first_images, measure, measure_gsnr
from ..robustness.pruning import SCHEMES, check_sparsities
from ..robustness.report import write_report
from ..train.checkpoint import load_trained
from ..util.device import resolve_device
from ..util.reporting import evaluation_warnings
from .options import register, show_default

DEFAULT_EPSILONS = "0,1,2,4,8"
DEFAULT_SPARSITIES = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"


def _numbers(text: str, option: str) -> list[float]:
    try:
        return [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or their checkpoint.pt)")
    data = parser.add_argument_group("data")
    show_default(data.add_argument("--data", default=None, help="'synthetic', or the dataset path"),
                 "the runs' config")
    show_default(data.add_argument("--dataset", default=None, help="synthetic, cifar10, cifar100, folder or imagenet"),
                 "the runs' config")
    show_default(data.add_argument("--test-limit", type=int, default=None, help="evaluate on N test images"),
                 "the whole test split")
    show_default(data.add_argument("--image-size", type=int, default=None, help="evaluate at this image side"),
                 "the side the runs were trained at")
    data.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    what = parser.add_argument_group("measurements")
    what.add_argument("--epsilons", default=DEFAULT_EPSILONS,
                      help="FGSM epsilons in 1/255 units")
    what.add_argument("--subset", default="joint", choices=["joint", "all"],
                      help="FGSM on the images every model gets right (joint, the paper) or on all")
    what.add_argument("--sparsities", default=DEFAULT_SPARSITIES,
                      help="pruned fractions in [0, 1)")
    what.add_argument("--schemes", default="global,layer", help="pruning schemes: global, layer")
    what.add_argument("--recalibrate-bn", type=int, default=0, metavar="N",
                      help="re-estimate BatchNorm statistics of each pruned model on N training images (0: the "
                           "statistics as trained)")
    what.add_argument("--gsnr-samples", type=int, default=512, help="GSNR samples (0 skips GSNR)")
    what.add_argument("--gsnr-split", default="train", choices=["train", "test"], help="GSNR images")
    what.add_argument("--gsnr-mask", default="run", choices=["run", "none"],
                      help="per-sample gradients with each run's gradient mask (run) or plain (none)")
    what.add_argument("--gsnr-params", default="conv", choices=["conv", "all"],
                      help="parameters measured: convolution weights (conv, as the paper) or all")
    what.add_argument("--gsnr-chunk", type=int, default=64, help="samples per vmap chunk (memory)")
    out = parser.add_argument_group("output")
    show_default(out.add_argument("--out", default=None, help="report folder"), "<parent of the first run>/robustness")
    show_default(out.add_argument("--names", default=None, help="comma-separated model names"),
                 "the run folder names")
    out.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------------------- models

def _checkpoint_file(run: str) -> Path:
    p = Path(run)
    return p / "checkpoint.pt" if p.is_dir() else p


def _names(runs: list[str], names: Optional[str]) -> list[str]:
    if names:
        given = [n.strip() for n in names.split(",")]
        if len(given) != len(runs) or not all(given) or len(set(given)) != len(given):
            raise ValueError(f"--names must give {len(runs)} distinct non-empty names, got {names!r}")
        return given
    files = [_checkpoint_file(r) for r in runs]
    out = [f.parent.name or str(f) for f in files]
    if len(set(out)) != len(out):
        out = [f"{f.parent.parent.name}/{f.parent.name}" for f in files]
    if len(set(out)) != len(out):
        out = [f"{n}#{i}" for i, n in enumerate(out)]
    return out


def _architecture(model: torch.nn.Module) -> list[tuple[str, tuple]]:
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]



def _evaluation_size(args: argparse.Namespace, loaded: list[dict]):
    """The side the images are evaluated at, passed to the loader (None: the data's own side,
    which is the training side when the runs' own data are used), said on stderr."""
    sizes = sorted({e["trained"].image_size for e in loaded}, key=str)
    if len(sizes) > 1 and args.image_size is None:
        raise ValueError(f"the runs were trained at different image sizes "
                         f"({', '.join(str(e['name']) + ': ' + str(e['trained'].image_size) for e in loaded)} px); "
                         f"pass --image-size to evaluate them at one")
    trained = sizes[0]
    if args.image_size is not None:
        print(f"evaluating at {args.image_size} px (--image-size; the runs trained at {trained} px)", file=sys.stderr)
        return args.image_size
    if trained is None:
        print("the checkpoints do not record their training image size (written by an older gradmask): evaluating "
              "at the data's own size; pass --image-size to choose", file=sys.stderr)
        return None
    print(f"evaluating at {trained} px, the runs' training image size (--image-size overrides)", file=sys.stderr)
    # the runs' own data give that size as they are; other data (--data) are resized to it
    return trained if args.data or args.dataset else None


# --------------------------------------------------------------------------------------- command

def measure_runs(args: argparse.Namespace) -> dict:
    """Load the runs, measure (:mod:`gradmask.robustness.measure`), return the results dict
    :func:`write_report` takes."""
    epsilons = check_epsilons(_numbers(args.epsilons, "--epsilons"))
    sparsities = check_sparsities(_numbers(args.sparsities, "--sparsities"))
    schemes = [s.strip() for s in str(args.schemes).split(",") if s.strip()]
    if not schemes or any(s not in SCHEMES for s in schemes):
        raise ValueError(f"--schemes must be a comma-separated subset of {', '.join(SCHEMES)}, got {args.schemes!r}")
    for option, value, lo in (("--test-limit", args.test_limit, 1), ("--batch-size", args.batch_size, 1),
                              ("--image-size", args.image_size, 1),
                              ("--gsnr-samples", args.gsnr_samples, 0), ("--gsnr-chunk", args.gsnr_chunk, 1),
                              ("--recalibrate-bn", args.recalibrate_bn, 0)):
        if value is not None and value < lo:
            raise ValueError(f"{option} must be an integer >= {lo}, got {value}")
    if args.gsnr_samples == 1:
        raise ValueError("--gsnr-samples must be 0 (skip) or >= 2 (a variance needs two samples)")
    progress = not args.no_progress and sys.stderr.isatty()  # bars only on a terminal
    device = resolve_device(args.device)
    names = _names(args.runs, args.names)

    loaded = []
    for name, run in zip(names, args.runs):
        path = _checkpoint_file(run)
        trained = load_trained(path, map_location=device)
        loaded.append({"name": name, "path": str(path), "model": trained.model, "config": trained.config,
                       "arch": _architecture(trained.model), "trained": trained})
    config = loaded[0]["config"]
    if args.data == "synthetic" and args.dataset not in (None, "synthetic"):
        raise ValueError(f"--data synthetic contradicts --dataset {args.dataset}")
    dataset = args.dataset or ("synthetic" if args.data == "synthetic" else config.dataset)
    needs_root = dataset_spec(dataset).needs_root
    root = (args.data or config.data) if needs_root else None
    if needs_root and not root:
        raise ValueError(f"dataset {dataset!r} needs --data PATH (the runs' config names none)")
    if needs_root and not Path(root).exists():
        raise FileNotFoundError(f"--data {root} does not exist")

    image_size, classes = _evaluation_size(args, loaded), loaded[0]["trained"].classes
    for other in loaded[1:]:  # the class names the checkpoints record (older ones record none)
        if classes and other["trained"].classes and other["trained"].classes != classes:
            raise ValueError(f"runs {loaded[0]['path']} and {other['path']} were trained on different classes "
                             f"({classes} vs {other['trained'].classes}): they cannot share an evaluation set")
    model = f"run {Path(loaded[0]['path']).parent}"
    print(f"loading the {dataset} test images ...", file=sys.stderr)
    loader, n_eval, source = evaluation_loader(dataset, root, "test", args.test_limit, config, args.batch_size, device,
                                               classes, image_size, model)
    first_x, first_y = first_images(loader, 1)
    for entry in loaded:
        with torch.no_grad():
            entry["num_classes"] = int(entry["model"].eval()(first_x.to(device)).shape[1])
    check_compatible(loaded, dataset, explicit_data=bool(args.data or args.dataset))
    labels = getattr(loader, "labels", None)
    if labels is not None and labels.numel() and int(labels.max()) >= loaded[0]["num_classes"]:
        raise ValueError(f"the {dataset} images have labels up to {int(labels.max())} but the models predict "
                         f"{loaded[0]['num_classes']} classes: --data / --dataset does not match the runs")
    models = {e["name"]: e["model"] for e in loaded}

    recal = None
    if args.recalibrate_bn:
        recal_loader, _, _ = evaluation_loader(dataset, root, "train", args.recalibrate_bn, config, args.batch_size,
                                               device, classes, image_size, model)
        recal = recal_loader

    results: dict = {
        "models": [{"name": e["name"], "checkpoint": e["path"], "model": e["config"].model, "mask": e["config"].mask,
                    "seed": e["config"].seed, "num_classes": e["num_classes"], "n_eval": n_eval} for e in loaded],
        "data": {"dataset": dataset, "source": source, "split": "test", "n_images": n_eval},
        "settings": {"epsilons_255": epsilons, "sparsities": sparsities, "schemes": schemes, "subset": args.subset,
                     "recalibrate_bn": args.recalibrate_bn, "gsnr_samples": args.gsnr_samples,
                     "gsnr_split": args.gsnr_split, "gsnr_mask": args.gsnr_mask, "gsnr_params": args.gsnr_params,
                     "device": str(device), "mask_hooks": "none attached (fresh checkpoints); any found are "
                                                          "switched off during attacks and evaluation"},
        "pruning": {}, "fgsm": None, "gsnr": {},
    }
    with warnings.catch_warnings():  # FGSM's "no image to attack" is printed once, by the command
        warnings.filterwarnings("ignore", message="fgsm_curve: ", category=RuntimeWarning)
        measured = measure(models, loader, sparsities, epsilons, schemes, subset=args.subset, recalibrate_bn=recal,
                           progress=progress, log=_say)
    results["pruning"] = {name: {scheme: c.to_dict() for scheme, c in curves.items()}
                          for name, curves in measured.pruning.items()}
    results["fgsm"] = measured.fgsm.to_dict()
    results["warnings"] = [w for name, c in results["pruning"].items() for w in evaluation_warnings(
        _clean_accuracy(c), loaded[0]["num_classes"], labels.tolist() if labels is not None else (),
        what=f"model {name}")]

    if args.gsnr_samples:
        g_loader, _, _ = evaluation_loader(dataset, root, args.gsnr_split, args.gsnr_samples, config,
                                           args.batch_size, device, classes, image_size, model)
        images, labels = first_images(g_loader, args.gsnr_samples)
        results["gsnr"] = measure_gsnr({e["name"]: (e["model"], e["config"]) for e in loaded}, images, labels,
                                       args.gsnr_mask == "run", args.gsnr_params, args.gsnr_chunk, args.gsnr_split,
                                       progress=progress, log=_say)
    return results


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _clean_accuracy(curves: dict) -> Optional[float]:
    """A model's accuracy at sparsity 0 from its pruning curves (None when 0 was not measured)."""
    return next((y for c in curves.values() for x, y in c["points"] if x == 0), None)


def _default_out(runs: list[str]) -> Path:
    first = _checkpoint_file(runs[0]).parent
    return first.parent / "robustness"


@register("robustness", "pruning, FGSM and GSNR of trained runs on one evaluation set: Markdown/HTML report",
          _configure)
def robustness_command(args: argparse.Namespace) -> int:
    results = measure_runs(args)
    out = Path(args.out) if args.out else _default_out(args.runs)
    paths = write_report(results, out)
    fgsm = results["fgsm"]
    for warning in ([fgsm["warning"]] if fgsm.get("warning") else []) + results["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    lines = []
    for name in results["pruning"]:
        parts = []
        for scheme, c in results["pruning"][name].items():
            worst = c["points"][-1]
            parts.append(f"{scheme} {worst[0]:g}: {worst[1]:.3f}")
        curve = fgsm["curves"].get(name, [])
        if curve and not math.isnan(curve[-1][1]):
            parts.append(f"FGSM {curve[-1][0]:g}/255: {curve[-1][1]:.3f}")
        if name in results["gsnr"]:
            parts.append(f"GSNR {results['gsnr'][name]['summary']['network']:.3g}")
        lines.append(f"  {name}: " + ", ".join(parts))
    print("\n".join(lines))
    print(f"report: {paths['markdown']} and {paths['html']} ({os.fspath(out)})")
    return 0


__all__ = ["measure_runs", "robustness_command"]
