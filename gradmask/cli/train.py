"""``gradmask train``: the command-line face of :func:`gradmask.train.train`.

One option per ``TrainConfig`` field, its help ending with the field's default; options left out
keep the preset's value (``--preset``), else the ``TrainConfig`` default. The mask options are the
shared ones of :func:`gradmask.cli.options.add_mask_arguments` (generated from ``MaskSettings``). Under
``torchrun --nproc_per_node=N -m gradmask train ...`` every process runs it (DDP).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..train.augment import augment_names
from ..train.config import (
    AMP_MODES,
    DATASETS,
    FLAT_FIELDS,
    PRESETS,
    SCHEDULE_ALIASES,
    SCHEDULES,
    STEMS,
    TrainConfig,
    field_type,
)
from ..train.distributed import is_main_process
from ..train.engine import train
from ..train.inhibition import INHIBITION_SCHEDULES
from .options import add_mask_arguments, device_argument, register, show_default

_DEFAULTS = {**TrainConfig().to_dict(), "groups": None}  # flat; groups: the model's


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _schedule_name(text: str) -> str:
    """``--schedule``: a name of SCHEDULES, or an old name (SCHEDULE_ALIASES) read as its new one."""
    return SCHEDULE_ALIASES.get(text, text)


def _optional_int(text: str):
    return None if text.lower() in ("none", "all") else int(text)


def _option(group, name: str, help: str, shown: Optional[str] = None, **kwargs) -> None:
    """``--name`` for TrainConfig field ``name``: not given, it stays out of the namespace (the
    preset's value, else the TrainConfig default applies); the help ends with that default
    (``shown``: how to say it, else the TrainConfig default's value)."""
    default = _DEFAULTS[name]
    if isinstance(default, bool):
        kwargs.setdefault("action", argparse.BooleanOptionalAction)
        shown = shown or ("on" if default else "off")
    elif "type" not in kwargs and "choices" not in kwargs and default is not None:
        kwargs["type"] = type(default)
    if shown is None:
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
    show_default(group.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, help=help,
                                    **kwargs), shown)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every ``gradmask train`` option on ``parser`` (also used by commands that train, e.g.
    ``compare``), one per TrainConfig field; read them back with :func:`config_from_args`.
    Options not given stay unset so the preset / TrainConfig default applies."""
    show_default(parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=None,
        help="start from a preset: 'paper' (ResNet-18, K=16, 200 epochs, lr 0.1 x0.2 at 60/120/160) or 'quick' "
             "(about a minute on 2 CPU cores on the synthetic data); options given override it"),
        "none, the TrainConfig defaults")
    data = parser.add_argument_group("data")
    _option(data, "dataset", "dataset", choices=list(DATASETS))
    _option(data, "data", "dataset path (directory or archive; not used by synthetic; cifar10-placed: the "
            "CIFAR-10 release)", shown="none")
    _option(data, "train_limit", "use N training images only, drawn at random with a fixed seed (the same in "
            "every run); 'all': every image", type=_optional_int, shown="all")
    _option(data, "test_limit", "use N test images only, drawn at random with a fixed seed; 'all': every image",
            type=_optional_int, shown="all")
    _option(data, "val_fraction", "share of the training images held out as a validation split (0: none)")
    _option(data, "synthetic_train", "rendered training set size (synthetic, cifar10-placed)")
    _option(data, "synthetic_test", "rendered test set size (synthetic, cifar10-placed)")
    _option(data, "synthetic_clutter", "synthetic data's distractor strokes, blobs, patches and noise (0: none, "
            "the objects on a plain colour-noise background; 1: the full clutter)")
    _option(data, "augment", "training augmentation", choices=augment_names())
    _option(data, "train_eval_images", "training images (a fixed draw) evaluated after every epoch in eval mode "
            "without augmentation: the fit, beside the test figures (0: off)")
    _option(data, "num_workers", "decoding processes of the streamed ImageNet loader")
    _option(data, "image_size", "--dataset folder: resize every image to N x N when decoding; cifar10-placed: "
            "the canvas side", type=int, shown="keep their size, which must be one for all; cifar10-placed: 32")
    model = parser.add_argument_group("model")
    _option(model, "model", "a gradmask model name, or torchvision:NAME / timm:NAME")
    _option(model, "stem", "ResNet stem", choices=list(STEMS), shown="cifar for images up to 64 px, else imagenet")
    opt = parser.add_argument_group("optimisation")
    _option(opt, "epochs", "training epochs")
    _option(opt, "batch_size", "global batch size (split over distributed processes)")
    _option(opt, "lr", "peak / initial learning rate")
    _option(opt, "momentum", "SGD momentum")
    _option(opt, "weight_decay", "SGD weight decay")
    _option(opt, "nesterov", "Nesterov momentum")
    _option(opt, "schedule", "learning-rate schedule per step, after the linear warm-up of --warmup-epochs: "
            "multistep (x --gamma at each of --milestones), cosine (down to 0), triangle (linear down to 0: with "
            "the warm-up a triangle; not PyTorch's OneCycleLR); 'onecycle' is the old name of triangle",
            choices=list(SCHEDULES), type=_schedule_name)
    _option(opt, "milestones", "multistep epochs, comma-separated", type=_int_list)
    _option(opt, "gamma", "multistep factor")
    _option(opt, "warmup_epochs", "epochs of linear warm-up from 0 to --lr (the triangle's rising side)")
    _option(opt, "label_smoothing", "label smoothing of the training loss")
    run = parser.add_argument_group("execution")
    _option(run, "seed", "seed of torch, numpy, python, data order and augmentation")
    _option(run, "device", "auto (CUDA if available), cpu, cuda, cuda:N", type=device_argument)
    _option(run, "amp", "autocast dtype (fp16: CUDA only)", choices=list(AMP_MODES))
    _option(run, "channels_last", "channels-last memory format")
    _option(run, "compile", "torch.compile the model")
    out = parser.add_argument_group("run directory")
    _option(out, "out", "run directory", shown="runs/<dataset>-<model>-<mask>-seed<seed>")
    _option(out, "resume", "continue the run in --out from its checkpoint (a finished run is reported)",
            action="store_true")
    _option(out, "overwrite", "start again in a used --out", action="store_true")
    _option(out, "tensorboard", "also log to <out>/tensorboard", action="store_true")
    _option(out, "gsnr_every", "record the GSNR of the conv weights every K epochs in <out>/gsnr.jsonl "
            "(Figure 7; 0: off)")
    _option(out, "gsnr_samples", "probe images for the GSNR")
    _option(out, "progress", "a progress bar per epoch")
    add_mask_arguments(parser, defaults=_DEFAULTS, suppress=True)
    mask = next(g for g in parser._action_groups if g.title == "gradient mask")
    _option(mask, "inhibition_schedule", "the inhibition rate per step: constant, warmup (linear from 0 to "
            "--inhibition-rate over --inhibition-warmup epochs), anneal (cosine down to 0)",
            choices=list(INHIBITION_SCHEDULES))
    _option(mask, "inhibition_warmup", "epochs of the warmup schedule's ramp (> 0, at most --epochs)",
            metavar="EPOCHS")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed ``gradmask train`` arguments: the preset (if any), then every
    option given. A None is a value only for fields that take None (``--kernel-size full``,
    ``--train-limit all``); other commands' options left at None are not passed."""
    overrides = {name: getattr(args, name) for name in FLAT_FIELDS
                 if hasattr(args, name) and (getattr(args, name) is not None or "Optional" in str(field_type(name)))}
    if args.preset:
        return TrainConfig.from_preset(args.preset, **overrides)
    return TrainConfig.from_dict(overrides)


@register("train", "train a model with or without the gradient mask (metrics, checkpoints, resume, DDP)",
          add_train_arguments)
def train_command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    final = train(config)
    if is_main_process():
        print(f"{config.model} on {config.dataset}, mask {config.mask}: test acc {final['test_acc']:.4f} "
              f"top-5 {final['test_top5']:.4f} loss {final['test_loss']:.4f} after {final['epochs']} epochs "
              f"({final['train_seconds']:.1f} s on {final['device']}); run directory {config.run_dir}",
              file=sys.stdout)
    return 0


__all__ = ["add_train_arguments", "config_from_args", "train_command"]
