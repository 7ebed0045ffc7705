"""``gradmask status PATH``: what the run folders under PATH are doing (:mod:`gradmask.train.status`)
and, for a ``gradmask reproduce`` folder, which of its steps have finished. Reads files only."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..reproduce.store import read_state
from ..train.status import scan, status_text
from ..util.durations import format_duration
from .options import register


def steps_text(root) -> str:
    """For a ``gradmask reproduce`` folder: its finished steps with their wall times, in the order they
    finished; ``""`` for any other folder (or an unreadable ``reproduce.json``)."""
    try:
        state = read_state(root)
    except (OSError, json.JSONDecodeError):
        return ""
    steps = state.get("steps") if isinstance(state, dict) else None
    if not isinstance(steps, dict):
        return ""
    done = [f"{name} ({format_duration(record.get('wall_seconds'), 'clock')})" for name, record in steps.items()
            if isinstance(record, dict)]
    return (f"reproduce --preset {state.get('preset', '?')}: {len(done)} step{'s' if len(done) != 1 else ''} "
            f"finished{': ' + ', '.join(done) if done else ''}\n")


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a run folder, or a folder holding run folders (compare, reproduce): all are listed")
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of the table")


@register("status", "what the run folders under PATH are doing: finished, training (by which process) or "
                    "stopped, epochs, last accuracy, time per epoch, time left; reads files only", _status_arguments)
def status_command(args: argparse.Namespace) -> int:
    for path in args.paths:
        runs = scan(path)
        if args.json:
            for r in runs:
                print(json.dumps({"run": str(r.path), "state": r.state, "epochs_done": r.epochs_done,
                                  "epochs_planned": r.epochs_planned, "last_acc": r.last_acc, "split": r.split,
                                  "epoch_seconds": r.epoch_seconds, "eta_seconds": r.eta_seconds,
                                  "owner": r.owner}))
        else:
            print(f"{path}:")
            print(status_text(Path(path), runs), end="")
            print(steps_text(path), end="")
    return 0


__all__ = ["status_command", "steps_text"]
