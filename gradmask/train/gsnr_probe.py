"""``TrainConfig(gsnr_every=K)``: the GSNR probe (Figure 7) as a training callback."""
from __future__ import annotations

from ..robustness.gsnr import GSNRProbe
from .config import TrainConfig
from .data import RunData, random_subset


def gsnr_probe(config: TrainConfig, data: RunData) -> GSNRProbe:
    """A GSNRProbe on a fixed probe set: ``gsnr_samples`` training images, un-augmented, drawn with
    the fixed seed of :func:`gradmask.data.subset_index` (the same in every run; files are stored
    class by class, so the first images would hold one or two classes)."""
    if data.streamed:
        raise ValueError("gsnr_every needs an in-memory dataset (not the streamed ImageNet loader)")
    images, labels = random_subset(data.train.images, data.train.labels, config.gsnr_samples)
    return GSNRProbe(images, labels, every=config.gsnr_every)


__all__ = ["gsnr_probe"]
