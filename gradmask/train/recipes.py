"""The paper's training recipe, written once: ``TrainConfig.from_preset("paper")`` and ``gradmask reproduce
--preset paper`` (CIFAR-10/100) both train with it.

The paper keeps the original ResNet's hyperparameters for both arms: SGD lr 0.1, momentum 0.9, weight decay
5e-4, batch 128, 200 epochs, lr x0.2 at epochs 60/120/160, ResNet-18 with the CIFAR stem, random crop (pad 4)
+ horizontal flip; no Nesterov momentum, no label smoothing, no warm-up (the TrainConfig defaults). K=16
channel sets: ResNet-18's registry entry (:func:`gradmask.models.model_groups`).
"""
from __future__ import annotations

from typing import Any

#: TrainConfig fields (flat names) of the paper's CIFAR runs.
PAPER_CIFAR: dict[str, Any] = dict(model="resnet18", stem="cifar", epochs=200, batch_size=128, lr=0.1, momentum=0.9,
                                   weight_decay=5e-4, schedule="multistep", milestones=(60, 120, 160), gamma=0.2,
                                   warmup_epochs=0.0, augment="crop-flip")

__all__ = ["PAPER_CIFAR"]
