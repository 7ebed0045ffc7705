"""Training engine: ``train(TrainConfig(...))`` (the ``gradmask train`` command is :mod:`gradmask.cli.train`).

    from gradmask.train import TrainConfig, train, load_checkpoint
    final = train(TrainConfig.from_preset("quick", out="runs/quick"))
    model, config = load_checkpoint("runs/quick")

Modules: config (TrainConfig, PRESETS), engine (train, callbacks), data (loaders of a run),
augment (named augmentations: crop-flip, none, li-blur), gsnr_probe (the GSNR callback of
``gsnr_every``), plugins (the registries for your own augmentations and config-driven callbacks),
schedule (per-step lr), inhibition (per-step inhibition rate), checkpoint (atomic save, load),
rundir (the run directory contract), rng (seeding, RNG state), distributed (torchrun / DDP).
"""
from .augment import AUGMENTS, Augment, register_augment
from .checkpoint import load_checkpoint, read_checkpoint
from .config import PRESETS, TrainConfig
from .engine import TrainContext, train
from .inhibition import INHIBITION_SCHEDULES, InhibitionSchedule
from .rundir import FINAL_KEYS, METRIC_KEYS, RunDir
from .schedule import LRSchedule

__all__ = ["AUGMENTS", "Augment", "FINAL_KEYS", "INHIBITION_SCHEDULES", "InhibitionSchedule", "LRSchedule",
           "METRIC_KEYS", "PRESETS", "RunDir", "TrainConfig", "TrainContext", "load_checkpoint", "read_checkpoint",
           "register_augment", "train"]
