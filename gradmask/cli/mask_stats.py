"""``gradmask mask-stats``: one training step of a model on random images, and what the mask keeps where."""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ..hooks import attach
from ..mask import GradientMask
from ..models import create_model, model_groups
from ..settings import MaskSettings
from ..train.config import STEMS, TrainConfig
from .options import add_mask_arguments, register


def _mask_stats_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and mask default to ``gradmask train``'s (TrainConfig's defaults)."""
    train = TrainConfig()
    parser.add_argument("--model", default=train.model, help="a gradmask model name, or torchvision:NAME / timm:NAME")
    parser.add_argument("--num-classes", type=int, default=100, help="classes of the model's head")
    parser.add_argument("--stem", default="cifar", choices=list(STEMS), help="ResNet stem")
    parser.add_argument("--image-size", type=int, default=32, help="side of the random square images")
    parser.add_argument("--batch-size", type=int, default=16, help="random images in the step")
    parser.add_argument("--seed", type=int, default=train.seed, help="seed of the model's weights and the images")
    add_mask_arguments(parser, defaults={**train.to_dict(), "groups": None})


@register("mask-stats", "one training step of a model on random images: what the mask keeps, where",
          _mask_stats_arguments)
def mask_stats(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    model = create_model(args.model, args.num_classes, stem=args.stem)
    if args.groups is None:  # the model's, as in gradmask train
        args.groups = model_groups(args.model)
    settings = MaskSettings.of(args)
    gm = GradientMask.from_settings(settings) if settings else GradientMask(inhibition_rate=0.0)
    targets = args.targets.split(",") if args.targets else None
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, args.num_classes, (args.batch_size,))
    with attach(model, gm, targets=targets, skip_last=args.skip_last) as handle:
        start = time.perf_counter()
        F.cross_entropy(model(images), labels).backward()
        seconds = time.perf_counter() - start
        stats = handle.stats()
    print(f"{args.model} ({args.stem} stem), batch {args.batch_size} of {args.image_size}x{args.image_size} "
          f"random images, {gm}")
    print(f"{'target':<16} {'gradient shape':<22} {'kept':>7} {'calls':>6}")
    for name, s in stats.items():
        print(f"{name:<16} {str(s['shape']):<22} {s['kept_fraction']:>7.3f} {s['calls']:>6}")
    print(f"forward+backward: {seconds * 1e3:.0f} ms")
    return 0
