"""What the mask does to fitting and generalisation, per arm, from the runs' ``metrics.jsonl``.

Per epoch every run records ``train_eval_acc`` (eval mode, a fixed un-augmented training subset),
``test_acc``, ``train_loss`` (the augmented batches, during the epoch) and, with a mask,
``mask_kept`` / ``mask_energy_kept`` per target. From these, per arm:

- **fit**: train-eval accuracy (runs recorded before ``train_eval_images`` have only the running
  ``train_acc`` of the augmented batches, compared as such, never as fit);
- **generalisation gap**: train-eval minus test accuracy of each run;
- against the baseline arm (``none``), Welch's 95% interval (seeds as independent samples) of the
  difference in test accuracy, fit, generalisation gap and training loss, after every epoch and at
  the end;
- the share of positions and of the gradient's energy the mask kept, per target, in the last epoch.

A trend ("the gap closes") is only stated from :func:`gap_change`: Welch's interval of the change,
between two epochs, of each arm's per-run values, compared between the arms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from .stats import DiffInterval, Summary, diff_confidence_interval, summarize

CI_LEVEL = 0.95


def _gap(record: dict) -> Optional[float]:
    fit, test = record.get("train_eval_acc"), record.get("test_acc")
    return None if fit is None or test is None else fit - test


#: what the sentences call each quantity
LABELS = {"test_acc": "test top-1", "train_eval_acc": "fit (train-eval top-1)", "train_acc": "running train accuracy",
          "generalisation_gap": "generalisation gap", "train_loss": "training loss"}
#: the per-epoch quantities compared between arms: name -> (value of one metrics record, scale, unit)
QUANTITIES: dict[str, tuple[Callable[[dict], Optional[float]], float, str]] = {
    "test_acc": (lambda r: r.get("test_acc"), 100.0, "pp"),
    "train_eval_acc": (lambda r: r.get("train_eval_acc"), 100.0, "pp"),
    "train_acc": (lambda r: r.get("train_acc"), 100.0, "pp"),
    "generalisation_gap": (_gap, 100.0, "pp"),
    "train_loss": (lambda r: r.get("train_loss"), 1.0, ""),
}


def per_epoch(runs: Iterable, quantity: str) -> dict[int, list[float]]:
    """``{epoch: [the quantity after that epoch, one per run that recorded it]}`` (scaled)."""
    value, scale, _ = QUANTITIES[quantity]
    out: dict[int, list[float]] = {}
    for run in runs:
        for record in run.metrics:
            v = value(record)
            if v is not None and math.isfinite(float(v)):
                out.setdefault(int(record["epoch"]), []).append(scale * float(v))
    return out


def _per_run_at(runs: Iterable, quantity: str, epoch: int) -> list[float]:
    value, scale, _ = QUANTITIES[quantity]
    values = []
    for run in runs:
        v = next((value(r) for r in run.metrics if int(r["epoch"]) == epoch), None)
        if v is not None and math.isfinite(float(v)):
            values.append(scale * float(v))
    return values


def _json_tuple(t) -> dict:
    """A Summary / DiffInterval as a JSON object, NaN as null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in t._asdict().items()}


@dataclass(frozen=True)
class ArmMechanism:
    """One arm after its last epoch (finished runs): fit and generalisation gap in percent (mean ± std
    over seeds); per target the kept share of positions and of energy (mean over seeds; empty without
    a mask); against the baseline (None for the baseline itself) Welch's interval of the difference
    per quantity of :data:`QUANTITIES` at the last epoch, and after every epoch."""
    variant: str
    epoch: Optional[int]
    train_eval_acc: Summary
    generalisation_gap: Summary
    kept: dict = field(default_factory=dict)
    energy_kept: dict = field(default_factory=dict)
    versus_baseline: Optional[dict] = None          # quantity -> DiffInterval at the last epoch
    per_epoch_versus_baseline: Optional[dict] = None  # quantity -> [(epoch, DiffInterval)]

    def to_json(self) -> dict:
        interval = summary = _json_tuple
        return {"variant": self.variant, "epoch": self.epoch,
                "train_eval_acc_pct": summary(self.train_eval_acc),
                "generalisation_gap_pct": summary(self.generalisation_gap),
                "kept": self.kept, "energy_kept": self.energy_kept,
                "versus_baseline": None if self.versus_baseline is None else
                {q: interval(d) for q, d in self.versus_baseline.items()},
                "per_epoch_versus_baseline": None if self.per_epoch_versus_baseline is None else
                {q: [[e, interval(d)] for e, d in rows] for q, rows in self.per_epoch_versus_baseline.items()}}


def _target_means(runs: list, key: str) -> dict[str, float]:
    per_target: dict[str, list[float]] = {}
    for run in runs:
        last = run.metrics[-1].get(key) if run.metrics else None
        for name, v in (last or {}).items():
            if v is not None:
                per_target.setdefault(name, []).append(float(v))
    return {name: sum(v) / len(v) for name, v in per_target.items()}


def epoch_differences(runs: list, baseline: list, quantity: str) -> list[tuple[int, DiffInterval]]:
    """``[(epoch, Welch interval of mean(runs) - mean(baseline))]`` of ``quantity`` for every epoch
    both recorded."""
    a, b = per_epoch(runs, quantity), per_epoch(baseline, quantity)
    return [(e, diff_confidence_interval(a[e], b[e], CI_LEVEL)) for e in sorted(set(a) & set(b))]


def arm_mechanism(variant: str, runs: list, baseline: Optional[list]) -> ArmMechanism:
    """:class:`ArmMechanism` of ``runs`` (finished runs of one arm); ``baseline`` the baseline arm's
    finished runs, or None for the baseline itself."""
    last = max((int(r.metrics[-1]["epoch"]) for r in runs if r.metrics), default=None)
    fit = _per_run_at(runs, "train_eval_acc", last) if last else []
    gap = _per_run_at(runs, "generalisation_gap", last) if last else []
    versus = per_epoch_rows = None
    if baseline is not None:
        per_epoch_rows = {q: epoch_differences(runs, baseline, q) for q in QUANTITIES}
        versus = {q: rows[-1][1] for q, rows in per_epoch_rows.items() if rows and rows[-1][0] == last}
    return ArmMechanism(variant, last, summarize(fit), summarize(gap), _target_means(runs, "mask_kept"),
                        _target_means(runs, "mask_energy_kept"), versus, per_epoch_rows)


@dataclass(frozen=True)
class GapChange:
    """How the difference arm − baseline of ``quantity`` changed from epoch ``early`` to ``late``:
    Welch's interval of mean(change of each arm run) − mean(change of each baseline run), scaled.
    ``direction``: "narrowed" / "widened" (the interval excludes 0 and the gap's size at ``late`` is
    smaller / larger than at ``early``), or "no change established"."""
    quantity: str
    early: int
    late: int
    gap_early: DiffInterval
    gap_late: DiffInterval
    change: DiffInterval
    direction: str

    def to_json(self) -> dict:
        return {"quantity": self.quantity, "early": self.early, "late": self.late,
                "gap_early": _json_tuple(self.gap_early), "gap_late": _json_tuple(self.gap_late),
                "change": _json_tuple(self.change), "direction": self.direction}

    def sentence(self, variant: str, baseline: str) -> str:
        unit = f" {QUANTITIES[self.quantity][2]}".rstrip()
        c = self.change
        interval = ("not established (n < 2)" if math.isnan(c.low) else f"[{c.low:+.2f}, {c.high:+.2f}]")
        verdict = (f"the gap {self.direction} (the interval of its change excludes 0)"
                   if self.direction in ("narrowed", "widened") else
                   "no change of the gap is established (the interval of its change contains 0)")
        return (f"{LABELS[self.quantity]}, {variant} − {baseline}: {self.gap_early.diff:+.2f}{unit} after "
                f"epoch {self.early}, {self.gap_late.diff:+.2f}{unit} after epoch {self.late}; change "
                f"{c.diff:+.2f}{unit}, {CI_LEVEL:.0%} CI {interval}: {verdict}.")


def gap_change(runs: list, baseline: list, quantity: str, early: int, late: int) -> GapChange:
    """:class:`GapChange` of ``quantity`` between epochs ``early`` and ``late`` (runs that recorded both)."""
    def changes(rs):
        out = []
        for r in rs:
            a, b = _per_run_at([r], quantity, early), _per_run_at([r], quantity, late)
            if a and b:
                out.append(b[0] - a[0])
        return out

    gap_early = diff_confidence_interval(_per_run_at(runs, quantity, early), _per_run_at(baseline, quantity, early),
                                         CI_LEVEL)
    gap_late = diff_confidence_interval(_per_run_at(runs, quantity, late), _per_run_at(baseline, quantity, late),
                                        CI_LEVEL)
    change = diff_confidence_interval(changes(runs), changes(baseline), CI_LEVEL)
    direction = "no change established"
    if not math.isnan(change.low) and (change.low > 0 or change.high < 0):
        direction = "narrowed" if abs(gap_late.diff) < abs(gap_early.diff) else "widened"
    return GapChange(quantity, early, late, gap_early, gap_late, change, direction)




# ------------------------------------------------------------------------------------- report blocks

def _ci(d: Optional[DiffInterval]) -> str:
    if d is None or math.isnan(d.diff):
        return "–"
    if math.isnan(d.low):
        return f"{d.diff:+.2f} (n < 2)"
    return f"{d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"


def _pm(s: Summary) -> str:
    if s.n == 0:
        return "–"
    return f"{s.mean:.2f}" if s.n < 2 else f"{s.mean:.2f} ± {s.std:.2f}"


def _shown_epochs(epochs: list[int], most: int = 20) -> list[int]:
    """All epochs when few, else every fifth and the last (the full series is in results.json)."""
    if len(epochs) <= most:
        return epochs
    return [e for e in epochs if e % 5 == 0 or e == epochs[-1] or e == epochs[0]]


def mechanism_blocks(arms: list[ArmMechanism], changes: dict[str, list[GapChange]], baseline: str) -> list[tuple]:
    """Report blocks (``("h2"|"p"|"table", ...)``, see :mod:`gradmask.util.reporting`) of the mechanism:
    the end-of-training table, the per-epoch differences to ``baseline`` and the computed trend sentences."""
    if not any(a.per_epoch_versus_baseline for a in arms):
        return []
    level = f"{CI_LEVEL:.0%}"
    blocks: list[tuple] = [("h2", "Fit, generalisation and what the mask kept"), (
        "p", f"After the last epoch, per arm (mean ± std over finished seeds): train-eval top-1 on the fixed "
             f"un-augmented training subset in eval mode (fit), the generalisation gap (train-eval minus test "
             f"top-1, points), and against {baseline} Welch's {level} interval of the difference in fit, "
             f"generalisation gap and training loss (the running loss of the augmented batches); kept: share of "
             f"gradient positions, energy: share of the gradient's squared norm, the mask kept in the last epoch "
             f"(means over targets and seeds).")]
    rows = []
    for a in arms:
        v = a.versus_baseline or {}
        kept = sum(a.kept.values()) / len(a.kept) if a.kept else None
        energy = sum(a.energy_kept.values()) / len(a.energy_kept) if a.energy_kept else None
        rows.append([a.variant, _pm(a.train_eval_acc), _pm(a.generalisation_gap),
                     _ci(v.get("train_eval_acc")), _ci(v.get("generalisation_gap")), _ci(v.get("train_loss")),
                     "–" if kept is None else f"{kept:.3f}", "–" if energy is None else f"{energy:.3f}"])
    blocks.append(("table", ["arm", "fit (%)", "gen. gap (pp)", f"fit − {baseline} (pp)",
                             f"gap − {baseline} (pp)", f"train loss − {baseline}", "kept", "energy kept"], rows,
                   "lrrrrrrr"))
    targets = sorted({t for a in arms for t in a.energy_kept})
    if targets:
        blocks.append(("p", "Per target, the share of the gradient's energy kept in the last epoch (mean over seeds):"))
        blocks.append(("table", ["arm"] + targets,
                       [[a.variant] + [f"{a.energy_kept[t]:.3f}" if t in a.energy_kept else "–" for t in targets]
                        for a in arms if a.energy_kept], "l" + "r" * len(targets)))
    compared = [a for a in arms if a.per_epoch_versus_baseline]
    epochs = sorted({e for a in compared for rows in a.per_epoch_versus_baseline.values() for e, _ in rows})
    if compared and len(epochs) > 1:
        shown = _shown_epochs(epochs)
        blocks.append(("p", f"**Per epoch**, each arm minus {baseline} (Welch's {level} interval over seeds): test "
                            f"top-1, fit, generalisation gap and the running training accuracy of the augmented "
                            f"batches in points, training loss (columns a run did not record are left out)"
                            + ("" if shown == epochs else "; every fifth epoch shown, all in results.json") + "."))
        columns = [("test_acc", "test"), ("train_eval_acc", "fit"), ("generalisation_gap", "gap"),
                   ("train_acc", "running train acc."), ("train_loss", "loss")]
        for a in compared:
            by = {q: dict(rows) for q, rows in a.per_epoch_versus_baseline.items()}
            shown_columns = [(q, label) for q, label in columns if by[q]]
            blocks.append(("table", ["epoch"] + [f"{a.variant}: {label}" for _, label in shown_columns],
                           [[str(e)] + [_ci(by[q].get(e)) for q, _ in shown_columns] for e in shown],
                           "r" * (1 + len(shown_columns))))
    sentences = [c.sentence(variant, baseline) for variant, cs in changes.items() for c in cs]
    if sentences:
        blocks.append(("p", "**Trends** (computed: Welch's interval of the change of each run between the middle "
                            "and the last epoch, arm against " + baseline + "): " + " ".join(sentences)))
    return blocks


def arm_mechanisms(runs_by_arm: dict[str, list],
                   baseline: str) -> tuple[list[ArmMechanism], dict[str, list[GapChange]]]:
    """Per arm (finished runs), its :class:`ArmMechanism`, and per arm other than ``baseline`` the
    :class:`GapChange` of test accuracy, fit and generalisation gap between the middle and the last epoch."""
    base = runs_by_arm.get(baseline) or None
    arms = [arm_mechanism(v, rs, None if v == baseline or base is None else base)
            for v, rs in runs_by_arm.items() if rs]
    changes: dict[str, list[GapChange]] = {}
    recorded = {q: per_epoch(base or [], q) for q in ("test_acc", "train_eval_acc", "generalisation_gap",
                                                      "train_acc", "train_loss")}  # the baseline's, once
    for a in arms:
        if a.per_epoch_versus_baseline and a.epoch and a.epoch >= 2:
            early = a.epoch // 2
            changes[a.variant] = [gap_change(runs_by_arm[a.variant], base, q, early, a.epoch)
                                  for q, values in recorded.items() if values.get(early) and values.get(a.epoch)]
    return arms, changes


__all__ = ["ArmMechanism", "CI_LEVEL", "GapChange", "LABELS", "QUANTITIES", "arm_mechanism", "arm_mechanisms",
           "epoch_differences", "gap_change", "mechanism_blocks", "per_epoch"]
