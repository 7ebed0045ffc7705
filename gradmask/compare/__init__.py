"""Compare mask variants over several seeds and write a report.

    from gradmask.train import TrainConfig
    from gradmask.compare import compare, write_report
    cfg = TrainConfig.from_preset("quick")
    compare(cfg, variants=("none", "lateral"), seeds=3, out="runs/compare")   # trains, then reports
    write_report("runs/compare")                                              # report only

Modules: ``runner`` (training loop over variants x seeds), ``report`` (run dirs -> CSV/JSON, PNG,
Markdown, self-contained HTML), ``stats`` (summaries, Welch's t interval), ``cli`` (``gradmask compare``).
"""
from .report import VARIANTS, Run, load_runs, summarize_runs, write_report
from .runner import check_seeds, check_variants, compare, run_dir, run_order
from .stats import DiffInterval, Summary, diff_confidence_interval, summarize, welch_dof

__all__ = ["VARIANTS", "Run", "load_runs", "summarize_runs", "write_report", "compare", "run_order", "run_dir",
           "check_variants", "check_seeds", "summarize", "diff_confidence_interval", "welch_dof",
           "Summary", "DiffInterval"]
