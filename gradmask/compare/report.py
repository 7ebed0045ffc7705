"""The comparison report, drawn only from run directories (so it can be rewritten for old results).

A run directory (written by :func:`gradmask.train.train`) holds ``config.json`` (the TrainConfig and
``gradmask_version``), ``metrics.jsonl`` (one object per finished epoch) and, once finished,
``final.json``. The runs of a comparison are those its ``manifest.json`` lists (:mod:`.manifest`),
each read with its records verified (:func:`gradmask.train.records.read_run`).
:func:`write_report` writes next to them:

- ``results.csv`` / ``results.json``: one row per run (the raw numbers the table is drawn from);
- ``accuracy.png`` / ``loss.png``: test top-1 and train loss per epoch, mean over seeds with a
  min-max band, one colour per variant;
- ``report.md`` and a self-contained ``report.html`` (inline CSS, figures as data URIs).

Only finished runs (with ``final.json``) enter the averages; unfinished ones are listed as such.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..data import DATASETS
from ..robustness import plot_gsnr
from ..settings import MASK_MODES
from ..train.config import field_applies
from ..train.records import CONFIG, RunRecords, read_run
from ..util.durations import format_duration
from ..util.files import write_atomic, write_csv
from ..util.reporting import arm_colors, figure, render_html, render_markdown, save_figure
from .manifest import MANIFEST, UnlistedRunWarning, older_comparison, read_manifest
from .mechanism import arm_mechanisms, mechanism_blocks
from .stats import DiffInterval, Summary, diff_confidence_interval, interval_contains_zero, summarize
from .tuning import check_chosen, chosen_at_edges, grid_edges, point_label, read_tuning

VARIANTS = MASK_MODES
"""The mask variants ``compare`` trains, in report order (anything else sorts after them)."""

CI_LEVEL = 0.95
BASELINE = "none"

# keys of config.json that differ between the runs of one comparison by construction
_PER_RUN_KEYS = {"mask", "arm", "seed", "out", "resume"}
# TrainConfig fields about logging / bookkeeping, not the experiment: left out of the setting table
_NOT_SETTING_KEYS = {"overwrite", "progress", "tensorboard", "machine"}
# setting keys shown first (matched on the last component of a flattened key), in this order
_PREFERRED_KEYS = [
    "dataset", "data", "train_limit", "test_limit", "synthetic_train", "synthetic_test", "synthetic_clutter",
    "model", "num_classes", "stem", "image_size", "epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov",
    "weight_decay", "schedule", "milestones", "gamma", "warmup_epochs", "label_smoothing", "augment",
    "inhibition_rate", "groups", "sigma", "kernel_size", "kernel", "padding", "targets", "skip_last",
    "device", "amp", "channels_last", "compile", "num_workers",
]


# --------------------------------------------------------------------------------------------- runs

@dataclass
class Run:
    """One run directory: its config, per-epoch metrics and (when finished) final metrics."""
    path: Path
    config: dict
    metrics: list[dict] = field(default_factory=list)
    final: dict | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def variant(self) -> str:
        """The run's arm: ``arm`` (a mode with overrides, e.g. ``lateral@sigma=1``), else its ``mask``."""
        return str(self.config.get("arm") or self.config.get("mask", "none"))

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return int(seed) if seed is not None else None

    @property
    def finished(self) -> bool:
        return self.final is not None

    @property
    def epochs_done(self) -> int:
        if self.final is not None and self.final.get("epochs") is not None:
            return int(self.final["epochs"])
        return int(self.metrics[-1]["epoch"]) if self.metrics else 0

    @property
    def epochs_planned(self) -> int | None:
        epochs = self.config.get("epochs")
        return int(epochs) if epochs is not None else None

    def value(self, key: str) -> float | None:
        """``final.json[key]`` for a finished run, else the last epoch's ``key`` (None if absent)."""
        if self.final is not None and self.final.get(key) is not None:
            return float(self.final[key])
        if self.metrics and self.metrics[-1].get(key) is not None:
            return float(self.metrics[-1][key])
        return None

    @property
    def train_seconds(self) -> float | None:
        if self.final is not None and self.final.get("train_seconds") is not None:
            return float(self.final["train_seconds"])
        seconds = [m.get("epoch_seconds") for m in self.metrics]
        return float(sum(seconds)) if seconds and all(s is not None for s in seconds) else None

    @property
    def mask_kept(self) -> float | None:
        """Mean over targets of the last epoch's kept fraction (None for vanilla / not recorded)."""
        kept = self.metrics[-1].get("mask_kept") if self.metrics else None
        if not kept:
            return None
        values = [float(v) for v in kept.values() if v is not None]
        return sum(values) / len(values) if values else None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        epochs, values = [], []
        for m in self.metrics:
            if m.get(key) is not None:
                epochs.append(int(m["epoch"]))
                values.append(float(m[key]))
        return epochs, values


def values_by_epoch(runs: Iterable[Run], key: str = "test_acc") -> dict[int, list[float]]:
    """``{epoch: [the value of ``key`` after that epoch, one per run that recorded it]}``."""
    values: dict[int, list[float]] = {}
    for r in runs:
        for epoch, value in zip(*r.series(key)):
            values.setdefault(epoch, []).append(value)
    return values


def epoch_difference(runs: Iterable[Run], baseline: Iterable[Run], scale: float = 1.0
                     ) -> list[tuple[int, DiffInterval]]:
    """``[(epoch, Welch interval of mean test top-1 of runs minus baseline's, times scale)]`` over the
    runs, for every epoch recorded by both."""
    a, b = values_by_epoch(runs), values_by_epoch(baseline)
    return [(e, diff_confidence_interval([scale * v for v in a[e]], [scale * v for v in b[e]], CI_LEVEL))
            for e in sorted(set(a) & set(b))]


def epoch_differences(summaries: list[VariantSummary]) -> dict[str, list[tuple[int, DiffInterval]]]:
    """Per variant other than the baseline: :func:`epoch_difference` of its finished runs to the
    baseline's, in percentage points."""
    base = next((s for s in summaries if s.variant == BASELINE), None)
    if base is None or not base.finished:
        return {}
    return {s.variant: epoch_difference(s.finished, base.finished, 100.0)
            for s in summaries if s.variant != BASELINE and s.finished}


def _json_number(x):
    """``x`` for JSON: None for None or NaN."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def variant_order(names: Iterable[str]) -> list[str]:
    """Distinct variant names: none, lateral, norm, pixel first, then the others alphabetically."""
    names = set(names)
    known = [v for v in VARIANTS if v in names]
    return known + sorted(names - set(VARIANTS))


def _run(records: RunRecords) -> Run:
    return Run(records.path, records.config, records.metrics, records.final)


def _listed_runs(out: Path, folders: list[Path]) -> tuple[list[Run], list[str]]:
    """The runs ``out``'s manifest lists (``folders``: every sub-folder holding a run), each checked
    against its entry; the others are ignored with a warning. Returns ``(runs, unverified files)``."""
    manifest = read_manifest(out)
    runs, unverified = [], []
    for entry in manifest.runs:
        folder = out / entry.folder
        if not (folder / CONFIG).is_file():
            continue  # listed, not started yet
        records = read_run(folder, warn=False)
        run = _run(records)
        if (run.variant, run.seed) != entry.key:
            raise ValueError(f"run {folder} holds {run.variant} seed {run.seed}, but the comparison's manifest "
                             f"({out / MANIFEST}) lists it as {entry.variant} seed {entry.seed}: a run was put in "
                             f"another's folder")
        if entry.final is not None and records.final_checksum != entry.final:
            raise ValueError(f"run result {folder / 'final.json'} is not the one the comparison's manifest "
                             f"({out / MANIFEST}) recorded for {entry.variant} seed {entry.seed} "
                             f"({'the run is not finished' if records.final is None else 'another result'}): the "
                             f"run was trained again or replaced outside `gradmask compare`; run the same compare "
                             f"command again to record it")
        runs.append(run)
        unverified += [str(folder / name) for name in records.unverified]
    listed = {out / entry.folder for entry in manifest.runs}
    unlisted = [p.name for p in folders if p not in listed]
    if unlisted:
        warnings.warn(f"{out}: ignored {len(unlisted)} folder(s) holding a run that the comparison's manifest does not "
                      f"list: {', '.join(unlisted)} (copies or runs of another experiment; not in the report)",
                      UnlistedRunWarning, stacklevel=3)
    return runs, unverified


def _found_runs(out: Path, folders: list[Path]) -> tuple[list[Run], list[str]]:
    """A comparison written before manifests: every sub-folder holding a run; two of one (variant,
    seed) are an error naming both. Returns ``(runs, unverified files)``."""
    runs, unverified, seen = [], [], {}
    for folder in folders:
        records = read_run(folder, warn=False)
        run = _run(records)
        twin = seen.setdefault((run.variant, run.seed), run)
        if twin is not run:
            raise ValueError(f"{out} holds two runs of {run.variant} seed {run.seed}: {twin.name} and {run.name} (a "
                             f"copy, or runs of two experiments); move one out of the comparison folder")
        runs.append(run)
        unverified += [str(folder / name) for name in records.unverified]
    return runs, unverified


def load_runs(out_dir: str | os.PathLike) -> list[Run]:
    """The runs of comparison folder ``out_dir`` with their records verified
    (:func:`gradmask.train.records.read_run`), ordered by variant then seed: those its manifest
    lists (other folders holding a run are ignored with an :class:`UnlistedRunWarning`), or, for a
    comparison written before manifests, every sub-folder holding a ``config.json`` (said once,
    with the files read unverified; two runs of one variant and seed are an error naming both).
    The runs of a tuned variant must have been trained at the point its ``tuning.json`` chose.

    ``metrics.jsonl`` holds the finished epochs (a run killed during its first epoch has none yet);
    a run is finished when ``final.json`` exists. A last metrics line cut short is ignored.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"compare output folder {out} does not exist")
    folders = sorted(p for p in out.iterdir() if p.is_dir() and (p / CONFIG).is_file())
    if (out / MANIFEST).is_file():
        runs, unverified = _listed_runs(out, folders)
        why = []
    else:
        runs, unverified = _found_runs(out, folders)
        why = [f"no {MANIFEST}: its runs are the folders found"] if runs else []
    if unverified:
        why.append(f"{len(unverified)} run record(s) without checksums")
    if why:
        older_comparison(out, "; ".join(why))
    tuning = read_tuning(out)
    if tuning is not None:
        check_chosen(tuning, [(r.variant, r.name, r.config) for r in runs], out)
    order = {v: i for i, v in enumerate(variant_order(r.variant for r in runs))}
    runs.sort(key=lambda r: (order[r.variant], r.seed if r.seed is not None else math.inf, r.name))
    return runs


# ------------------------------------------------------------------------------------------ numbers

@dataclass
class VariantSummary:
    variant: str
    finished: list[Run]
    unfinished: list[Run]
    top1: Summary                   # percent
    top5: Summary                   # percent
    train_seconds: Summary
    delta: DiffInterval | None      # percentage points vs the baseline; None for the baseline itself

    def to_json(self) -> dict:
        num = _json_number
        return {
            "variant": self.variant,
            "finished_runs": len(self.finished),
            "unfinished_runs": len(self.unfinished),
            "seeds": [r.seed for r in self.finished],
            "epochs": sorted({r.epochs_done for r in self.finished}),
            "top1_mean_pct": num(self.top1.mean), "top1_std_pct": num(self.top1.std),
            "top5_mean_pct": num(self.top5.mean), "top5_std_pct": num(self.top5.std),
            "delta_vs_none_pp": num(self.delta.diff) if self.delta else None,
            "ci_low_pp": num(self.delta.low) if self.delta else None,
            "ci_high_pp": num(self.delta.high) if self.delta else None,
            "ci_level": CI_LEVEL,
            "train_seconds_mean": num(self.train_seconds.mean),
        }


def summarize_runs(runs: list[Run]) -> list[VariantSummary]:
    """Per variant (report order): stats over finished runs and Welch's interval of Δ vs ``none``."""
    def pct(rs, key):
        return [100.0 * v for v in (r.value(key) for r in rs) if v is not None]

    base = [r for r in runs if r.variant == BASELINE and r.finished]
    base_top1 = pct(base, "test_acc")
    out = []
    for variant in variant_order(r.variant for r in runs):
        mine = [r for r in runs if r.variant == variant]
        finished = [r for r in mine if r.finished]
        top1 = pct(finished, "test_acc")
        delta = None
        if variant != BASELINE and top1 and base_top1:
            delta = diff_confidence_interval(top1, base_top1, CI_LEVEL)
        seconds = [s for s in (r.train_seconds for r in finished) if s is not None]
        out.append(VariantSummary(variant, finished, [r for r in mine if not r.finished], summarize(top1),
                                  summarize(pct(finished, "test_top5")), summarize(seconds), delta))
    return out


RESULT_FIELDS = ["variant", "seed", "finished", "epochs_done", "epochs_planned", "test_acc", "test_top5",
                 "test_loss", "train_seconds", "mask_kept", "device", "run"]


def result_rows(runs: list[Run]) -> list[dict]:
    """One row per run. Accuracies are fractions; for unfinished runs they are the last epoch's."""
    rows = []
    for r in runs:
        rows.append({
            "variant": r.variant, "seed": r.seed, "finished": r.finished, "epochs_done": r.epochs_done,
            "epochs_planned": r.epochs_planned, "test_acc": r.value("test_acc"),
            "test_top5": r.value("test_top5"), "test_loss": r.value("test_loss"),
            "train_seconds": r.train_seconds, "mask_kept": r.mask_kept,
            "device": (r.final or {}).get("device"), "run": r.name,
        })
    return rows


# ---------------------------------------------------------------------------------------- formatting

def _nan(x: float | None) -> bool:
    return x is None or math.isnan(x)


def fmt_mean_std(s: Summary) -> str:
    if s.n == 0:
        return "–"
    if s.n < 2:
        return f"{s.mean:.2f}"
    return f"{s.mean:.2f} ± {s.std:.2f}"


def fmt_ci(ci: DiffInterval | None) -> str:
    if ci is None:
        return "–"
    if _nan(ci.low):
        return "not established (n < 2)"
    return f"[{ci.low:+.2f}, {ci.high:+.2f}]"


def _fmt_value(v: Any) -> str:
    if v is None:
        return "None"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt_value(x) for x in v) if v else "[]"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def _applies(key: str, config: dict) -> bool:
    """Whether setting ``key`` (a config.json key) changes the run of ``config``: the ``synthetic_*``
    fields only on rendered data (sizes; the others where the dataset's ``render_fields`` name
    them), ``milestones`` / ``gamma`` only with the multistep schedule, the
    warm-up of the inhibition only with a schedule that has one, mask fields only for the masks they
    change (:func:`gradmask.train.config.field_applies`)."""
    spec = DATASETS.get(config.get("dataset"))
    if key.startswith("synthetic_") and not (spec is not None and spec.rendered and (
            key in ("synthetic_train", "synthetic_test") or key[len("synthetic_"):] in spec.render_fields)):
        return False
    if key in ("milestones", "gamma") and config.get("schedule") != "multistep":
        return False
    if key == "inhibition_warmup" and config.get("inhibition_schedule", "constant") == "constant":
        return False
    return field_applies(key, str(config.get("mask", "lateral")))


def setting(runs: list[Run]) -> list[tuple[str, str]]:
    """``(key, value)`` rows: the config shared by the runs (preferred keys first), values that
    differ between runs (other than mask/seed/out), and device / parameters / version. A key that
    changes none of the runs (:func:`_applies`) is left out."""
    flats = [_flatten({k: v for k, v in r.config.items() if k not in _PER_RUN_KEYS | _NOT_SETTING_KEYS
                       and any(_applies(k, other.config) for other in runs)}) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    rank = {k: i for i, k in enumerate(_PREFERRED_KEYS)}
    keys.sort(key=lambda k: (k in ("gradmask_version", "trained_by"), rank.get(k.rsplit(".", 1)[-1], len(rank)), k))
    rows = []
    for k in keys:
        values = list(dict.fromkeys(_fmt_value(f.get(k)) for f in flats))
        rows.append((k, values[0] if len(values) == 1 else "differs between runs: " + " / ".join(values)))
    finals = [r.final for r in runs if r.final]
    for key, label in (("device", "device (final.json)"), ("num_params", "parameters")):
        values = list(dict.fromkeys(_fmt_value(f.get(key)) for f in finals if f.get(key) is not None))
        if values:
            rows.append((label, " / ".join(values)))
    return rows


def _common(runs: list[Run], key: str) -> str | None:
    values = {_fmt_value(r.config.get(key)) for r in runs if r.config.get(key) is not None}
    return values.pop() if len(values) == 1 else (" / ".join(sorted(values)) if values else None)


def _seed_text(summaries: list[VariantSummary]) -> str:
    counts = {s.variant: len(s.finished) for s in summaries}
    if len(set(counts.values())) == 1:
        n = next(iter(counts.values()))
        seeds = sorted({r.seed for s in summaries for r in s.finished if r.seed is not None})
        seed_list = f" (seeds {', '.join(map(str, seeds))})" if seeds else ""
        return f"{n} finished seed{'s' if n != 1 else ''} per variant{seed_list}"
    return "finished seeds per variant: " + ", ".join(f"{v} {n}" for v, n in counts.items())


def _epoch_text(runs: list[Run]) -> str:
    finished = [r for r in runs if r.finished]
    epochs = sorted({r.epochs_done for r in finished}) or sorted({r.epochs_planned for r in runs
                                                                   if r.epochs_planned is not None})
    if not epochs:
        return "an unknown number of epochs"
    if len(epochs) == 1:
        return f"{epochs[0]} epoch{'s' if epochs[0] != 1 else ''}"
    return "/".join(map(str, epochs)) + " epochs (runs differ)"


def tuning_text(tuning: dict | None, variants: Iterable[str]) -> str:
    """Whether and how the arms ``variants`` were tuned (``tuning``: the comparison's tuning.json)."""
    if tuning is None:
        return "arms not tuned: every variant at the same settings"
    chosen = []
    for v in variants:
        record = tuning["variants"].get(v)
        if not (record and record["tuned"]):
            chosen.append(f"{v} not tuned (no tuned field applies)")
            continue
        edges = grid_edges(tuning["grid"], record["chosen"])
        edge = f" ({', '.join(f'{size} {name}' for name, size in edges.items())} of the grid)" if edges else ""
        chosen.append(f"{v} at {point_label(record['chosen'])}{edge}")
    return f"arms tuned on a {tuning['val_fraction']:.0%} validation split: " + ", ".join(chosen)


def conclusions(runs: list[Run], summaries: list[VariantSummary], tuning: dict | None = None) -> list[str]:
    """The sentences under the table: seeds and epochs, then one verdict per variant vs none, each
    saying whether the arms were tuned (``tuning``: the comparison's tuning.json, or None)."""
    level = f"{CI_LEVEL:.0%}"
    trained = (f"Each variant was trained for {_epoch_text(runs)}; {_seed_text(summaries)}."
               if any(r.finished for r in runs) else
               f"No run has finished yet ({_epoch_text(runs)} planned), so no difference is established.")
    lines = [f"{trained} The table shows "
             f"the mean ± sample standard deviation over seeds of the final test accuracy of finished runs; "
             f"Δ is the difference of means from '{BASELINE}' in percentage points with Welch's {level} "
             f"t interval (seeds as independent samples)."]
    base = next((s for s in summaries if s.variant == BASELINE), None)
    for s in summaries:
        if s.variant == BASELINE:
            continue
        if base is None or not base.finished:
            lines.append(f"{s.variant}: no finished '{BASELINE}' runs to compare against, so the "
                         f"difference is not established.")
            continue
        if not s.finished:
            lines.append(f"{s.variant}: no finished runs yet, so the difference is not established.")
            continue
        d = s.delta
        head = f"{s.variant} vs {BASELINE} ({tuning_text(tuning, (BASELINE, s.variant))}): Δ = {d.diff:+.2f} pp"
        contains = interval_contains_zero(d)
        if contains is None:
            lines.append(f"{head}; {level} CI not established (n < 2: {len(s.finished)} vs "
                         f"{len(base.finished)} finished seeds), so the difference is not established.")
        elif contains:
            lines.append(f"{head}, {level} CI [{d.low:+.2f}, {d.high:+.2f}] contains 0: with "
                         f"{len(s.finished)} vs {len(base.finished)} seeds the difference is not established.")
        else:
            word = "higher" if d.diff > 0 else "lower"
            lines.append(f"{head}, {level} CI [{d.low:+.2f}, {d.high:+.2f}] excludes 0: with "
                         f"{len(s.finished)} vs {len(base.finished)} seeds, {s.variant}'s accuracy is "
                         f"{word} than {BASELINE}'s (significant at the {1 - CI_LEVEL:.0%} level, Welch's t).")
    return lines


# -------------------------------------------------------------------------------------------- plots

def plot_metric(runs: list[Run], key: str, ylabel: str, title: str, path: Path, scale: float = 1.0) -> Path:
    """Per variant: the mean over finished runs of ``key`` per epoch with a min-max band; unfinished
    runs as thin dashed lines. Written with the Agg canvas (no pyplot state, no display)."""
    from matplotlib.ticker import MaxNLocator

    fig = figure(7.5, 4.6, dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    variants = variant_order(r.variant for r in runs)
    colors = arm_colors(variants)
    for variant in variants:
        color = colors[variant]
        mine = [r for r in runs if r.variant == variant]
        finished = [r for r in mine if r.finished]
        per_epoch: dict[int, list[float]] = {}
        for r in finished:
            for e, v in zip(*r.series(key)):
                per_epoch.setdefault(e, []).append(v * scale)
        if per_epoch:
            epochs = sorted(per_epoch)
            mean = [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]
            ax.plot(epochs, mean, color=color, linewidth=2, marker="o" if len(epochs) <= 30 else None,
                    markersize=3.5, label=f"{variant} (mean of {len(finished)})")
            if len(finished) > 1:
                ax.fill_between(epochs, [min(per_epoch[e]) for e in epochs],
                                [max(per_epoch[e]) for e in epochs], color=color, alpha=0.18, linewidth=0)
        labelled = False
        for r in mine:
            if r.finished:
                continue
            e, v = r.series(key)
            if e:
                ax.plot(e, [x * scale for x in v], color=color, linewidth=1, linestyle="--", alpha=0.8,
                        marker="." if len(e) <= 30 else None,
                        label=None if labelled else f"{variant} (unfinished)")
                labelled = True
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title + "\n(line: mean over seeds, band: min to max)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no finished epochs yet", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, path, dpi=120)


# ------------------------------------------------------------------------------------ the documents

def _report_blocks(out: Path, runs: list[Run], summaries: list[VariantSummary],
                   gaps: dict[str, list[tuple[int, DiffInterval]]]) -> list[tuple]:
    """The report as blocks rendered to Markdown and HTML alike; ``gaps``: :func:`epoch_differences`."""
    dataset = _common(runs, "dataset") or "?"
    model = _common(runs, "model") or "?"
    blocks: list[tuple] = [("h1", f"Gradient Mask comparison: {model} on {dataset}")]
    devices = sorted({str(r.final["device"]) for r in runs if r.final and r.final.get("device")})
    intro = (f"{len(runs)} run{'s' if len(runs) != 1 else ''} in `{out.name}/` "
             f"({sum(r.finished for r in runs)} finished): variants "
             f"{', '.join(s.variant for s in summaries)}; {_epoch_text(runs)}; {_seed_text(summaries)}"
             + (f"; device {', '.join(devices)}" if devices else "") + ".")
    blocks.append(("p", intro))

    differ = [k for k, v in setting(runs) if v.startswith("differs between runs")]
    # runs trained with other settings are averaged together only under a title that says so
    blocks.append(("h2", "Results" + (f" (runs differ in {', '.join(differ)}: see Setting)" if differ else "")))
    headers = ["variant", "seeds", "final top-1 (%) mean ± std", "top-5 (%)", f"Δ vs {BASELINE} (pp)",
               f"{CI_LEVEL:.0%} CI of Δ (pp)", "train time per run"]
    rows = []
    for s in summaries:
        seeds = str(len(s.finished)) + (f" (+{len(s.unfinished)} unfinished)" if s.unfinished else "")
        delta = "–" if s.delta is None else f"{s.delta.diff:+.2f}"
        rows.append([s.variant, seeds, fmt_mean_std(s.top1), fmt_mean_std(s.top5), delta, fmt_ci(s.delta),
                     format_duration(s.train_seconds.mean, "report")])
    blocks.append(("table", headers, rows, "lrrrrrr"))
    tuning = read_tuning(out)
    for line in conclusions(runs, summaries, tuning):
        blocks.append(("p", line))
    if tuning is not None:
        blocks += tuning_blocks(tuning, runs)

    if gaps and max(len(g) for g in gaps.values()) > 1:
        blocks.append(("h2", f"Per epoch: difference to {BASELINE}"))
        blocks.append(("p", f"Test top-1 of each variant minus {BASELINE}'s after every epoch, in percentage points, "
                            f"with Welch's {CI_LEVEL:.0%} interval over the finished seeds (from metrics.jsonl): "
                            f"does the gap close, open or stay as training goes on?"))
        epochs = sorted({e for g in gaps.values() for e, _ in g})
        by_epoch = {v: dict(g) for v, g in gaps.items()}
        rows = [[str(e)] + [("–" if (d := by_epoch[v].get(e)) is None else f"{d.diff:+.2f} {fmt_ci(d)}")
                            for v in gaps] for e in epochs]
        blocks.append(("table", ["epoch"] + [f"{v} − {BASELINE} (pp) [{CI_LEVEL:.0%} CI]" for v in gaps], rows,
                       "r" + "r" * len(gaps)))

    unfinished = [r for r in runs if not r.finished]
    if unfinished:
        blocks.append(("h2", "Unfinished runs"))
        blocks.append(("p", "Not included in the averages above; `gradmask compare` with the same options "
                            "resumes them."))
        urows = []
        for r in unfinished:
            acc = r.value("test_acc")
            planned = r.epochs_planned if r.epochs_planned is not None else "?"
            urows.append([r.variant, str(r.seed), f"{r.epochs_done} / {planned}",
                          "–" if acc is None else f"{100 * acc:.2f}", r.name])
        blocks.append(("table", ["variant", "seed", "epochs done", "last test top-1 (%)", "folder"], urows,
                       "lrrrl"))

    blocks.append(("h2", "Figures"))
    blocks.append(("img", "Test top-1 accuracy per epoch", "accuracy.png"))
    blocks.append(("img", "Train loss per epoch", "loss.png"))
    if any((r.path / "gsnr.jsonl").is_file() for r in runs):
        blocks.append(("img", "GSNR of the convolution weights per epoch (masked gradients for masked runs)",
                       "gsnr.png"))
    blocks.append(("p", "Lines: mean over the finished seeds of a variant; band: min to max over those seeds; "
                        "dashed: unfinished runs."))

    blocks.append(("h2", "Setting"))
    blocks.append(("table", ["setting", "value"], [[k, v] for k, v in setting(runs)], "ll"))
    kept = [(r.variant, r.mask_kept) for r in runs if r.finished and r.mask_kept is not None]
    if kept:
        by_variant: dict[str, list[float]] = {}
        for v, k in kept:
            by_variant.setdefault(v, []).append(k)
        blocks.append(("p", "Fraction of gradient positions the mask kept in the last epoch (mean over targets "
                            "and seeds): " + ", ".join(f"{v} {sum(k) / len(k):.3f}"
                                                        for v, k in by_variant.items()) + "."))

    blocks.append(("h2", "Raw data"))
    blocks.append(("p", "results.csv and results.json hold one row per run (accuracies as fractions); each run "
                        "folder keeps config.json, metrics.jsonl (one line per epoch) and final.json. "
                        f"`gradmask compare --report-only --out {shlex.quote(str(out))}` rewrites this report."))
    return blocks


def tuning_blocks(tuning: dict, runs: list[Run]) -> list[tuple]:
    """The sweep (variant x grid point -> validation accuracy), the chosen points and the training
    time of the tuning runs beside that of the final ``runs``."""
    grid = "; ".join(f"{k} {', '.join(_fmt_value(v) for v in values)}" for k, values in tuning["grid"].items())
    n = tuning["epochs"]
    epochs = f"{n} epoch{'s' if n != 1 else ''}" if n else "the final runs' epochs"
    seeds = tuning["seeds"]
    blocks: list[tuple] = [("h2", "Tuning on a validation split"), (
        "p", f"Before the final runs every variant was tuned on a validation split: "
             f"{tuning['val_fraction']:.0%} of the training images (a fixed seeded draw, the same for every run; "
             f"the test split was not read), {epochs} per tuning run (warm-up scaled alike), "
             f"{seeds} seed{'s' if seeds != 1 else ''} per grid point; grid: {grid}. Each variant's final runs use "
             f"its point with the best mean validation accuracy (ties: the first); a field that does not apply to a "
             f"variant (e.g. inhibition_rate for none) is not swept for it.")]
    rows = []
    for variant, record in tuning["variants"].items():
        if not record["tuned"]:
            rows.append([variant, "– (not tuned)", "–", "0", ""])
        for p in record["points"]:
            acc = [100.0 * a for a in p["val_acc"]]
            rows.append([variant, p["label"], fmt_mean_std(summarize(acc)), str(len(acc)),
                         "chosen" if p["point"] == record["chosen"] else ""])
    blocks.append(("table", ["variant", "grid point", "validation top-1 (%) mean ± std", "seeds", ""], rows,
                   "llrrl"))
    at_edge = [f"{variant} chose the {size} {name}" for variant, name, size in chosen_at_edges(tuning)]
    if at_edge:
        blocks.append(("p", f"At the edge of the grid: {'; '.join(at_edge)}. The best value may lie beyond it; "
                            f"such an arm is tuned only within the grid."))
    final = [r.train_seconds for r in runs if r.finished and r.train_seconds is not None]
    n_tuning = sum(len(p["runs"]) for record in tuning["variants"].values() for p in record["points"])
    blocks.append(("p", f"Training time (sum over runs): tuning {format_duration(tuning['train_seconds'], 'report')} "
                        f"({n_tuning} runs), final runs {format_duration(sum(final), 'report')} "
                        f"({len(final)} finished runs)."))
    return blocks


def report_paths(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Where :func:`write_report` writes: ``{"csv", "json", "accuracy", "loss", "markdown", "html"}``."""
    out = Path(out_dir)
    return {"csv": out / "results.csv", "json": out / "results.json", "accuracy": out / "accuracy.png",
            "loss": out / "loss.png", "markdown": out / "report.md", "html": out / "report.html"}


def write_report(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Read every run under ``out_dir`` and write the report files next to them.

    Returns ``{"csv", "json", "accuracy", "loss", "markdown", "html"}`` -> path. Raises
    ``FileNotFoundError`` when ``out_dir`` is missing or holds no run.
    """
    out = Path(out_dir)
    runs = load_runs(out)
    if not runs:
        raise FileNotFoundError(f"no runs in {out}: a run is a sub-folder with config.json and metrics.jsonl "
                                f"(train some with `gradmask compare --out {out}` first)")
    summaries = summarize_runs(runs)
    paths = report_paths(out)

    rows = result_rows(runs)
    write_csv(paths["csv"], RESULT_FIELDS,
              ([repr(v) if isinstance(v, float) else v for v in (row[k] for k in RESULT_FIELDS)] for row in rows))
    gaps = epoch_differences(summaries)
    num = _json_number
    per_epoch = {v: [{"epoch": e, "diff_pp": num(d.diff), "ci_low_pp": num(d.low), "ci_high_pp": num(d.high)}
                     for e, d in gap] for v, gap in gaps.items()}
    arms, changes = arm_mechanisms({s.variant: s.finished for s in summaries}, BASELINE)
    write_atomic(paths["json"], json.dumps({"runs": rows, "summary": [s.to_json() for s in summaries],
                                           "per_epoch_vs_none": per_epoch, "tuning": read_tuning(out),
                                           "mechanism": [a.to_json() for a in arms],
                                           "trends": {v: [c.to_json() for c in cs] for v, cs in changes.items()}},
                                          indent=2) + "\n")

    dataset = _common(runs, "dataset") or "?"
    model = _common(runs, "model") or "?"
    plot_metric(runs, "test_acc", "test top-1 accuracy (%)", f"Test accuracy: {model} on {dataset}",
                paths["accuracy"], scale=100.0)
    plot_metric(runs, "train_loss", "train loss (cross-entropy)", f"Train loss: {model} on {dataset}",
                paths["loss"])
    probed = [r.path for r in runs if (r.path / "gsnr.jsonl").is_file()]
    if probed:
        plot_gsnr(probed, out / "gsnr.png")

    blocks = _report_blocks(out, runs, summaries, gaps)
    raw = next(i for i, b in enumerate(blocks) if b == ("h2", "Raw data"))
    blocks[raw:raw] = mechanism_blocks(arms, changes, BASELINE)
    write_atomic(paths["markdown"], render_markdown(blocks))
    write_atomic(paths["html"], render_html(blocks, out))
    return paths


def summary_text(out_dir: str | os.PathLike) -> str:
    """The results table (Markdown) and the verdict sentences, for printing after a comparison."""
    runs = load_runs(out_dir)
    if not runs:
        raise FileNotFoundError(f"no runs in {out_dir}")
    summaries = summarize_runs(runs)
    # the results table only (the first table; the per-epoch gaps come later and are not needed)
    blocks = [b for b in _report_blocks(Path(out_dir), runs, summaries, {}) if b[0] == "table"][:1]
    return render_markdown(blocks) + "\n" + "\n".join(conclusions(runs, summaries, read_tuning(out_dir))) + "\n"
