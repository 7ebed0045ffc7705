"""``gradmask reproduce``: every experiment of the paper the given data allows, resumable, one report."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..compare.jobs import check_jobs
from ..compare.tuning import make_tuning, parse_tune
from ..reproduce.presets import DATA_NAMES, PRESETS, make_plan, parse_data
from ..reproduce.runner import reproduce
from ..util.device import resolve_device
from .options import add_executor_arguments, device_argument, executor_from_args, register, show_default


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="quick", choices=list(PRESETS),
                        help="quick: synthetic data, ~12 min on 2 CPU cores; cifar: CIFAR-10/100 "
                             "(narrow ResNet on CPU, ResNet-18 on a GPU); paper: the paper's settings")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                        help=f"a dataset path, repeatable; NAME one of {', '.join(DATA_NAMES)}")
    show_default(parser.add_argument("--out", default=None,
                                     help="output folder; re-running resumes what is there"),
                 "runs/reproduce-<preset>")
    show_default(parser.add_argument("--seeds", type=int, default=None,
                                     help="seeds per accuracy comparison (fewer than 2 give no confidence "
                                          "interval)"), "3")
    parser.add_argument("--device", default="auto", type=device_argument,
                        help="auto, cpu, cuda or cuda:N; auto: CUDA when available. The preset's "
                             "recipes are the device type's (cuda for cuda:N)")
    parser.add_argument("--tune", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="tune Table 1's arms: FIELD (a TrainConfig field, e.g. lr=0.05,0.1,0.2; repeatable: a "
                             "grid) chosen per arm on a validation split before the final runs (replaces the "
                             "preset's tuning; cifar-full tunes lr=0.05,0.1,0.2,0.4 by itself)")
    show_default(parser.add_argument("--tune-epochs", type=int, default=None, help="epochs of a tuning run"),
                 "the preset's, else the final runs'")
    show_default(parser.add_argument("--tune-seeds", type=int, default=None, help="tuning runs per grid point"), "1")
    show_default(parser.add_argument("--val-fraction", type=float, default=None,
                                     help="share of the training images held out for tuning, in (0, 0.5]"), "0.1")
    parser.add_argument("--jobs", type=int, default=1,
                        help="training runs at a time, each in its own process with its share of the CPU threads "
                             "or a GPU of its own (round robin over the visible GPUs); the measurements run one "
                             "at a time; with --executor slurm: Slurm jobs running at a time")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (bars are drawn only on a terminal; otherwise, and with this "
                             "option, one line per training run)")
    add_executor_arguments(parser)


def tuning_from_args(args: argparse.Namespace):
    """The :class:`~gradmask.compare.tuning.Tuning` of ``--tune`` & co. (None: the preset's own)."""
    options = {"epochs": args.tune_epochs, "seeds": args.tune_seeds, "val_fraction": args.val_fraction}
    given = {k: v for k, v in options.items() if v is not None}
    if args.tune:
        return make_tuning(parse_tune(args.tune), **given)
    if given:
        own = PRESETS[args.preset].tuning
        if own is None:
            raise ValueError(f"--tune-epochs, --tune-seeds and --val-fraction need --tune FIELD=V1,V2,... "
                             f"(preset {args.preset!r} does not tune)")
        return make_tuning(own.grid, **{"epochs": own.epochs, "seeds": own.seeds, "val_fraction": own.val_fraction,
                                        **given})
    return None


@register("reproduce", "run (or resume) every experiment of the paper on the given data and write "
                       "report.md / report.html with verdicts", _configure)
def reproduce_command(args: argparse.Namespace) -> int:
    jobs = check_jobs(args.jobs)
    executor = executor_from_args(args)
    device = str(resolve_device(args.device))
    plan = make_plan(args.preset, parse_data(args.data), device, args.seeds, tuning_from_args(args))
    out = Path(args.out or f"runs/reproduce-{args.preset}")
    command = "gradmask " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"reproduce --preset {plan.preset.name} on {device}, {plan.seeds} seeds -> {out}")
    if plan.tuning is not None:
        t = plan.tuning
        print(f"  Table 1 arms tuned on a {t.val_fraction:g} validation split: "
              + "; ".join(f"{k} in {', '.join(map(str, v))}" for k, v in t.grid.items())
              + f" ({t.epochs or 'the final'} epochs, {t.seeds} seed{'s' if t.seeds != 1 else ''} per point)")
    for what, why in plan.skipped:
        print(f"  not run: {what}: {why}")
    result = reproduce(plan, out, progress=not args.no_progress, command=command,
                       log=lambda line: print(line, flush=True), jobs=jobs, executor=executor)
    if result["report"] is not None:
        import json
        verdicts = json.loads(result["report"]["json"].read_text())["sections"]
        for sec in verdicts.values():
            print(f"  {sec['title']}: {sec['verdict']}")
    return 0
