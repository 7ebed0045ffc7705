"""Fair comparisons: each variant tuned on a validation split before the multi-seed comparison.

A :class:`Tuning` is a grid over named ``TrainConfig`` fields (``{"lr": (0.05, 0.1, 0.2)}``).
:func:`run_tuning` trains, for every variant and every grid point that applies to it, ``seeds``
short runs (``epochs``; ``warmup_epochs`` scaled by the same ratio, so a tuning run is the final
run's schedule compressed in time; no GSNR probe) on the training set minus a validation split
(``val_fraction`` of the training images, a fixed seeded draw shared by every run) and scores each
run by its final validation accuracy. The test split is never read. Each variant gets the grid
point with the best mean validation accuracy (ties: the first in grid order); a field that does
not apply to a variant (``inhibition_rate`` for ``"none"``) is not swept for it, and a variant to
which no tuned field applies is not tuned at all.

Tuning runs live in ``{out}/tune/{variant}-{point}-seed{s}`` and resume like every other run (a
finished grid point returns at once); ``{out}/tuning.json`` holds the sweep, the choice and the
tuning runs' training time, with its checksum (:func:`read_tuning` verifies it, and that the
comparison's manifest names it, :mod:`.manifest`).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from ..train import train
from ..train.config import FLAT_FIELDS, MAX_VAL_FRACTION, TrainConfig, field_applies
from ..util.files import read_record, write_record
from .arms import arm_changes, arm_mask, field_converter
from .jobs import train_all
from .manifest import older_comparison, read_manifest

TUNE_DIR = "tune"
TUNING_JSON = "tuning.json"
DEFAULT_VAL_FRACTION = 0.1

#: fields a grid may not name, with what sets them instead
NOT_TUNABLE = {
    "mask": "--variants", "seed": "--seeds", "out": "--out", "resume": "the runner", "overwrite": "the runner",
    "val_fraction": "--val-fraction", "epochs": "--epochs (final runs) and --tune-epochs (tuning runs)",
    "dataset": "--dataset", "data": "--data", "progress": "--no-progress", "tensorboard": "--tensorboard",
    "device": "--device", "num_workers": "--num-workers", "compile": "--compile",
}
#: fields measured in epochs, scaled by tuning epochs / final epochs in a tuning run
EPOCH_FIELDS = ("warmup_epochs", "inhibition_warmup")


@dataclass(frozen=True)
class Tuning:
    """``grid``: ``{field: (values...)}`` (insertion order = grid order); ``epochs``: epochs of a
    tuning run (None: the final runs'); ``seeds``: tuning runs per grid point; ``val_fraction``:
    the validation share of the training images, in (0, 0.5]."""
    grid: Mapping[str, tuple]
    epochs: Optional[int] = None
    seeds: int = 1
    val_fraction: float = DEFAULT_VAL_FRACTION

    def to_json(self) -> dict:
        return {"grid": {k: list(v) for k, v in self.grid.items()}, "epochs": self.epochs, "seeds": self.seeds,
                "val_fraction": self.val_fraction}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def make_tuning(grid: Mapping[str, Iterable], epochs: Optional[int] = None, seeds: int = 1,
                val_fraction: float = DEFAULT_VAL_FRACTION) -> Tuning:
    """A validated :class:`Tuning` (``ValueError`` naming the option and the accepted range).
    Values are checked against ``TrainConfig`` when the configs are built (:func:`check_tuning`)."""
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"tune (--tune) must name at least one TrainConfig field with values, "
                         f"e.g. lr=0.05,0.1,0.2; got {grid!r}")
    names = set(FLAT_FIELDS)
    clean: dict[str, tuple] = {}
    for name, values in grid.items():
        if name not in names:
            raise ValueError(f"tune (--tune) {name!r} is not a TrainConfig field; fields: {', '.join(sorted(names))}")
        if name in NOT_TUNABLE:
            raise ValueError(f"tune (--tune) {name!r} cannot be tuned: it is set by {NOT_TUNABLE[name]}")
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        if not values:
            raise ValueError(f"tune (--tune) {name}: empty grid; give at least one value, e.g. {name}=A,B")
        repeated = sorted({repr(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"tune (--tune) {name} lists {', '.join(repeated)} more than once")
        clean[name] = values
    if epochs is not None and (not _is_int(epochs) or epochs < 1):
        raise ValueError(f"tune_epochs (--tune-epochs) must be an integer >= 1 or None (the final runs' epochs), "
                         f"got {epochs!r}")
    if not _is_int(seeds) or seeds < 1:
        raise ValueError(f"tune_seeds (--tune-seeds) must be an integer >= 1, got {seeds!r}")
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
            or not 0.0 < val_fraction <= MAX_VAL_FRACTION):
        raise ValueError(f"val_fraction (--val-fraction) must be in (0, {MAX_VAL_FRACTION}], got {val_fraction!r}")
    return Tuning(clean, epochs, seeds, float(val_fraction))


# --------------------------------------------------------------------------------- command line
def parse_tune(items: Iterable[str]) -> dict[str, tuple]:
    """``["lr=0.05,0.1,0.2", "inhibition_rate=0.3,0.5"]`` -> ``{"lr": (0.05, 0.1, 0.2), ...}``,
    each value converted to its TrainConfig field's type (``ValueError`` naming ``--tune``)."""
    grid: dict[str, tuple] = {}
    names = set(FLAT_FIELDS)
    for item in items:
        name, sep, text = str(item).partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"--tune must be FIELD=V1,V2,... (a TrainConfig field and its values), got {item!r}")
        if name in grid:
            raise ValueError(f"--tune names {name} more than once; list all its values in one --tune {name}=...")
        if name not in names:
            raise ValueError(f"tune (--tune) {name!r} is not a TrainConfig field; fields: {', '.join(sorted(names))}")
        texts = [t for t in text.split(",") if t.strip()]
        if not texts:
            raise ValueError(f"tune (--tune) {name}: empty grid; give at least one value, e.g. {name}=A,B")
        convert = field_converter(name)
        grid[name] = tuple(convert(t) for t in texts)
    return grid


# --------------------------------------------------------------------------------- the sweep
def grid_points(tuning: Tuning, variant: str) -> list[dict]:
    """The grid points of ``variant`` (cartesian product, grid order) over the fields that apply to
    it; ``[]`` when none does (the variant is not tuned)."""
    fields = [k for k in tuning.grid if field_applies(k, arm_mask(variant))]
    if not fields:
        return []
    return [dict(zip(fields, values)) for values in itertools.product(*(tuning.grid[k] for k in fields))]


def _value_label(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "+".join(_value_label(x) for x in v)
    return repr(v) if isinstance(v, float) else str(v)


def point_label(point: Mapping[str, Any]) -> str:
    """``{"lr": 0.05, "inhibition_rate": 0.3}`` -> ``"lr=0.05,inhibition_rate=0.3"`` (folder names)."""
    return ",".join(f"{k}={_value_label(v)}" for k, v in point.items())


def grid_edges(grid: Mapping[str, Iterable], chosen: Mapping[str, Any]) -> dict[str, str]:
    """The numeric fields of ``chosen`` that sit at an end of their grid: ``{"lr": "largest"}``. A
    choice at the edge says the best value may lie outside the grid (the sweep is bounded by it).
    Fields with fewer than two numeric values, booleans and names are left out."""
    edges = {}
    for name, value in chosen.items():
        values = [v for v in grid.get(name, ()) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(set(values)) < 2 or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value == max(values):
            edges[name] = "largest"
        elif value == min(values):
            edges[name] = "smallest"
    return edges


def chosen_at_edges(tuning: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``[(variant, field, "largest" | "smallest")]``: the tuned arms of ``tuning`` (a tuning.json)
    whose choice sits at an end of its grid (:func:`grid_edges`)."""
    return [(variant, name, size) for variant, record in tuning["variants"].items() if record["tuned"]
            for name, size in grid_edges(tuning["grid"], record["chosen"]).items()]


def tuning_run_dir(out, variant: str, point: Mapping[str, Any], seed: int) -> str:
    return f"{os.fspath(out)}/{TUNE_DIR}/{variant}-{point_label(point)}-seed{seed}"


def tuning_config(base, variant: str, point: Mapping[str, Any], seed: int, tuning: Tuning, out):
    """The config of one tuning run: ``base`` with the grid point, the variant and seed, the
    validation split, the tuning epochs (epoch-valued fields scaled by the same ratio), no GSNR
    probe, resumable. Raises ``ValueError`` (from ``TrainConfig``) naming a bad value."""
    config = checked_replace(base, point, "tune")
    epochs = tuning.epochs or config.epochs
    changes: dict[str, Any] = dict(**arm_changes(variant), seed=seed, out=tuning_run_dir(out, variant, point, seed),
                                   resume=True, val_fraction=tuning.val_fraction, epochs=epochs)
    if hasattr(config, "gsnr_every"):
        changes["gsnr_every"] = 0
    if epochs != config.epochs:
        ratio = epochs / config.epochs
        for name in EPOCH_FIELDS:
            if hasattr(config, name):
                changes[name] = round(getattr(config, name) * ratio, 6)
    return checked_replace(config, changes, "tune")


def checked_replace(config, changes: Mapping[str, Any], what: str):
    """``config.replace(**changes)`` for a TrainConfig (flat names: ``sigma`` sets ``mask_settings.sigma``),
    ``dataclasses.replace`` for another dataclass, both re-validating; a ValueError names the changed fields."""
    try:
        if isinstance(config, TrainConfig):
            return config.replace(**changes)
        return dataclasses.replace(config, **changes)
    except (ValueError, TypeError) as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in changes.items() if k not in ("out", "resume"))
        raise ValueError(f"{what} ({shown}): {exc}") from None


@dataclass
class PointScore:
    """One grid point of one variant: the validation accuracies of its seeds (fractions)."""
    point: dict
    runs: list
    val_acc: list
    train_seconds: float

    @property
    def mean(self) -> float:
        return sum(self.val_acc) / len(self.val_acc)

    @property
    def std(self) -> float:
        n = len(self.val_acc)
        if n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.val_acc) / (n - 1))


@dataclass
class TuningResult:
    """``sweep``: variant -> its scored grid points; ``chosen``: variant -> the point its final runs
    use (``{}`` for an untuned variant); ``train_seconds``: training time of all tuning runs."""
    tuning: Tuning
    sweep: dict
    chosen: dict
    train_seconds: float

    def to_json(self) -> dict:
        def num(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
        return {**self.tuning.to_json(), "train_seconds": self.train_seconds,
                "variants": {v: {"tuned": bool(points), "chosen": self.chosen[v],
                                 "points": [{"point": p.point, "label": point_label(p.point), "runs": p.runs,
                                             "val_acc": p.val_acc, "mean": num(p.mean), "std": num(p.std),
                                             "train_seconds": p.train_seconds} for p in points]}
                             for v, points in self.sweep.items()}}


def choose(points: list[PointScore]) -> dict:
    """The point with the best mean validation accuracy (ties: the first in grid order)."""
    best = max(range(len(points)), key=lambda i: (points[i].mean, -i))
    return dict(points[best].point)


def tuning_plan(base, variants: Iterable[str], tuning: Tuning, out, seed_offset: int = 0):
    """``[(variant, point, seed, config)]`` of every tuning run, in training order (seed, then grid
    point, then variant); every config is built (validated) here, before anything trains."""
    variants = tuple(variants)
    points = {v: grid_points(tuning, v) for v in variants}
    plan = []
    for seed in range(seed_offset, seed_offset + tuning.seeds):
        for k in range(max((len(p) for p in points.values()), default=0)):
            for v in variants:
                if k < len(points[v]):
                    point = points[v][k]
                    plan.append((v, point, seed, tuning_config(base, v, point, seed, tuning, out)))
    return plan


def _status(path: str) -> str:
    return "finished earlier" if (Path(path) / "final.json").is_file() else "training"


def run_tuning(base, variants: Iterable[str], tuning: Tuning, out, seed_offset: int = 0,
               train_fn: Callable | None = None, log: Callable[[str], Any] | None = print,
               jobs: int = 1) -> TuningResult:
    """Train every tuning run (resuming; finished ones return at once; ``jobs`` at a time, see
    :func:`gradmask.compare.jobs.train_all`), choose each variant's grid point and write
    ``{out}/tuning.json``. ``train_fn(config) -> final metrics`` (default :func:`gradmask.train.train`)
    must return ``val_acc``."""
    variants = tuple(variants)
    plan = tuning_plan(base, variants, tuning, out, seed_offset)
    if train_fn is None:
        train_fn = train

    def announce(k: int, config) -> None:
        variant, point, seed, _ = plan[k - 1]
        if log is not None:
            log(f"[tune {k}/{len(plan)}] {variant} {point_label(point)} seed {seed} -> {config.out} "
                f"({_status(config.out)})")

    finals = train_all(train_fn, [config for *_, config in plan], jobs, before=announce)
    scores: dict[tuple, PointScore] = {}
    for (variant, point, _, config), final in zip(plan, finals):
        final = final or {}
        if final.get("val_acc") is None:
            raise ValueError(f"tuning run {config.out} returned no val_acc (got keys {sorted(final)}): "
                             f"train_fn must train on the validation split and return the final metrics")
        key = (variant, point_label(point))
        score = scores.setdefault(key, PointScore(dict(point), [], [], 0.0))
        score.runs.append(Path(config.out).name)
        score.val_acc.append(float(final["val_acc"]))
        score.train_seconds += float(final.get("train_seconds") or 0.0)
    sweep = {v: [s for (variant, _), s in scores.items() if variant == v] for v in variants}
    chosen = {v: (choose(points) if points else {}) for v, points in sweep.items()}
    result = TuningResult(tuning, sweep, chosen, sum(s.train_seconds for s in scores.values()))
    Path(out).mkdir(parents=True, exist_ok=True)
    write_record(Path(out) / TUNING_JSON, result.to_json())
    return result


def tuning_checksum(out) -> Optional[str]:
    """The stored checksum of ``{out}/tuning.json`` (verified; None without the file or checksum)."""
    path = Path(out) / TUNING_JSON
    return read_record(path, "tuning record", warn=False)[1] if path.is_file() else None


def read_tuning(out) -> Optional[dict]:
    """``{out}/tuning.json`` (see :meth:`TuningResult.to_json`) without its checksum, or None when
    ``out`` was not tuned. A file whose content does not match its checksum, or another one than the
    comparison's manifest names, raises ``ValueError`` naming it; one written before checksums is
    read unverified (said once per comparison)."""
    path = Path(out) / TUNING_JSON
    if not path.is_file():
        return None
    content, checksum = read_record(path, "tuning record", warn=False)
    manifest = read_manifest(out)
    named = None if manifest is None else manifest.tuning
    if named is not None and checksum != named:
        raise ValueError(f"tuning record {path} is not the one the comparison's manifest ({out}/manifest.json) "
                         f"names ({'it has no checksum' if checksum is None else f'{checksum[:19]}...'}, the "
                         f"manifest names {named[:19]}...): it was replaced or edited after the tuning")
    if checksum is None:
        older_comparison(out, f"{TUNING_JSON} has no checksum")
    return content


def check_chosen(tuning: Mapping[str, Any], configs: Iterable[tuple[str, str, Mapping[str, Any]]], out) -> None:
    """Each run of a tuned variant was trained at the point ``tuning`` (``out``'s tuning.json) says
    was chosen for it: ``configs`` are ``(variant, run name, config.json)``; a field of another
    value raises ``ValueError`` naming the file, the run and the field."""
    variants = tuning.get("variants") if isinstance(tuning, Mapping) else None
    if not isinstance(variants, Mapping):
        raise ValueError(f"tuning record {Path(out) / TUNING_JSON} has no variants object: not a gradmask tuning "
                         f"record")
    for variant, name, config in configs:
        record = variants.get(variant)
        chosen = record.get("chosen") if isinstance(record, Mapping) and record.get("tuned") else {}
        for key, value in (chosen or {}).items():
            if key in config and config[key] != value:
                raise ValueError(f"tuning record {Path(out) / TUNING_JSON} says {variant} was trained at "
                                 f"{key}={value!r}, but its run {name} was trained at {key}={config[key]!r}: the "
                                 f"record does not describe these runs (it was edited or left from an earlier "
                                 f"tuning, or runs were added to the comparison without its --tune options)")


__all__ = ["DEFAULT_VAL_FRACTION", "NOT_TUNABLE", "PointScore", "TUNE_DIR", "TUNING_JSON", "Tuning", "TuningResult",
           "check_chosen", "checked_replace", "choose", "chosen_at_edges", "grid_edges", "grid_points", "make_tuning",
           "parse_tune", "point_label", "read_tuning", "run_tuning", "tuning_checksum", "tuning_config", "tuning_plan",
           "tuning_run_dir"]
