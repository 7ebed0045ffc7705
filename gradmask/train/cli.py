"""``gradmask train``: the command-line face of :func:`gradmask.train.train`.

Options left out keep the preset's value (``--preset``), else the ``TrainConfig`` default; the
mask options are the shared ones of :func:`gradmask.commands.add_mask_arguments`. Under
``torchrun --nproc_per_node=N -m gradmask train ...`` every process runs it (DDP).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from ..commands import add_mask_arguments, register
from ..robustness import gsnr_callback  # noqa: F401  (registers the GSNR probe of --gsnr-every)
from ..saliency import li_blur_augment  # noqa: F401  (registers --augment li-blur)
from .augment import AUGMENTS
from .config import AMP_MODES, DATASETS, PRESETS, SCHEDULES, STEMS, TrainConfig
from .distributed import is_main_process
from .inhibition import INHIBITION_SCHEDULES

_UNSET = object()  # "not given on the command line": the preset / default applies

# argparse dest -> TrainConfig field, where they differ
_RENAMED = {"no_progress": "progress"}
_NOT_FIELDS = ("command", "run", "preset")
_NONE_IS_A_VALUE = ("kernel_size",)  # --kernel-size full


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _optional_int(text: str):
    return None if text.lower() in ("none", "all") else int(text)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every ``gradmask train`` option on ``parser`` (also used by commands that train, e.g.
    ``compare``); read them back with :func:`config_from_args`. Options not given stay unset so
    the preset / TrainConfig default applies."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="start from a preset: 'paper' (ResNet-18, 200 epochs, lr 0.1 x0.2 at 60/120/160) "
                             "or 'quick' (about a minute on 2 CPU cores on the synthetic data)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=list(DATASETS), help="default: synthetic")
    data.add_argument("--data", help="dataset path (directory or archive; not used by synthetic)")
    data.add_argument("--train-limit", type=_optional_int,
                      help="use N training images only, drawn at random with a fixed seed (the same in every run)")
    data.add_argument("--test-limit", type=_optional_int,
                      help="use N test images only, drawn at random with a fixed seed")
    data.add_argument("--synthetic-train", type=int, help="synthetic training set size (default 20000)")
    data.add_argument("--synthetic-test", type=int, help="synthetic test set size (default 5000)")
    data.add_argument("--augment", choices=sorted(AUGMENTS), help="default: crop-flip")
    data.add_argument("--num-workers", type=int, help="decoding processes of the streamed ImageNet loader")
    data.add_argument("--image-size", type=int, help="--dataset folder: resize every image to N x N when decoding "
                                                     "(default: keep their size, which must be one for all)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="a gradmask model name, or torchvision:NAME / timm:NAME "
                                       "(default: resnet18_narrow)")
    model.add_argument("--stem", choices=list(STEMS), help="default: cifar for images up to 64 px")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--batch-size", type=int, help="global batch size (default 128)")
    opt.add_argument("--lr", type=float, help="peak / initial learning rate (default 0.1)")
    opt.add_argument("--momentum", type=float)
    opt.add_argument("--weight-decay", type=float)
    opt.add_argument("--nesterov", action="store_true", default=None)
    opt.add_argument("--schedule", choices=list(SCHEDULES), help="default: multistep")
    opt.add_argument("--milestones", type=_int_list, help="multistep epochs, e.g. 60,120,160")
    opt.add_argument("--gamma", type=float, help="multistep factor (default 0.2)")
    opt.add_argument("--warmup-epochs", type=float, help="linear warm-up (the one-cycle's rising part)")
    opt.add_argument("--label-smoothing", type=float)
    run = parser.add_argument_group("execution")
    run.add_argument("--seed", type=int)
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    run.add_argument("--amp", choices=list(AMP_MODES), help="autocast dtype (fp16: CUDA only)")
    run.add_argument("--channels-last", action="store_true", default=None)
    run.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    out = parser.add_argument_group("run directory")
    out.add_argument("--out", help="run directory (default runs/<dataset>-<model>-<mask>-seed<seed>)")
    out.add_argument("--resume", action="store_true", default=None,
                     help="continue the run in --out from its checkpoint (a finished run is reported)")
    out.add_argument("--overwrite", action="store_true", default=None, help="start again in a used --out")
    out.add_argument("--tensorboard", action="store_true", default=None, help="also log to <out>/tensorboard")
    out.add_argument("--gsnr-every", type=int, default=None,
                     help="record the GSNR of the conv weights every K epochs in <out>/gsnr.jsonl (Figure 7)")
    out.add_argument("--gsnr-samples", type=int, default=None, help="probe images for the GSNR (default 256)")
    out.add_argument("--no-progress", action="store_true", default=None, help="no progress bar")
    add_mask_arguments(parser)
    parser.add_argument("--inhibition-schedule", choices=list(INHIBITION_SCHEDULES),
                        help="the inhibition rate per step: constant (default), warmup (linear from 0 to "
                             "--inhibition-rate over --inhibition-warmup epochs), anneal (cosine down to 0)")
    parser.add_argument("--inhibition-warmup", type=float, metavar="EPOCHS",
                        help="epochs of the warmup schedule's ramp (> 0, at most --epochs)")
    parser.add_argument("--skip-last", type=int, help="default targets: residual blocks but the last N (2)")
    # the shared mask options carry their own defaults: mark them unset so the preset applies
    parser.set_defaults(mask=_UNSET, groups=_UNSET, sigma=_UNSET, kernel_size=_UNSET, kernel=_UNSET,
                        padding=_UNSET, inhibition_rate=_UNSET, targets=_UNSET)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed ``gradmask train`` arguments."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {}
    for dest, value in vars(args).items():
        if dest in _NOT_FIELDS or value is _UNSET or (value is None and dest not in _NONE_IS_A_VALUE):
            continue
        name = _RENAMED.get(dest, dest)
        if name not in fields:
            continue
        if dest == "no_progress":
            value = not value
        overrides[name] = value
    if isinstance(overrides.get("targets"), str):
        overrides["targets"] = tuple(t.strip() for t in overrides["targets"].split(",") if t.strip())
    if args.preset:
        return TrainConfig.from_preset(args.preset, **overrides)
    return TrainConfig(**overrides)


@register("train", "train a model with or without the gradient mask (metrics, checkpoints, resume, DDP)",
          add_train_arguments)
def train_command(args: argparse.Namespace) -> int:
    from .engine import train
    config = config_from_args(args)
    final = train(config)
    if is_main_process():
        print(f"{config.model} on {config.dataset}, mask {config.mask}: test acc {final['test_acc']:.4f} "
              f"top-5 {final['test_top5']:.4f} loss {final['test_loss']:.4f} after {final['epochs']} epochs "
              f"({final['train_seconds']:.1f} s on {final['device']}); run directory {config.run_dir}",
              file=sys.stdout)
    return 0



__all__ = ["add_train_arguments", "config_from_args", "train_command"]
