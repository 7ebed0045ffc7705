"""The three scales of ``gradmask reproduce`` and how each maps the paper onto the data given.

A :class:`Preset` names, per dataset, the training recipe (``TrainConfig`` overrides, CPU and CUDA
variants) and the evaluation sizes. :func:`make_plan` turns a preset, the ``--data`` paths and the
device into a :class:`Plan`: which dataset serves which experiment.

- Table 1 runs on every accuracy dataset given (``quick``: synthetic only); with a
  :class:`~gradmask.compare.tuning.Tuning` (the preset's or ``--tune``) each arm's grid point is
  chosen on a validation split first.
- Table 2 (ablations) and Figures 5-6 (pruning, FGSM) run on the first available dataset of
  ``cifar100 > cifar10 > synthetic`` (``imagenet`` first for Figures 5-6, as in the paper).
- Figure 7 (GSNR) on ``cifar10 > cifar100 > synthetic`` (the paper used CIFAR-10).
- Table 3, Appendix A and Figure 10 need object boxes: always the synthetic data (its own models);
  Table 3 and Figure 10 also on ``cifar10-placed`` (CIFAR-10 objects placed on backgrounds of other
  CIFAR-10 images, :mod:`gradmask.data.placed`; its own models) in presets with ``placed_training``
  when ``--data cifar10=PATH`` is given; VOC 2007 / ImageNet boxes for Table 3 when given together
  with ImageNet models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from ..compare import Tuning
from ..data import DATASETS, PLACED
from ..models import model_groups
from ..train.recipes import PAPER_CIFAR
from ..util.device import is_device_name

#: ``--data NAME=PATH`` names reproduce accepts.
DATA_NAMES = ("cifar10", "cifar100", "imagenet", "voc2007", "imagenet-boxes")
ACCURACY_DATASETS = ("synthetic", "cifar10", "cifar100", "imagenet")
ABLATION_VARIANTS = ("lateral", "norm", "pixel")   # Table 2 compares these (none is Table 1's)
GSNR_ORDER = ("cifar10", "cifar100", "synthetic")   # Figure 7: the first of these trained (paper: CIFAR-10)

# the synthetic recipe behind Table 3 / Appendix A / Figure 10 (and Table 1 for "quick"): no distractors
# (clutter 0), batch 32 at lr 0.05; with the full clutter (batch 64, lr 0.1) the normal models reached only
# 14-25% in these 4 epochs on 3000 images, without it 74-90% over 3 seeds (docs/DESIGN.md, the quick preset)
_SYNTHETIC_QUICK = dict(model="resnet18_narrow", epochs=4, batch_size=32, lr=0.05, schedule="triangle",
                        warmup_epochs=1.0, augment="none", train_limit=3000, test_limit=1000, synthetic_clutter=0.0)
# the longer synthetic recipe (cifar presets on CUDA, "paper"): full clutter, its own batch size and lr
_SYNTHETIC_LONG = dict(model="resnet18_narrow", epochs=15, batch_size=64, lr=0.1, schedule="triangle",
                       warmup_epochs=1.0, augment="crop-flip", train_limit=None, test_limit=1000,
                       synthetic_train=10000)
# Table 3 / Figure 10 on CIFAR-10 objects placed on backgrounds (cifar10-placed, 32 px canvas): 6000 rendered
# training images (6000 different training objects), 1000 test images, 6 epochs; crop-flip, so that the li-blur
# runs (crop-flip + Algorithm 2) differ from the baseline by Algorithm 2 alone; about 0.6x a cifar CPU run
_PLACED_QUICK = dict(model="resnet18_narrow", epochs=6, batch_size=64, lr=0.1, schedule="triangle",
                     warmup_epochs=1.0, augment="crop-flip", train_limit=None, test_limit=1000, synthetic_train=6000,
                     synthetic_test=1000)
_PLACED = {"cpu": _PLACED_QUICK, "cuda": _PLACED_QUICK}
#: the box sets whose models reproduce trains itself (Table 3 and Figure 10 run on them)
TRAINED_BOX_SETS = ("synthetic", PLACED)
_CIFAR_CPU = dict(model="resnet18_narrow", epochs=4, batch_size=128, lr=0.1, schedule="triangle",
                  warmup_epochs=1.0, augment="crop-flip", train_limit=15000, test_limit=2000)
_CIFAR_GPU = dict(model="resnet18", epochs=30, batch_size=256, lr=0.1, schedule="triangle",
                  warmup_epochs=3.0, augment="crop-flip", amp="bf16", channels_last=True)
# Table 1 at the largest scale that fits about 6 hours on one CPU thread: all 50,000 training and 10,000
# test images, 15 epochs (a 50k-image epoch of the narrow ResNet takes about 3.2 min on one thread), each
# arm's lr tuned on a 10% validation split with 3-epoch runs (warm-up scaled to 0.6 epochs); the grid reaches
# 0.4 because on the 3-value grid both arms chose its top, 0.2 (the masked arm still rising)
_CIFAR_FULL = dict(model="resnet18_narrow", epochs=15, batch_size=128, lr=0.1, schedule="triangle",
                   warmup_epochs=3.0, augment="crop-flip")
_CIFAR_FULL_TUNING = Tuning({"lr": (0.05, 0.1, 0.2, 0.4)}, epochs=3, seeds=1, val_fraction=0.1)
# Table 1 where a regulariser can pay: a network that fits its training set. A fixed 10,000-image draw of
# CIFAR-10's training split, all 10,000 test images, the narrow ResNet-18 and the classic recipe for every arm
# alike (SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, lr x0.1 at 50% and 75% of training,
# crop-flip), not tuned; 160 epochs = 1.6M image passes per run, about 1.8 h on one CPU thread. An 80-epoch
# pilot (none, seed 0; steps at 40/60) reached a train-eval top-1 of 94.8% at epoch 60 and stayed at 96.1-96.3%
# over epochs 65-71: short of the 97% the regime needs, so the lr phases are twice as long.
_CIFAR_OVERFIT = dict(model="resnet18_narrow", epochs=160, batch_size=128, lr=0.1, momentum=0.9,
                      weight_decay=5e-4, schedule="multistep", milestones=(80, 120), gamma=0.1, warmup_epochs=0.0,
                      augment="crop-flip", train_limit=10000, test_limit=None, train_eval_images=2000)
# its arms: the paper's mask (sigma 11 on 5x5: in effect a blur, every tap negative), the mask with a
# centre-surround LoG (sigma 1 on 5x5: an inhibitory surround), and Table 2's "without LI" (norm)
_OVERFIT_ARMS = ("none", "lateral", "lateral@sigma=1", "norm")
# the standard ResNet-50 ImageNet recipe (He et al.): the paper says it kept the original hyperparameters
_IMAGENET_PAPER = dict(model="resnet50", stem="imagenet", epochs=90, batch_size=256, lr=0.1,
                       momentum=0.9, weight_decay=1e-4, schedule="multistep", milestones=(30, 60, 80),
                       gamma=0.1, warmup_epochs=0.0, augment="crop-flip", amp="bf16", channels_last=True,
                       num_workers=8)


@dataclass(frozen=True)
class Evaluation:
    """Sizes of the evaluation experiments (images are the first N of a fixed random subset)."""
    robustness_images: int = 500
    sparsities: tuple = (0.0, 0.3, 0.5, 0.7, 0.9)
    epsilons: tuple = (0.0, 1.0, 2.0, 4.0, 8.0)
    saliency_images: int = 500
    sanity_images: int = 8
    blur_images: int = 500
    blur_sigmas: tuple = (0.0, 1.0, 2.0, 4.0)
    gsnr_samples: int = 64
    gsnr_every: int = 1


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    datasets: tuple                      # Table 1 datasets, used when their data is given
    training: Mapping[str, Mapping[str, dict]]  # dataset -> {"cpu": overrides, "cuda": overrides}
    boxes_training: Mapping[str, dict]   # the synthetic runs of Table 3 / Appendix A / Figure 10
    evaluation: Evaluation = field(default_factory=Evaluation)
    seeds: int = 3
    requires_data: bool = False
    tuning: Optional[Tuning] = None      # Table 1's arms tuned on a validation split (None: not tuned)
    # Table 2 at its own scale (dataset -> {"cpu", "cuda"} overrides), in <dataset>/ablation/, variants
    # ABLATION_VARIANTS; None: Table 2 reuses Table 1's runs (which then include norm and pixel)
    ablation_training: Optional[Mapping[str, Mapping[str, dict]]] = None
    # Table 1's arms (:mod:`gradmask.compare.arms`: mask modes, or modes with overrides), "none" first
    arms: tuple = ("none", "lateral")
    # the cifar10-placed runs of Table 3 / Figure 10 ({"cpu", "cuda"} overrides), trained when --data cifar10 is
    # given; None: the box experiments run on synthetic data (and VOC / ImageNet boxes) only
    placed_training: Optional[Mapping[str, dict]] = None


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "quick", "every experiment on the built-in synthetic data without distractors (clutter 0), narrow "
                 "ResNet-18, 4 epochs on 3000 images, batch 32, lr 0.05; about 12 minutes on 2 CPU cores",
        ("synthetic",),
        {"synthetic": {"cpu": _SYNTHETIC_QUICK, "cuda": _SYNTHETIC_QUICK}},
        {"cpu": _SYNTHETIC_QUICK, "cuda": _SYNTHETIC_QUICK}),
    "cifar": Preset(
        "cifar", "Tables 1-2 and Figures 5-7 on CIFAR-10/100 (narrow ResNet-18, 4 epochs on 15,000 images on "
                 "CPU; ResNet-18, 30 epochs on a GPU); boxes experiments on synthetic data and cifar10-placed",
        ("cifar10", "cifar100"),
        {"cifar10": {"cpu": _CIFAR_CPU, "cuda": _CIFAR_GPU}, "cifar100": {"cpu": _CIFAR_CPU, "cuda": _CIFAR_GPU}},
        {"cpu": _SYNTHETIC_QUICK, "cuda": _SYNTHETIC_LONG}, requires_data=True, placed_training=_PLACED),
    "cifar-full": Preset(
        "cifar-full", "Table 1 on all of CIFAR-10 (50,000 training / 10,000 test images, narrow ResNet-18, crop-flip, "
                      "15 epochs, 3 seeds on CPU), each arm's lr tuned on a 10% validation split (0.05 / 0.1 / 0.2 / "
                      "0.4, 3-epoch runs, 1 seed); Table 2 keeps the cifar preset's scale (4 epochs on 15,000 images); "
                      "Figures 5-7 on the Table 1 runs; boxes experiments on synthetic data and cifar10-placed; "
                      "about 6-7 hours on one CPU thread", ("cifar10", "cifar100"),
        {"cifar10": {"cpu": _CIFAR_FULL, "cuda": _CIFAR_GPU}, "cifar100": {"cpu": _CIFAR_FULL, "cuda": _CIFAR_GPU}},
        {"cpu": _SYNTHETIC_QUICK, "cuda": _SYNTHETIC_LONG}, requires_data=True, tuning=_CIFAR_FULL_TUNING,
        ablation_training={"cifar10": {"cpu": _CIFAR_CPU, "cuda": _CIFAR_GPU},
                           "cifar100": {"cpu": _CIFAR_CPU, "cuda": _CIFAR_GPU}}, placed_training=_PLACED),
    "overfit": Preset(
        "overfit", "Table 1 where the network overfits: a fixed 10,000-image draw of CIFAR-10's training split, all "
                   "10,000 test images, narrow ResNet-18, the classic recipe for every arm (SGD lr 0.1, lr x0.1 at "
                   "epochs 80 and 120 of 160, weight decay 5e-4, crop-flip; not tuned), arms none, lateral (the "
                   "paper's sigma 11), lateral@sigma=1 (centre-surround) and norm, 3 seeds; Table 2 at the cifar "
                   "preset's scale; about 11 hours on two CPU threads (--jobs 2)", ("cifar10", "cifar100"),
        {"cifar10": {"cpu": _CIFAR_OVERFIT, "cuda": _CIFAR_OVERFIT},
         "cifar100": {"cpu": _CIFAR_OVERFIT, "cuda": _CIFAR_OVERFIT}},
        {"cpu": _SYNTHETIC_QUICK, "cuda": _SYNTHETIC_LONG}, requires_data=True,
        ablation_training={"cifar10": {"cpu": _CIFAR_CPU, "cuda": _CIFAR_GPU},
                           "cifar100": {"cpu": _CIFAR_CPU, "cuda": _CIFAR_GPU}},
        arms=_OVERFIT_ARMS, placed_training=_PLACED),
    "paper": Preset(
        "paper", "the paper's settings: ResNet-18 on CIFAR-100/10 (200 epochs), ResNet-50 on ImageNet (90 epochs, "
                 "run it under torchrun)", ("cifar10", "cifar100", "imagenet"),
        {"cifar10": {"cpu": PAPER_CIFAR, "cuda": PAPER_CIFAR},
         "cifar100": {"cpu": PAPER_CIFAR, "cuda": PAPER_CIFAR},
         "imagenet": {"cpu": _IMAGENET_PAPER, "cuda": _IMAGENET_PAPER}},
        {"cpu": _SYNTHETIC_LONG, "cuda": _SYNTHETIC_LONG},
        Evaluation(robustness_images=10000, sparsities=(0.0, 0.2, 0.4, 0.6, 0.8, 0.9), epsilons=(0, 1, 2, 4, 8, 16),
                   saliency_images=2000, sanity_images=16, blur_images=2000, blur_sigmas=(0, 1, 2, 4, 8),
                   gsnr_samples=256, gsnr_every=10),
        requires_data=True),
}


def parse_data(items) -> dict[str, str]:
    """``["cifar10=PATH", ...]`` -> ``{"cifar10": PATH}``; names from :data:`DATA_NAMES`, paths must exist."""
    data: dict[str, str] = {}
    for item in items or ():
        name, sep, path = str(item).partition("=")
        name = name.strip()
        if not sep or not path:
            raise ValueError(f"--data must be NAME=PATH with NAME one of {', '.join(DATA_NAMES)}, got {item!r}")
        if name not in DATA_NAMES:
            raise ValueError(f"--data {name}=...: unknown name; accepted: {', '.join(DATA_NAMES)}")
        if name in data:
            raise ValueError(f"--data names {name} more than once")
        if not Path(path).expanduser().exists():
            raise FileNotFoundError(f"--data {name}={path}: {path} does not exist")
        data[name] = str(Path(path).expanduser())
    return data


@dataclass(frozen=True)
class Plan:
    """Which dataset serves which experiment, for one preset, data and device."""
    preset: Preset
    data: Mapping[str, str]
    device: str                          # "cpu", "cuda" or "cuda:N" (the training / evaluation steps run there)
    seeds: int
    accuracy: tuple                      # Table 1 datasets
    ablation: str                        # Table 2
    robustness: str                      # Figures 5-6
    gsnr: Optional[str]                  # Figure 7 (None: no probed dataset trained)
    box_sets: tuple                      # Table 3 beyond synthetic: cifar10-placed, voc2007, imagenet-boxes if usable
    skipped: tuple                       # (experiment, reason) pairs
    tuning: Optional[Tuning] = None      # Table 1's arms tuned on a validation split (None: not tuned)

    @property
    def device_type(self) -> str:
        """``"cpu"`` or ``"cuda"`` (``"cuda"`` for ``"cuda:1"``): the key of the preset's per-device recipes."""
        return self.device.partition(":")[0]

    @property
    def separate_ablation(self) -> bool:
        """Whether Table 2 trains at its own scale (``<dataset>/ablation/``) instead of reusing Table 1's runs."""
        return self.preset.ablation_training is not None and self.ablation in self.preset.ablation_training

    def to_json(self) -> dict:
        """What the report needs of the plan, stored with the run (``reproduce.json``) so that the
        report reads the decisions instead of re-deriving them (see
        :class:`gradmask.reproduce.report.StoredPlan`)."""
        return {"preset": self.preset.name, "device": self.device, "seeds": self.seeds,
                "accuracy": list(self.accuracy), "ablation": self.ablation,
                "separate_ablation": self.separate_ablation, "robustness": self.robustness, "gsnr": self.gsnr,
                "table3_box_sets": ["synthetic", *self.box_sets],
                "tuning": None if self.tuning is None else self.tuning.to_json(), "arms": list(self.preset.arms)}

    def training(self, dataset: str, ablation: bool = False) -> dict:
        """TrainConfig fields of ``dataset``'s runs (dataset and data path included); ``ablation``:
        of its separate Table 2 runs."""
        if ablation:
            fields = dict(self.preset.ablation_training[dataset][self.device_type])
        elif dataset == PLACED:
            fields = dict(self.preset.placed_training[self.device_type])
        elif dataset == "synthetic" and dataset not in self.preset.training:
            fields = dict(self.preset.boxes_training[self.device_type])
        else:
            fields = dict(self.preset.training[dataset][self.device_type])
        # the GSNR probe needs an in-memory training set (streamed ImageNet has none; Figure 7 is CIFAR's)
        source = "cifar10" if dataset == PLACED else dataset   # cifar10-placed renders from CIFAR-10's images
        fields.setdefault("groups", model_groups(fields["model"]))  # recorded in the step's settings, as before
        fields.update(dataset=dataset, data=self.data.get(source), device=self.device,
                      gsnr_every=0 if DATASETS[dataset].streamed else self.preset.evaluation.gsnr_every,
                      gsnr_samples=self.preset.evaluation.gsnr_samples)
        return fields


def _first(order, available) -> Optional[str]:
    return next((d for d in order if d in available), None)


def figure7_dataset(trained) -> Optional[str]:
    """Figure 7's dataset: the first of :data:`GSNR_ORDER` among ``trained`` (ImageNet runs carry no
    GSNR probe); the plan and the report both choose with this."""
    return _first(GSNR_ORDER, trained)


def make_plan(preset: str, data: Mapping[str, str] | None = None, device: str = "cpu",
              seeds: Optional[int] = None, tuning: Optional[Tuning] = None) -> Plan:
    """The :class:`Plan` of ``preset`` with ``data`` (``{name: path}``) on ``device`` ("cpu", "cuda" or
    "cuda:N": the recipes are the device type's, the runs and evaluations use that device);
    ``tuning`` (``--tune``) replaces the preset's own."""
    if preset not in PRESETS:
        raise ValueError(f"preset (--preset) must be one of {', '.join(PRESETS)}, got {preset!r}")
    if not is_device_name(device, auto=False):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    p = PRESETS[preset]
    data = dict(data or {})
    seeds = p.seeds if seeds is None else seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds (--seeds) must be an integer >= 1, got {seeds!r}")
    accuracy = tuple(d for d in p.datasets if d == "synthetic" or d in data)
    if p.requires_data and not accuracy:
        wanted = " or ".join(f"--data {d}=PATH" for d in p.datasets)
        raise ValueError(f"preset {preset!r} needs {wanted} (use --preset quick for the synthetic data)")
    skipped = []
    for d in p.datasets:
        if d not in accuracy:
            skipped.append((f"Table 1 on {d}", f"no --data {d}=PATH given"))
    ablation = _first(("cifar100", "cifar10", "synthetic"), accuracy) or accuracy[0]
    robustness = _first(("imagenet", "cifar100", "cifar10", "synthetic"), accuracy) or accuracy[0]
    gsnr = figure7_dataset(accuracy)
    if gsnr is None:
        skipped.append(("Figure 7", f"needs runs on {', '.join(GSNR_ORDER)} (ImageNet runs carry no GSNR probe)"))
    box_sets = []
    if p.placed_training is not None:
        if "cifar10" in data:
            box_sets.append(PLACED)
        else:
            skipped.append((f"Table 3 and Figure 10 on {PLACED}", "no --data cifar10=PATH given (its objects)"))
    for name in ("voc2007", "imagenet-boxes"):
        if name not in data:
            skipped.append((f"Table 3 on {name}", f"no --data {name}=PATH given (synthetic boxes only)"))
        elif "imagenet" not in accuracy:
            skipped.append((f"Table 3 on {name}", "needs ImageNet-trained models (--data imagenet=PATH, "
                                                  "--preset paper) to explain these images"))
        else:
            box_sets.append(name)
    return Plan(p, data, device, seeds, accuracy, ablation, robustness, gsnr, tuple(box_sets), tuple(skipped),
                tuning if tuning is not None else p.tuning)
