"""``gradmask compare``: train mask variants x seeds with the training flags, then write the report.

The training flags and the TrainConfig they build come from ``gradmask train``'s command module
(``gradmask.cli.train.add_train_arguments(parser)`` / ``config_from_args(args)``), so ``compare`` takes
exactly the options ``gradmask train`` takes, except ``--mask`` / ``--seed`` (replaced by ``--variants``,
``--seeds``, ``--seed-offset``) and ``--out`` (the comparison folder).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..compare.executor import open_trainer
from ..compare.jobs import check_jobs
from ..compare.report import VARIANTS, report_paths, summary_text, write_report
from ..compare.runner import check_seeds, check_variants, compare
from ..compare.tuning import DEFAULT_VAL_FRACTION, grid_points, make_tuning, parse_tune
from ..train.rundir import take_folder
from ..util.progress import RunProgress
from . import train as _train_cli
from .options import add_executor_arguments, executor_from_args, register, show_default


class _Replaced(argparse.Action):
    """A training flag that has no meaning in a comparison: using it is an error naming its replacement."""

    def __init__(self, option_strings, dest, instead: str = "", **kwargs):
        self.instead = instead
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not a compare option: use {self.instead}")


def configure(parser: argparse.ArgumentParser) -> None:
    _train_cli.add_train_arguments(parser)
    # declared after the training flags and overriding them where they clash (--out, --mask, --seed, --overwrite)
    group = parser.add_argument_group("comparison", conflict_handler="resolve")
    group.add_argument("--variants", default=",".join(VARIANTS),
                       help=f"comma-separated mask variants among {', '.join(VARIANTS)}")
    group.add_argument("--seeds", type=int, default=3, help="seeds per variant")
    group.add_argument("--seed-offset", type=int, default=0,
                       help="first seed; runs use seed-offset .. seed-offset+seeds-1")
    group.add_argument("--out", default="runs/compare",
                       help="comparison folder: one sub-folder per run, the report next to them")
    group.add_argument("--tune", action="append", default=[], metavar="FIELD=V1,V2,...",
                       help="tune FIELD (any TrainConfig field, e.g. lr=0.05,0.1,0.2; repeatable: a grid) per "
                            "variant on a validation split first; the final runs use each variant's best point")
    show_default(group.add_argument("--tune-epochs", type=int, default=None,
                                    help="epochs of a tuning run (the warm-up is scaled with them)"), "--epochs")
    group.add_argument("--tune-seeds", type=int, default=1, help="tuning runs per grid point")
    group.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, dest="tune_val_fraction",
                       help="share of the training images held out for tuning, in (0, 0.5]")
    group.add_argument("--jobs", type=int, default=1,
                       help="runs trained at a time, each in its own process with its share of the CPU threads "
                            "or, with --device cuda, a GPU of its own (round robin over the visible GPUs); "
                            "with --executor slurm: Slurm jobs running at a time")
    group.add_argument("--report-only", action="store_true",
                       help="train nothing: rewrite the report from the runs already in --out")
    group.add_argument("--overwrite", action="store_true", default=None,
                       help="train again the runs in --out whose settings differ from these options (without "
                            "it: refuse them, naming the fields that differ)")
    add_executor_arguments(parser)
    group.add_argument("--mask", action=_Replaced, instead="--variants", default="none", help=argparse.SUPPRESS)
    group.add_argument("--seed", action=_Replaced, instead="--seeds and --seed-offset", default=0,
                       help=argparse.SUPPRESS)


@register("compare", "train mask variants over several seeds, then write a report (Markdown, HTML, CSV, plots)",
          configure)
def run(args: argparse.Namespace) -> int:
    variants = check_variants(args.variants)
    check_seeds(args.seeds, args.seed_offset)
    tune = parse_tune(args.tune) if args.tune else None
    if tune is None and (args.tune_epochs is not None or args.tune_seeds != 1
                         or args.tune_val_fraction != DEFAULT_VAL_FRACTION):
        raise ValueError("--tune-epochs, --tune-seeds and --val-fraction need --tune FIELD=V1,V2,...")
    if tune is not None:
        make_tuning(tune, args.tune_epochs, args.tune_seeds, args.tune_val_fraction)  # bad input fails here
    jobs = check_jobs(args.jobs)
    executor = executor_from_args(args)
    if args.report_only:
        lock = take_folder(Path(args.out)) if Path(args.out).is_dir() else None  # a missing folder: said below
        try:
            paths = write_report(args.out)
        finally:
            if lock is not None:
                lock.release()
    else:
        base = _train_cli.config_from_args(args)
        tuning_runs = 0 if tune is None else args.tune_seeds * sum(
            len(grid_points(make_tuning(tune, args.tune_epochs, args.tune_seeds, args.tune_val_fraction), v))
            for v in variants)
        progress = RunProgress(len(variants) * args.seeds + tuning_runs, bar=sys.stderr.isatty(), jobs=jobs)
        try:
            with open_trainer(executor, jobs, getattr(base, "device", "cpu"), args.out,
                              log=lambda line: print(line, flush=True)) as trainer:
                compare(base, variants=variants, seeds=args.seeds, out=args.out, seed_offset=args.seed_offset,
                        tune=tune, tune_epochs=args.tune_epochs, tune_seeds=args.tune_seeds,
                        val_fraction=args.tune_val_fraction, train_fn=progress.wrap(trainer), jobs=jobs)
        finally:
            progress.close()
        paths = report_paths(args.out)
    print(summary_text(args.out), end="")
    print(f"report: {paths['markdown']} and {paths['html']} (figures {paths['accuracy'].name}, "
          f"{paths['loss'].name}; raw numbers {paths['csv'].name}, {paths['json'].name})")
    return 0
