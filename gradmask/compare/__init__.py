"""The experiment API: run a plan of runs (mask arms x seeds, each arm optionally tuned first) and read the
results back. ``gradmask reproduce`` uses these names only (an import-linter contract keeps it off the modules).

    from gradmask.train import TrainConfig
    from gradmask.compare import compare, write_report
    cfg = TrainConfig.from_preset("quick")
    compare(cfg, variants=("none", "lateral"), seeds=3, out="runs/compare")   # trains, then reports
    write_report("runs/compare")                                              # report only

Plan and run: :func:`compare` (arms are mask modes or modes with overrides, ``"lateral@sigma=1"``),
:func:`run_dir`, :func:`run_order`, :func:`check_variants`, :func:`check_seeds`, a :class:`Tuning` grid
(:func:`make_tuning`, :func:`parse_tune`, :func:`grid_points`), where runs train (:func:`check_jobs`,
:func:`check_executor`, :func:`open_trainer`).
Read results: :func:`load_runs`, :func:`summarize_runs`, :func:`write_report`, :func:`report_paths`,
:func:`read_manifest`, :func:`read_tuning`, :func:`tuning_blocks`, :func:`chosen_at_edges`,
:func:`epoch_difference`, :func:`arm_mechanisms`, :func:`mechanism_blocks`, the statistics
(:func:`diff_confidence_interval`, :class:`DiffInterval`, :func:`summarize`, :class:`Summary`, :func:`welch_dof`).

Modules: ``runner`` (training loop over variants x seeds), ``report`` (run dirs -> CSV/JSON, PNG,
Markdown, self-contained HTML), ``stats`` (summaries, Welch's t interval), ``tuning``, ``mechanism``,
``manifest``, ``executor`` / ``jobs`` / ``slurm`` (where runs train); the command is :mod:`gradmask.cli.compare`.
"""
from .executor import check_executor, open_trainer
from .jobs import check_jobs
from .manifest import read_manifest
from .mechanism import arm_mechanisms, mechanism_blocks
from .report import (
    VARIANTS,
    Run,
    epoch_difference,
    load_runs,
    report_paths,
    summarize_runs,
    tuning_blocks,
    write_report,
)
from .runner import check_seeds, check_variants, compare, run_dir, run_order
from .stats import DiffInterval, Summary, diff_confidence_interval, summarize, welch_dof
from .tuning import Tuning, chosen_at_edges, grid_points, make_tuning, parse_tune, read_tuning

__all__ = [
    # plan and run
    "compare", "run_dir", "run_order", "check_variants", "check_seeds", "Tuning", "make_tuning", "parse_tune",
    "grid_points", "check_jobs", "check_executor", "open_trainer",
    # read results
    "VARIANTS", "Run", "load_runs", "summarize_runs", "write_report", "report_paths", "read_manifest", "read_tuning",
    "tuning_blocks", "chosen_at_edges", "epoch_difference", "arm_mechanisms", "mechanism_blocks", "summarize",
    "diff_confidence_interval", "welch_dof", "Summary", "DiffInterval",
]
