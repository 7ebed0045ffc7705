"""The ``gradmask`` command (the top layer): imports every command module (each registers its
sub-commands in :data:`gradmask.cli.options.COMMANDS`) and dispatches."""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Optional

from .. import __version__
from ..train.engine import TrainingDiverged
from . import compare, mask_stats, reproduce, robustness, saliency, status, train
from .options import COMMANDS, HelpFormatter

# The command modules in the order of ``gradmask --help``; a new command is one module plus its name here.
COMMAND_MODULES = (train, mask_stats, compare, saliency, robustness, reproduce, status)


def build_parser() -> argparse.ArgumentParser:
    order = {module.__name__: i for i, module in enumerate(COMMAND_MODULES)}
    parser = argparse.ArgumentParser(prog="gradmask",
                                     description="Gradient Mask: lateral inhibition in backpropagation")
    parser.add_argument("--version", action="version", version=f"gradmask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in sorted(COMMANDS.values(), key=lambda cmd: order[cmd.module]):
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, formatter_class=HelpFormatter)
        cmd.configure(p)
        p.set_defaults(run=cmd.run)
    return parser


def expected_error(exc: BaseException) -> Optional[str]:
    """The one-line message of an expected failure, None for a bug. Expected: bad input or files
    (``ValueError``, which every gradmask check raises with the file or option named), the operating
    system's refusals (``OSError``: missing file, a directory where a file should be, a full disk,
    permissions; with the file), a diverged training, an exception class that says it is one
    (``expected_failure = True``, e.g. Slurm jobs that failed, with their logs); also when one of these
    caused the exception (a run that failed in a worker process)."""
    seen = exc
    while seen is not None and not (isinstance(seen, (ValueError, OSError, TrainingDiverged))
                                    or getattr(seen, "expected_failure", False)):
        seen = seen.__cause__
    if seen is None:
        return None
    if exc is seen and isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    elif exc is seen and isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv=None) -> int:
    """Run ``gradmask ARGS``. An expected failure prints one line naming the file or option and
    returns 2; an unexpected exception prints its traceback, says it is a bug, and returns 1."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except Exception as exc:  # noqa: BLE001 - the command line's one error boundary
        message = expected_error(exc)
        if message is not None:
            print(f"gradmask {args.command}: error: {message}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"gradmask {args.command}: internal error ({type(exc).__name__}): this is a bug in gradmask "
              f"{__version__}; please report it with the traceback above and the command you ran", file=sys.stderr)
        return 1

