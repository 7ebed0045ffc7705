"""Inhibition-rate schedules: the paper's future work, the inhibition rate as a trained hyperparameter.

A schedule is a callable ``(step, total_steps) -> rate`` (``step`` 0-based over the whole run);
the training engine sets ``gradient_mask.inhibition_rate`` from it before every optimiser step
and logs the rate in force per epoch (``inhibition_rate`` in ``metrics.jsonl``, beside
``mask_kept``). Any callable of that shape works in a hand-written loop::

    schedule = gradmask.train.InhibitionSchedule("warmup", rate=0.5, warmup_steps=1000)
    for step, (x, y) in enumerate(batches):
        gm.inhibition_rate = schedule(step, total_steps)
        ...

- ``"constant"``: ``rate`` at every step (the paper);
- ``"warmup"``: linear from 0 to ``rate`` over the first ``warmup_steps``: ``rate * step /
  warmup_steps``, then ``rate`` (step 0 masks nothing: the network starts as a vanilla one);
- ``"anneal"``: from ``rate`` down to 0 on a cosine: ``rate * 0.5 (1 + cos(pi step / total_steps))``.
"""
from __future__ import annotations

import math

from ..settings import check_inhibition_rate

INHIBITION_SCHEDULES = ("constant", "warmup", "anneal")


class InhibitionSchedule:
    """``schedule(step, total_steps) -> rate`` in ``[0, rate]``; holds only numbers (picklable)."""

    def __init__(self, kind: str = "constant", rate: float = 0.5, warmup_steps: int = 0):
        if kind not in INHIBITION_SCHEDULES:
            raise ValueError(f"inhibition_schedule must be one of {list(INHIBITION_SCHEDULES)}, got {kind!r}")
        rate = check_inhibition_rate(rate)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if kind == "warmup" and warmup_steps < 1:
            raise ValueError("inhibition_schedule 'warmup' needs warmup_steps >= 1 (--inhibition-warmup EPOCHS > 0)")
        self.kind, self.rate, self.warmup_steps = kind, rate, warmup_steps

    def __call__(self, step: int, total_steps: int) -> float:
        if self.kind == "warmup":
            return self.rate * min(step, self.warmup_steps) / self.warmup_steps
        if self.kind == "anneal":
            return self.rate * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
        return self.rate

    def __repr__(self) -> str:
        return f"InhibitionSchedule({self.kind!r}, rate={self.rate}, warmup_steps={self.warmup_steps})"


def build_inhibition_schedule(config, steps_per_epoch: int) -> InhibitionSchedule:
    """The schedule a :class:`~gradmask.train.TrainConfig` names (``inhibition_schedule``,
    ``mask_settings.inhibition_rate``, ``inhibition_warmup`` epochs -> steps)."""
    warmup_steps = int(round(config.inhibition_warmup * steps_per_epoch))
    if config.inhibition_schedule == "warmup":
        warmup_steps = max(warmup_steps, 1)
    return InhibitionSchedule(config.inhibition_schedule, config.mask_settings.inhibition_rate, warmup_steps)


__all__ = ["INHIBITION_SCHEDULES", "InhibitionSchedule", "build_inhibition_schedule"]
