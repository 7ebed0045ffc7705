"""Per-step learning-rate schedules as a picklable multiplier for ``LambdaLR``.

``LRSchedule(step)`` is the factor applied to the base lr at optimiser step ``step`` (0-based):
a linear warm-up over ``warmup_epochs`` (factor ``(step + 1) / warmup_steps``), then

- ``"multistep"``: ``gamma ** (number of milestones m with step >= m * steps_per_epoch)`` -- the
  lr drops at the first step of epoch ``m`` (0-based), as ``MultiStepLR`` stepped per epoch;
- ``"cosine"``: ``0.5 (1 + cos(pi t))``, ``t = (s + 1) / (S + 1)`` at step ``s`` of the ``S``
  steps after the warm-up (strictly decreasing, never 0);
- ``"triangle"``: ``1 - t``: linear from the peak down to 0 (with the warm-up: a triangle). It is
  not PyTorch's ``OneCycleLR`` (cosine phases, a floor above 0); ``"onecycle"``, its old name, is
  read as ``"triangle"`` (checkpoints stored it: they resume to the same numbers).

The object holds only numbers, so ``LambdaLR.state_dict()`` stores it and a checkpoint is
loadable with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .config import SCHEDULE_ALIASES, SCHEDULES


class LRSchedule:
    def __init__(self, kind: str, epochs: int, steps_per_epoch: int, milestones: Sequence[int] = (),
                 gamma: float = 0.1, warmup_epochs: float = 0.0):
        kind = SCHEDULE_ALIASES.get(kind, kind)
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {kind!r}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.kind = kind
        self.total_steps = int(epochs * steps_per_epoch)
        self.steps_per_epoch = int(steps_per_epoch)
        self.milestone_steps = [int(m) * self.steps_per_epoch for m in milestones]
        self.gamma = float(gamma)
        self.warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), self.total_steps)
        if kind != "multistep" and warmup_epochs > 0:
            self.warmup_steps = min(self.warmup_steps, self.total_steps - 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            warm = (step + 1) / self.warmup_steps
        else:
            warm = 1.0
        if self.kind == "multistep":
            return warm * self.gamma ** sum(step >= m for m in self.milestone_steps)
        if step < self.warmup_steps:
            return warm
        t = min((step - self.warmup_steps + 1) / (self.total_steps - self.warmup_steps + 1), 1.0)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0 - t

    def __repr__(self) -> str:
        return (f"LRSchedule({self.kind!r}, total_steps={self.total_steps}, warmup_steps={self.warmup_steps}, "
                f"milestone_steps={self.milestone_steps}, gamma={self.gamma})")


def build_scheduler(optimizer: torch.optim.Optimizer, config, steps_per_epoch: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` stepping the config's schedule once per optimiser step."""
    schedule = LRSchedule(config.schedule, config.epochs, steps_per_epoch, config.milestones,
                          config.gamma, config.warmup_epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


__all__ = ["LRSchedule", "build_scheduler"]
