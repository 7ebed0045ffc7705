"""The ``gradmask`` command: one sub-command per module, registered in ``COMMANDS``."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .mask import MASK_MODES

@dataclass
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Decorator: ``run(args)`` becomes ``gradmask NAME``, its options set by ``configure``."""
    def wrap(run):
        COMMANDS[name] = Command(name, help, configure, run)
        return run
    return wrap


def add_mask_arguments(parser: argparse.ArgumentParser) -> None:
    """The GradientMask options shared by every command that trains or masks."""
    group = parser.add_argument_group("gradient mask")
    group.add_argument("--mask", default="lateral", choices=MASK_MODES,
                       help="mask mode (none = vanilla backprop)")
    group.add_argument("--groups", type=int, default=16, help="channel sets K (default 16)")
    group.add_argument("--sigma", type=float, default=11.0, help="LoG sigma (default 11)")
    group.add_argument("--kernel-size", type=lambda s: None if s == "full" else int(s), default=5,
                       help="odd LoG window, or 'full' for 2*ceil(3 sigma)+1 (default 5)")
    group.add_argument("--kernel", default="log", choices=["log", "authors"], help="eq. (2) or the authors' window")
    group.add_argument("--padding", default="reflect", choices=["reflect", "zero"])
    group.add_argument("--inhibition-rate", type=float, default=0.5, help="quantile q in [0, 1) (default 0.5)")
    group.add_argument("--targets", default=None,
                       help="comma-separated module names/patterns (default: every residual block but the last two)")


def _mask_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    add_mask_arguments(parser)


@register("mask-stats", "one training step of a model on random images: what the mask keeps, where",
          _mask_stats_arguments)
def mask_stats(args: argparse.Namespace) -> int:
    import gradmask
    torch.manual_seed(args.seed)
    model = gradmask.create_model(args.model, args.num_classes, stem=args.stem)
    gm = gradmask.GradientMask.from_settings(args) or gradmask.GradientMask(inhibition_rate=0.0)
    targets = args.targets.split(",") if args.targets else None
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, args.num_classes, (args.batch_size,))
    with gradmask.attach(model, gm, targets=targets) as handle:
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


def build_parser() -> argparse.ArgumentParser:
    from .train import cli as _train_cli  # noqa: F401  (registers ``gradmask train``)
    from .compare import cli as _compare_cli  # noqa: F401
    from .saliency import cli as _saliency_cli  # noqa: F401  (saliency, sanity, blur-eval)
    from .robustness import cli as _robustness_cli  # noqa: F401
    from .reproduce import cli as _reproduce_cli  # noqa: F401
    parser = argparse.ArgumentParser(prog="gradmask", description="Gradient Mask: lateral inhibition in backpropagation")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"gradmask {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
