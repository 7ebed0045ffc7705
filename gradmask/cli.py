"""The ``gradmask`` command (the top layer): imports every command module (each registers its
sub-commands in :data:`gradmask.commands.COMMANDS`) and dispatches."""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .commands import COMMANDS, HelpFormatter

# The modules that register sub-commands; a new command is one module plus one line here.
COMMAND_MODULES = ("gradmask.train.cli", "gradmask.mask_stats", "gradmask.compare.cli", "gradmask.saliency.cli",
                   "gradmask.robustness.cli", "gradmask.reproduce.cli", "gradmask.status")


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="gradmask",
                                     description="Gradient Mask: lateral inhibition in backpropagation")
    parser.add_argument("--version", action="version", version=f"gradmask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, formatter_class=HelpFormatter)
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
