"""``gradmask reproduce``: every experiment of the paper the given data allows, resumable, one report."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


from ..cli import register
from ..device import resolve_device
from .presets import DATA_NAMES, PRESETS, make_plan, parse_data
from .runner import reproduce


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="quick", choices=list(PRESETS),
                        help="quick: synthetic data, ~10 min on 2 CPU cores (default); cifar: CIFAR-10/100 "
                             "(narrow ResNet on CPU, ResNet-18 on a GPU); paper: the paper's settings")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                        help=f"a dataset path, repeatable; NAME one of {', '.join(DATA_NAMES)}")
    parser.add_argument("--out", default=None, help="output folder (default runs/reproduce-<preset>); "
                                                    "re-running resumes what is there")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per accuracy comparison (default 3; fewer gives no confidence interval)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when available (default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars in the evaluations")


@register("reproduce", "run (or resume) every experiment of the paper on the given data and write "
                       "report.md / report.html with verdicts", _configure)
def reproduce_command(args: argparse.Namespace) -> int:
    device = resolve_device(args.device).type
    plan = make_plan(args.preset, parse_data(args.data), device, args.seeds)
    out = Path(args.out or f"runs/reproduce-{args.preset}")
    command = "gradmask " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"reproduce --preset {plan.preset.name} on {device}, {plan.seeds} seeds -> {out}")
    for what, why in plan.skipped:
        print(f"  not run: {what}: {why}")
    result = reproduce(plan, out, progress=not args.no_progress, command=command,
                       log=lambda line: print(line, flush=True))
    if result["report"] is not None:
        import json
        verdicts = json.loads(result["report"]["json"].read_text())["sections"]
        for key, sec in verdicts.items():
            print(f"  {sec['title']}: {sec['verdict']}")
    return 0
