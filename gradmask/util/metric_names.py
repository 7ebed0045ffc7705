"""One naming for the metrics gradmask logs to TensorBoard and Lightning: ``<split>/<measure>`` for the
per-epoch figures (``train/loss``, ``train/acc``, ``test/acc``, ``val/acc``, ``train_eval/acc``),
``gradmask/<measure>[/<target>]`` for the mask's (``gradmask/kept/layer1.0``, ``gradmask/energy_kept/...``,
``gradmask/inhibition_rate``), ``time/<measure>`` for the pace. The files keep their flat keys
(``metrics.jsonl``, ``metrics.csv``, ``final.json``: ``train_loss``, ``mask_kept``, ...), which the
reports and published records read; :func:`metric_tag` maps one to the other (docs/metrics.md has the
table). A leaf module.
"""
from __future__ import annotations

from typing import Mapping, Optional

#: split prefixes of the flat keys, longest first (``train_eval_acc`` is ``train_eval/acc``)
SPLITS = ("train_eval", "train", "test", "val")
#: flat keys outside the ``<split>_<measure>`` pattern
RENAMED = {"lr": "train/lr", "inhibition_rate": "gradmask/inhibition_rate",
           "epoch_seconds": "time/epoch_seconds", "images_per_second": "time/images_per_second"}
#: per-target keys (``{target: value}``) and the prefix of their tags
PER_TARGET = {"mask_kept": "gradmask/kept", "mask_energy_kept": "gradmask/energy_kept"}


def metric_tag(key: str, target: Optional[str] = None) -> str:
    """The logged name of the flat metrics key ``key`` (``target``: the module of a per-target key).

    ``metric_tag("train_loss") == "train/loss"``, ``metric_tag("mask_kept", "layer1.0") ==
    "gradmask/kept/layer1.0"``; a key of no known pattern (a callback's own) is logged as it is."""
    if key in PER_TARGET:
        if target is None:
            raise ValueError(f"{key} is per target: metric_tag({key!r}, target) needs the target's name")
        return f"{PER_TARGET[key]}/{target}"
    if key in RENAMED:
        return RENAMED[key]
    for split in SPLITS:
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1:]}"
    return key


def logged_scalars(record: Mapping[str, object]) -> dict[str, float]:
    """A ``metrics.jsonl`` record as ``{tag: number}``: every number under its :func:`metric_tag`, the
    per-target dicts one tag per target (None values left out), ``epoch`` (the step) and non-numbers
    left out."""
    scalars: dict[str, float] = {}
    for key, value in record.items():
        if key in PER_TARGET:
            for target, v in (value or {}).items():
                if v is not None:
                    scalars[metric_tag(key, target)] = float(v)
        elif key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[metric_tag(key)] = float(value)
    return scalars


__all__ = ["PER_TARGET", "RENAMED", "SPLITS", "logged_scalars", "metric_tag"]
