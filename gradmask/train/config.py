"""``TrainConfig``: every hyperparameter of a training run in one dataclass, and the presets.

``TrainConfig(**fields)`` validates on construction (``ValueError`` naming the field and the
accepted range); the mask's settings are one :class:`gradmask.MaskSettings`, ``mask_settings``.
On disk (``config.json``, the checkpoint) a config is flat: :meth:`TrainConfig.to_dict` writes the
settings' fields (``groups``, ``sigma``...) beside the others, and :meth:`TrainConfig.from_dict`,
:meth:`TrainConfig.replace` and :meth:`TrainConfig.from_preset` take those flat names.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Optional

from ..data.registry import DATASETS, dataset_spec
from ..models import list_models, model_groups
from ..settings import DEFAULTS as MASK_DEFAULTS
from ..settings import MASK_MODES, MODES, MaskSettings
from ..util.device import is_device_name
from .augment import augment_names
from .inhibition import INHIBITION_SCHEDULES
from .recipes import PAPER_CIFAR

STEMS = ("cifar", "imagenet")
SCHEDULES = ("multistep", "cosine", "triangle")
#: Old schedule names, read as their new ones (a config.json or checkpoint written before the rename
#: loads, resumes and compares equal): "onecycle" was never PyTorch's OneCycleLR but a linear decay.
SCHEDULE_ALIASES = {"onecycle": "triangle"}
AMP_MODES = ("none", "bf16", "fp16")
MAX_VAL_FRACTION = 0.5  # the largest share of the training images a validation split may take

#: The flat names of the mask settings in config.json, checkpoints, arms and ``--tune`` (MaskSettings' fields
#: but ``mode``, which ``mask`` gives).
MASK_SETTING_FIELDS = tuple(f.name for f in dataclasses.fields(MaskSettings) if f.name != "mode")
#: Keys config.json holds beside the config (written by the run directory), ignored when read.
RECORD_KEYS = ("gradmask_version", "trained_by", "checksum", "machine")

#: Presets applied by :meth:`TrainConfig.from_preset` (fields not named keep their defaults).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": PAPER_CIFAR,  # the paper's CIFAR recipe, also gradmask reproduce's (gradmask.train.recipes)
    # About a minute on 2 CPU cores on the synthetic data, clearly above chance (see README).
    # No augmentation: in 4 epochs it only slows learning down.
    "quick": dict(model="resnet18_narrow", epochs=4, batch_size=64, lr=0.1, momentum=0.9,
                  weight_decay=5e-4, nesterov=False, schedule="triangle", warmup_epochs=1.0,
                  label_smoothing=0.0, augment="none", train_limit=5000, test_limit=1000),
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class TrainConfig:
    """All hyperparameters of one run (airbench style). See ``docs/DESIGN.md`` for the engine.

    Data: ``dataset`` one of ``DATASETS`` (the dataset registry, :mod:`gradmask.data.registry`);
    ``data`` its path (not used by "synthetic");
    ``train_limit`` / ``test_limit`` use only N images of a split, drawn with a fixed seed (the
    same in every run; streamed ImageNet: N images per epoch); ``val_fraction`` > 0 holds out that
    share of the training images (a fixed seeded draw, :func:`gradmask.train.data.validation_split`)
    as a validation split: the run trains on the rest (``train_limit`` then draws from the rest),
    evaluates on the validation split (metrics ``val_*`` instead of ``test_*``) and never reads the
    test split (tuning); ``synthetic_train`` / ``synthetic_test`` rendered set sizes (synthetic,
    cifar10-placed: CIFAR-10 objects placed on backgrounds, :mod:`gradmask.data.placed`);
    ``synthetic_clutter`` the synthetic data's distractors (strokes, blobs, patches, mid-frequency
    texture and pixel noise; :func:`gradmask.data.make_synthetic`): 1 the default, 0 none (the
    objects on the low-frequency colour-noise background only), the same in every evaluation of the run;
    ``augment`` a name in ``gradmask.train.augment.AUGMENTS`` ("crop-flip": random crop with
    4-pixel padding + horizontal flip, ImageNet: random-resized-crop + flip; "none");
    ``num_workers`` decoding processes of the streamed ImageNet loader; ``image_size``
    (resizable datasets only) "folder": resize every image to ``image_size`` x ``image_size`` when
    decoding (None: keep their size, which must then be one for all); "cifar10-placed": the canvas side
    (None: 32).

    Model: ``model`` any :func:`gradmask.create_model` name (incl. "torchvision:NAME" /
    "timm:NAME"); ``stem`` "cifar" / "imagenet" (None: "imagenet" for ImageNet or images larger
    than 64 px, else "cifar").

    Optimisation: SGD(``lr``, ``momentum``, ``weight_decay``, ``nesterov``), ``batch_size`` is
    the global batch (split evenly over distributed processes); the lr is set every step by
    ``schedule``: "multistep" (x ``gamma`` at each epoch of ``milestones``), "cosine" (to 0),
    "triangle" (linear down to 0: with the warm-up, linear up to ``lr`` and linear down, a triangle;
    not PyTorch's ``OneCycleLR``, whose phases are cosine; "onecycle", its old name, is read as
    "triangle"); each after a linear warm-up of ``warmup_epochs`` (the triangle's rising side; for
    "cosine" / "triangle" at most all steps but the last). ``label_smoothing`` of the training loss.

    Execution: ``seed`` (torch, numpy, python, data order and augmentation); ``device`` "auto"
    (CUDA if available), "cpu", "cuda", "cuda:N"; ``amp`` autocast "none" / "bf16" / "fp16"
    (fp16 on CUDA only, with a GradScaler; bf16 on CPU too); ``channels_last``; ``compile``
    (``torch.compile``).

    Gradient mask: ``mask`` "none" (vanilla) or a :class:`gradmask.GradientMask` mode, with
    ``mask_settings`` a :class:`gradmask.MaskSettings` (``groups``, ``sigma``, ``kernel_size``, ``kernel``,
    ``padding``, ``inhibition_rate``; its ``mode`` follows ``mask``; a vanilla run keeps them, unused; None:
    the library defaults with the model's ``groups``, :func:`gradmask.models.model_groups`), ``targets``
    (module names / patterns; None: every residual block but the last ``skip_last``).
    ``inhibition_schedule`` sets the rate every step (:mod:`gradmask.train.inhibition`): "constant"
    (``inhibition_rate``), "warmup" (linear from 0 to ``inhibition_rate`` over the first
    ``inhibition_warmup`` epochs), "anneal" (cosine from ``inhibition_rate`` down to 0 over training).

    Fit: ``train_eval_images`` training images (a fixed draw, the same for every run on the same
    training images) are evaluated after every epoch in eval mode without augmentation
    (``train_eval_acc`` / ``train_eval_loss`` in the metrics; 0: off; streamed datasets: off): with the
    test figures they give the generalisation gap.

    Run directory: ``arm`` the name of the comparison arm the run belongs to (e.g.
    ``"lateral@sigma=1"``: a mask mode plus overrides, :mod:`gradmask.compare.arms`; None: its
    ``mask``); ``out`` (None: ``runs/<dataset>-<model>-<mask>-seed<seed>``); ``resume``
    continue from ``<out>/checkpoint.pt`` (a finished run returns its final metrics);
    ``overwrite`` start again in a directory holding a run; ``tensorboard`` also log to
    ``<out>/tensorboard`` (needs the tensorboard package); ``progress`` a tqdm bar per epoch.
    """

    # data
    dataset: str = "synthetic"
    data: Optional[str] = None
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None
    val_fraction: float = 0.0
    synthetic_train: int = 20000
    synthetic_test: int = 5000
    synthetic_clutter: float = 1.0
    augment: str = "crop-flip"
    train_eval_images: int = 2000
    num_workers: int = 8
    image_size: Optional[int] = None
    # model
    model: str = "resnet18_narrow"
    stem: Optional[str] = None
    # optimisation
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"
    milestones: tuple[int, ...] = (60, 120, 160)
    gamma: float = 0.2
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    # execution
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    # gradient mask
    mask: str = MASK_DEFAULTS.mode
    mask_settings: Optional[MaskSettings] = None  # None: MaskSettings(groups=model_groups(model))
    inhibition_schedule: str = "constant"
    inhibition_warmup: float = 0.0
    targets: Optional[tuple[str, ...]] = None
    skip_last: int = 2
    # GSNR probe (Figure 7): every ``gsnr_every`` epochs (0: off), the GSNR of the conv weights on
    # ``gsnr_samples`` training images drawn with a fixed seed (un-augmented), written to <out>/gsnr.jsonl
    gsnr_every: int = 0
    gsnr_samples: int = 256
    # run directory and reporting
    arm: Optional[str] = None
    out: Optional[str] = None
    resume: bool = False
    overwrite: bool = False
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        # normalise sequences read back from JSON (lists) or given as lists
        if isinstance(self.milestones, (list, tuple)):
            self.milestones = tuple(self.milestones)
        if isinstance(self.targets, str):
            self.targets = tuple(t for t in self.targets.split(",") if t)
        elif isinstance(self.targets, list):
            self.targets = tuple(self.targets)
        if self.data is not None and not isinstance(self.data, str):
            self.data = str(self.data)  # os.PathLike
        if self.out is not None and not isinstance(self.out, str):
            self.out = str(self.out)
        if isinstance(self.schedule, str):
            self.schedule = SCHEDULE_ALIASES.get(self.schedule, self.schedule)
        mode = self.mask if self.mask in MODES else MASK_DEFAULTS.mode
        if self.mask_settings is None:
            self.mask_settings = MaskSettings(groups=model_groups(self.model), mode=mode)
        elif isinstance(self.mask_settings, MaskSettings) and self.mask_settings.mode != mode:
            self.mask_settings = dataclasses.replace(self.mask_settings, mode=mode)
        self.validate()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TrainConfig":
        """``PRESETS[name]`` with ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from its flat dict (:meth:`to_dict`, every stored ``config.json`` and checkpoint:
        ``RECORD_KEYS`` ignored, a missing key takes its default, ``groups`` missing or None the model's) or
        with ``mask_settings`` (a MaskSettings, or its dict) instead of the flat mask settings.
        ``ValueError`` names an unknown field or a bad value."""
        values = {k: v for k, v in values.items() if k not in RECORD_KEYS}
        unknown = sorted(set(values) - set(FLAT_FIELDS) - {"mask_settings"})
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; fields: {sorted(FLAT_FIELDS)}")
        flat = {k: values.pop(k) for k in MASK_SETTING_FIELDS if k in values}
        nested = values.pop("mask_settings", None)
        if flat and nested is not None:
            raise ValueError(f"give the mask settings either as mask_settings or flat ({', '.join(sorted(flat))}), "
                             f"not both")
        if isinstance(nested, dict):
            flat = {k: v for k, v in nested.items() if k != "mode"}
        elif nested is not None:
            return cls(**values, mask_settings=nested)
        mask, model = values.get("mask", MASK_DEFAULTS.mode), values.get("model", cls.model)
        if flat.get("groups") is None:
            flat["groups"] = model_groups(model) if isinstance(model, str) else MASK_DEFAULTS.groups
        mode = mask if mask in MODES else MASK_DEFAULTS.mode
        return cls(**values, mask_settings=MaskSettings(mode=mode, **flat))

    def replace(self, **changes) -> "TrainConfig":
        """A validated copy with ``changes`` (flat names, as :meth:`from_dict`; a changed ``model`` keeps the
        config's ``groups`` unless ``groups`` is given, None for the new model's)."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        """The flat dict of ``config.json`` and checkpoints: the fields in order, ``mask_settings`` as its
        fields but ``mode`` (``MASK_SETTING_FIELDS``) in its place."""
        flat: dict[str, Any] = {}
        for name, value in dataclasses.asdict(self).items():
            if name == "mask_settings":
                flat.update((k, value[k]) for k in MASK_SETTING_FIELDS)
            else:
                flat[name] = value
        return flat

    @property
    def run_dir(self) -> str:
        """``out``, or the default ``runs/<dataset>-<model>-<mask>-seed<seed>``."""
        if self.out is not None:
            return self.out
        model = self.model.replace(":", "_").replace("/", "_")
        return f"runs/{self.dataset}-{model}-{self.mask}-seed{self.seed}"

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field and its accepted range."""

        def bad(name: str, accepted: str) -> ValueError:
            return ValueError(f"{name} must be {accepted}, got {getattr(self, name)!r}")

        def choice(name: str, options) -> None:
            if getattr(self, name) not in options:
                raise bad(name, f"one of {list(options)}")

        def positive_int(name: str, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if not _is_int(v) or v < 1:
                raise bad(name, "an integer >= 1" + (" or None" if optional else ""))

        def number(name: str, lo: float, hi: float = math.inf, lo_open: bool = False,
                   hi_open: bool = True) -> None:
            v = getattr(self, name)
            ok = _is_number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                lo_s = f"{'>' if lo_open else '>='} {lo}"
                hi_s = "" if hi == math.inf else f" and {'<' if hi_open else '<='} {hi}"
                raise bad(name, f"a number {lo_s}{hi_s}")

        def boolean(name: str) -> None:
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False")

        # data
        choice("dataset", tuple(DATASETS))
        spec = dataset_spec(self.dataset)
        if spec.needs_root and not self.data:
            raise ValueError(f"data must be the path of the {self.dataset!r} dataset "
                             f"(a directory or archive), got {self.data!r}")
        positive_int("train_limit", optional=True)
        positive_int("test_limit", optional=True)
        if not _is_number(self.val_fraction) or not 0.0 <= self.val_fraction <= MAX_VAL_FRACTION:
            raise bad("val_fraction", f"0 (no validation split) or a number in (0, {MAX_VAL_FRACTION}]")
        if self.val_fraction and spec.streamed:
            raise ValueError(f"val_fraction needs an in-memory dataset; the streamed {self.dataset!r} loader has no "
                             f"validation split (use 0)")
        positive_int("synthetic_train")
        positive_int("synthetic_test")
        number("synthetic_clutter", 0.0)
        choice("augment", augment_names())
        if not _is_int(self.train_eval_images) or self.train_eval_images < 0:
            raise bad("train_eval_images", "an integer >= 0 (training images evaluated after every epoch; 0 = off)")
        if not _is_int(self.num_workers) or self.num_workers < 0:
            raise bad("num_workers", "an integer >= 0")
        positive_int("image_size", optional=True)
        if self.image_size is not None and not spec.resizable:
            resizable = ", ".join(repr(name) for name, d in DATASETS.items() if d.resizable)
            raise ValueError(f"image_size applies to dataset {resizable} (decoded or rendered at that side); "
                             f"{self.dataset!r} images keep their own size, got image_size={self.image_size!r}")
        # model
        if not isinstance(self.model, str) or not self.model:
            raise bad("model", "a model name")
        if not self.model.startswith(("torchvision:", "timm:")):
            if self.model not in list_models():
                raise ValueError(f"model must be one of {list_models()} or 'torchvision:NAME' / "
                                 f"'timm:NAME', got {self.model!r}")
        if self.stem is not None:
            choice("stem", STEMS)
        # optimisation
        positive_int("epochs")
        positive_int("batch_size")
        number("lr", 0.0, lo_open=True)
        number("momentum", 0.0, 1.0)
        number("weight_decay", 0.0)
        boolean("nesterov")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov must be False when momentum is 0 (Nesterov needs momentum > 0)")
        choice("schedule", SCHEDULES)
        if (not isinstance(self.milestones, tuple) or not all(_is_int(m) and m >= 1 for m in self.milestones)
                or list(self.milestones) != sorted(set(self.milestones))):
            raise bad("milestones", "increasing epochs >= 1 (a list of integers)")
        number("gamma", 0.0, 1.0, lo_open=True, hi_open=False)
        number("warmup_epochs", 0.0)
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must be <= epochs ({self.epochs}), got {self.warmup_epochs!r}")
        number("label_smoothing", 0.0, 1.0)
        # execution
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an integer >= 0")
        if not is_device_name(self.device):
            raise bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'")
        choice("amp", AMP_MODES)
        boolean("channels_last")
        boolean("compile")
        # gradient mask
        choice("mask", MASK_MODES)
        if not isinstance(self.mask_settings, MaskSettings):
            raise bad("mask_settings", "a gradmask.MaskSettings (None: the defaults with the model's groups)")
        choice("inhibition_schedule", INHIBITION_SCHEDULES)
        number("inhibition_warmup", 0.0)
        if self.inhibition_warmup > self.epochs:
            raise ValueError(f"inhibition_warmup (--inhibition-warmup) must be <= epochs ({self.epochs}): a warm-up "
                             f"no longer than training, got {self.inhibition_warmup!r}")
        if self.inhibition_schedule == "warmup" and self.inhibition_warmup == 0:
            raise ValueError("inhibition_warmup (--inhibition-warmup) must be > 0 (epochs, at most epochs) with "
                             "inhibition_schedule='warmup'")
        if self.targets is not None and (not isinstance(self.targets, tuple) or not self.targets
                                         or not all(isinstance(t, str) and t for t in self.targets)):
            raise bad("targets", "None or a non-empty list of module names / patterns")
        if not _is_int(self.skip_last) or self.skip_last < 0:
            raise bad("skip_last", "an integer >= 0")
        if not _is_int(self.gsnr_every) or self.gsnr_every < 0:
            raise bad("gsnr_every", "an integer >= 0 (epochs between GSNR probes; 0 = off)")
        if not _is_int(self.gsnr_samples) or self.gsnr_samples < 2:
            raise bad("gsnr_samples", "an integer >= 2")
        # run directory
        if self.arm is not None and (not isinstance(self.arm, str) or self.arm.split("@")[0] != self.mask):
            raise bad("arm", f"None or the name of an arm of mask {self.mask!r} ('{self.mask}@FIELD=VALUE...')")
        if self.out is not None and not self.out:
            raise bad("out", "a directory path or None")
        for name in ("resume", "overwrite", "tensorboard", "progress"):
            boolean(name)
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: resume continues the run in "
                             "out, overwrite starts it again")


#: The flat fields in config.json's order (``to_dict``'s keys).
FLAT_FIELDS = tuple(n for f in dataclasses.fields(TrainConfig)
                    for n in (MASK_SETTING_FIELDS if f.name == "mask_settings" else (f.name,)))

# mask fields: they do not apply to the vanilla run (mask="none"); the LoG ones not to mask="norm",
# ``groups`` not to mask="pixel" (one mask per channel)
LOG_FIELDS = ("sigma", "kernel_size", "kernel", "padding")
MASK_FIELDS = ("groups", *LOG_FIELDS, "inhibition_rate", "inhibition_schedule", "inhibition_warmup", "targets",
               "skip_last")


def field_applies(name: str, mask: str) -> bool:
    """Whether TrainConfig field ``name`` changes a run with ``mask`` (e.g. ``inhibition_rate``
    does not change ``mask="none"``)."""
    if mask == "none":
        return name not in MASK_FIELDS
    if mask == "norm":
        return name not in LOG_FIELDS
    if mask == "pixel":
        return name != "groups"
    return True


# fields that may differ between a run and its resumption (they do not change the result)
RESUME_FREE_FIELDS = ("out", "resume", "overwrite", "tensorboard", "progress", "num_workers", "device",
                      "compile")


def config_differences(a: TrainConfig, b: TrainConfig, ignore=RESUME_FREE_FIELDS) -> dict[str, tuple]:
    """``{field: (a's value, b's value)}`` for the flat fields (:meth:`TrainConfig.to_dict`) that differ,
    except ``ignore``."""
    flat_a, flat_b = a.to_dict(), b.to_dict()
    return {k: (flat_a[k], flat_b[k]) for k in FLAT_FIELDS if k not in ignore and flat_a[k] != flat_b[k]}


def field_type(name: str) -> Any:
    """The type annotation of flat field ``name`` (a mask setting's is MaskSettings')."""
    owner = MaskSettings if name in MASK_SETTING_FIELDS else TrainConfig
    return typing.get_type_hints(owner)[name]


__all__ = ["AMP_MODES", "DATASETS", "FLAT_FIELDS", "INHIBITION_SCHEDULES", "LOG_FIELDS", "MASK_FIELDS", "MASK_MODES",
           "MASK_SETTING_FIELDS", "MAX_VAL_FRACTION", "PRESETS", "RECORD_KEYS", "SCHEDULE_ALIASES", "SCHEDULES",
           "STEMS", "TrainConfig", "config_differences", "field_applies", "field_type"]
