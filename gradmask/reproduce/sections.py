"""The pieces every section of the reproduce report shares: :class:`Section` (one table or figure
of the paper: blocks, numbers, verdicts, budget, warnings), number formatting, the finished runs
of a folder and their budget / setting lines, chance-level warnings, and the seed-curve figure."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from ..compare import chosen_at_edges, load_runs
from ..data import DATASETS
from ..util.durations import format_duration
from ..util.progress import counted
from ..util.reporting import arm_colors, evaluation_warnings, figure, save_figure
from . import paper
from .runs import FIGURES, runs_dir
from .verdict import difference_interval, headline, verdict

METHOD_NAMES = {"limap": "LI-Map", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}


# ------------------------------------------------------------------------------ formatting
def finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def mean_std(values, scale: float = 1.0, digits: int = 2) -> str:
    vals = [v * scale for v in values if finite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f} (1 run)"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def interval_text(ci, scale: float = 1.0, digits: int = 2) -> str:
    if not finite(ci.diff):
        return "n/a"
    if not (finite(ci.low) and finite(ci.high)):
        return f"{ci.diff * scale:+.{digits}f} (no interval: < 2 values)"
    return f"{ci.diff * scale:+.{digits}f} [{ci.low * scale:+.{digits}f}, {ci.high * scale:+.{digits}f}]"


def paper_value(v, digits: int = 2) -> str:
    """A number of the paper: shown only where ours are measured on the paper's data (else None: —)."""
    return "—" if v is None else f"{v:.{digits}f}"


def median(values) -> float:
    vals = [v for v in values if finite(v)]
    return float(np.median(vals)) if vals else math.nan


# ------------------------------------------------------------------------------ figures
def plot_seed_curves(path: Path, curves: dict, xlabel: str, ylabel: str, title: str, scale: float = 1.0) -> Path:
    """``curves``: ``{label: [[(x, y), ...] per seed]}`` -> mean line with a min-max band per label."""
    fig = figure(6.4, 4.0)
    ax = fig.subplots()
    colors = arm_colors(curves)
    for label, per_seed in curves.items():
        per_seed = [c for c in per_seed if c]
        if not per_seed:
            continue
        xs = [x for x, _ in per_seed[0]]
        ys = np.array([[y * scale if finite(y) else np.nan for _, y in c] for c in per_seed], dtype=float)
        color = colors[label]
        ax.plot(xs, np.nanmean(ys, 0), "o-", color=color, label=f"{label} (mean of {len(per_seed)})")
        if len(per_seed) > 1:
            ax.fill_between(xs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=color, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ sections
class Section:
    """One table or figure of the paper: blocks for the report and its numbers for results.json."""

    def __init__(self, claim: paper.Claim):
        self.claim = claim
        self.blocks: list[tuple] = [("h2", claim.title)]
        self.numbers: dict = {}
        self.verdicts: list[tuple[str, str]] = []   # (what was tested, verdict)
        self.kinds: dict[str, str] = {}             # what was tested -> its kind, when not "accuracy" (e.g. "cost")
        self.budget = "no finished run"             # training images x epochs, seeds, model, tuned or not
        self.warnings: list[str] = []               # the models are near chance, the images one class, ...

    def measured_on(self, runs: list, tuning: Optional[dict]) -> None:
        """The runs behind the section: its budget line and its warnings about them."""
        self.budget = budget(runs, tuning)
        self.warnings += chance_warnings(runs)

    @property
    def verdict(self) -> str:
        """The headline (:func:`gradmask.reproduce.verdict.headline`) over the parts' verdicts."""
        return headline((self.kinds.get(what, "accuracy"), v) for what, v in self.verdicts)

    def finish(self, setting: str) -> None:
        numbers = "; ".join(f"{row}: " + ", ".join(f"{k} {v:g}" for k, v in cols.items())
                            for row, cols in self.claim.numbers.items())
        self.blocks.insert(1, ("p", f"**Paper:** {self.claim.claim} ({self.claim.setting})."
                                    + (f" Its numbers: {numbers}." if numbers else "")))
        self.blocks.insert(2, ("p", f"**Our setting:** {setting}"))
        lines = "; ".join(f"{what}: **{v}**" for what, v in self.verdicts) or "nothing measured"
        if self.warnings:
            self.blocks.append(("p", "**Warning:** " + "; ".join(self.warnings) + "."))
        self.blocks.append(("p", f"**Verdict: {self.verdict}** ({lines}). Budget: {self.budget}."))


def finished_runs(out: Path, dataset: str, augment: Optional[str] = None, ablation: bool = False) -> dict:
    """``{variant: [finished Run, ...]}`` of a dataset's folder."""
    folder = runs_dir(out, dataset, augment, ablation)
    by_variant: dict = {}
    if folder.is_dir():
        for r in load_runs(folder):
            if r.finished:
                by_variant.setdefault(r.variant, []).append(r)
    return by_variant


def train_images(config: dict) -> Optional[int]:
    """Training images per epoch of a run's config (None when unknown)."""
    spec = DATASETS.get(config.get("dataset"))
    full = None if spec is None else config.get("synthetic_train") if spec.rendered else spec.train_images
    limit = config.get("train_limit")
    return full if limit is None else (limit if full is None else min(limit, full))


def budget(runs: list, tuning: Optional[dict]) -> str:
    """``"50,000 training images x 15 epochs, 3 seeds, resnet18_narrow, tuned: lr per arm on a 10%
    validation split (chosen at the grid's edge: none: largest lr)"``: what a verdict was measured at
    (``tuning``: the runs' tuning.json or None)."""
    if not runs:
        return "no finished run"
    images = sorted({n for n in (train_images(r.config) for r in runs) if n is not None})
    epochs = sorted({r.epochs_done for r in runs})
    models = sorted({str(r.config.get("model")) for r in runs})
    tuned = ("not tuned (one setting for every arm)" if tuning is None else
             f"tuned: {', '.join(tuning['grid'])} per arm on a {tuning['val_fraction']:.0%} validation split")
    if tuning is not None:
        edges = [f"{v}: {size} {name}" for v, name, size in chosen_at_edges(tuning)]
        tuned += f" (chosen at the grid's edge: {', '.join(edges)})" if edges else ""
    seeds = len({r.seed for r in runs})
    return (f"{' / '.join(f'{n:,}' for n in images) or 'all'} training images x "
            f"{' / '.join(map(str, epochs))} epoch{'s' if max(epochs) != 1 else ''}, "
            f"{seeds} seed{'s' if seeds != 1 else ''}, {', '.join(models)}, {tuned}")


def chance_warnings(runs: list) -> list[str]:
    """Warnings for the arms (dataset, variant, augmentation) of ``runs`` whose mean final test
    accuracy is near chance (:func:`gradmask.util.reporting.evaluation_warnings`)."""
    arms: dict[tuple, list[float]] = {}
    for r in runs:
        if (acc := r.value("test_acc")) is not None:
            arms.setdefault((r.config.get("dataset"), r.variant, r.config.get("augment")), []).append(acc)
    warnings = []
    for (dataset, variant, augment), accs in arms.items():
        name = f"{variant} + li-blur" if augment == "li-blur" else variant
        classes = DATASETS[dataset].num_classes if dataset in DATASETS else None   # chance level: 1 / classes
        warnings += evaluation_warnings(float(np.mean(accs)), classes,
                                        what=f"{name} on {dataset} (the mean final test accuracy of its runs)")
    return warnings


def per_variant(runs: list, key: str) -> str:
    """A config value, or ``value (variant) / ...`` when the variants' runs differ (tuned arms)."""
    by_variant = {}
    for r in runs:
        by_variant.setdefault(r.variant, set()).add(str(r.config.get(key)))
    values = {v for vs in by_variant.values() for v in vs}
    if len(values) == 1:
        return values.pop()
    return " / ".join(f"{'/'.join(sorted(vs))} ({v})" for v, vs in by_variant.items())


def run_setting(runs: list, state: dict) -> str:
    if not runs:
        return "no finished run"
    c = runs[0].config
    images = train_images(c) or "all"
    seconds = sum(r.train_seconds or 0.0 for r in runs)
    seeds = sorted({r.seed for r in runs})
    augments = " / ".join(dict.fromkeys(str(r.config.get("augment")) for r in runs))
    return (f"{c.get('dataset')} ({images} training images, {c.get('test_limit') or 'all'} test images), "
            f"{c.get('model')} (groups {c.get('groups')}, sigma {c.get('sigma')}, kernel {c.get('kernel_size')}, "
            f"rate {per_variant(runs, 'inhibition_rate')}), {c.get('epochs')} epochs, batch {c.get('batch_size')}, "
            f"lr {per_variant(runs, 'lr')} {c.get('schedule')}, augment {augments}, seeds {seeds}, device "
            f"{runs[0].final.get('device', state.get('device'))}, training wall time "
            f"{format_duration(seconds, 'report')} "
            f"({counted(len(runs), 'run')}).")


def accuracies(runs: list) -> list[float]:
    return [r.value("test_acc") for r in runs if r.value("test_acc") is not None]


def mean_beyond_zero(curve, skip_zero: bool = True) -> float:
    vals = [y for x, y in curve if (x > 0 or not skip_zero) and finite(y)]
    return float(np.mean(vals)) if vals else math.nan


def compare_curves(s: Section, out: Path, png: str, curves: dict, what: str, xlabel: str, title: str):
    """``curves``: ``{key: (label, [accuracy curve per seed])}``, the baseline first. Per seed the
    mean accuracy over the points with x > 0; the verdict on (second − first) over seeds; the
    figure. Returns ``(means by key, interval, figure path)``."""
    (base, (base_label, base_curves)), (test, (test_label, test_curves)) = curves.items()
    means = {base: [mean_beyond_zero(c) for c in base_curves], test: [mean_beyond_zero(c) for c in test_curves]}
    ci = difference_interval(means[test], means[base])
    s.verdicts.append((what, verdict(ci)))
    path = plot_seed_curves(out / FIGURES / png, {base_label: base_curves, test_label: test_curves}, xlabel,
                            "top-1 accuracy (%)", title, 100)
    return means, ci, path
