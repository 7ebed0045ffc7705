"""The registry of ``gradmask`` sub-commands. It holds no commands: each command module registers
itself with :func:`register` when imported, and :mod:`gradmask.cli` (the top layer) imports the
list of command modules (``COMMAND_MODULES``) and builds the parser."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from .settings import MASK_MODES


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
