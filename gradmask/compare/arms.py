"""Comparison arms defined by settings: a mask mode plus ``TrainConfig`` overrides.

An arm is written ``MODE`` or ``MODE@FIELD=VALUE[@FIELD=VALUE...]``, e.g. ``lateral@sigma=1`` (the
mask with a centre-surround LoG) beside ``lateral`` (the paper's sigma 11) and ``none``. The name is
canonical (fields in the order given, values as their field's type prints them: ``sigma=1`` and
``sigma=1.0`` name one arm), used for run folders, tables, plots and verdicts, and recorded in the
run's ``config.json`` as ``arm`` (a plain mode records ``arm`` None: its ``mask`` names it).
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any, Callable

from ..settings import MASK_MODES
from ..train.config import FLAT_FIELDS, field_applies, field_type

SEPARATOR = "@"
# fields an arm cannot set: the comparison sets them per run
_RUN_FIELDS = ("mask", "arm", "seed", "out", "resume", "overwrite", "progress")


def field_converter(name: str, what: str = "tune (--tune)") -> Callable[[str], Any]:
    """Text -> value for flat TrainConfig field ``name`` (from its type annotation); errors name ``what``."""
    hint = field_type(name)
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint

    def convert(text: str):
        t = text.strip()
        if optional and t.lower() == "none":
            return None
        if base is bool:
            if t.lower() in ("true", "false"):
                return t.lower() == "true"
            raise ValueError(f"{what} {name}: {text!r} is not true or false")
        if base is int:
            try:
                return int(t)
            except ValueError:
                raise ValueError(f"{what} {name}: {text!r} is not an integer") from None
        if base is float:
            try:
                value = float(t)
            except ValueError:
                raise ValueError(f"{what} {name}: {text!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"{what} {name}: {text!r} is not a finite number")
            return value
        if base is str:
            return t
        raise ValueError(f"{what} {name}: a {hint} field cannot be given on the command line "
                         f"(use the library: compare(..., tune={{{name!r}: [...]}}))")
    return convert


def _value_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "+".join(_value_text(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Arm:
    """``mask`` (a mode or ``"none"``) with ``overrides`` ``((field, value), ...)`` on the base config."""

    mask: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return SEPARATOR.join([self.mask, *(f"{k}={_value_text(v)}" for k, v in self.overrides)])

    def changes(self) -> dict[str, Any]:
        """The ``TrainConfig`` fields this arm sets on a comparison's base config (``arm`` only for an
        arm with overrides: a plain mode is named by its ``mask``)."""
        return {**dict(self.overrides), "mask": self.mask, **({"arm": self.name} if self.overrides else {})}


def parse_arm(text: str) -> Arm:
    """``"lateral@sigma=1"`` -> ``Arm("lateral", (("sigma", 1.0),))``; ``ValueError`` naming the arm
    and what is accepted (a mask mode; fields of ``TrainConfig`` that change that mode's run)."""
    mode, *items = [part.strip() for part in str(text).strip().split(SEPARATOR)]
    if mode not in MASK_MODES:
        raise ValueError(f"arm {text!r} in variants (--variants) must start with a mask mode among "
                         f"{', '.join(MASK_MODES)} (then @FIELD=VALUE overrides), got {mode!r}")
    names = set(FLAT_FIELDS)
    overrides: list[tuple[str, Any]] = []
    for item in items:
        field, sep, value = item.partition("=")
        field = field.strip().replace("-", "_")
        if not sep or not field or not value.strip():
            raise ValueError(f"arm {text!r}: each override must be FIELD=VALUE, got {item!r}")
        if field not in names or field in _RUN_FIELDS:
            raise ValueError(f"arm {text!r}: {field!r} is not a TrainConfig field an arm can set "
                             f"(not {', '.join(_RUN_FIELDS)}); fields: {', '.join(sorted(names - set(_RUN_FIELDS)))}")
        if not field_applies(field, mode):
            raise ValueError(f"arm {text!r}: {field} does not change a run with mask={mode!r}")
        if any(field == k for k, _ in overrides):
            raise ValueError(f"arm {text!r} sets {field} more than once")
        overrides.append((field, field_converter(field, f"arm {text!r}:")(value.strip())))
    return Arm(mode, tuple(overrides))


def arm_changes(name: str) -> dict[str, Any]:
    """The config fields of the arm ``name`` (see :meth:`Arm.changes`)."""
    return parse_arm(name).changes()


def arm_mask(name: str) -> str:
    """The mask mode of the arm ``name`` (``"lateral"`` for ``"lateral@sigma=1"``)."""
    return str(name).split(SEPARATOR, 1)[0].strip()


__all__ = ["Arm", "SEPARATOR", "arm_changes", "arm_mask", "field_converter", "parse_arm"]
