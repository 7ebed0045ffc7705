"""What the paper reports, experiment by experiment: the numbers and claims ``reproduce`` checks.

Numbers are the paper's (Jiang et al., "Gradient Mask"): top-1 accuracy in %, IoU in [0, 1].
Figures 5, 6, 7 and 10 give curves without tabulated values; their claims are the sentences the
paper states about them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..saliency.evaluate import PAPER_TABLE3


@dataclass(frozen=True)
class Claim:
    """One table or figure of the paper: ``key`` (report anchor), ``title``, the ``claim`` the
    verdict tests, the paper's ``setting`` and its ``numbers`` (``{row: {column: value}}``)."""
    key: str
    title: str
    claim: str
    setting: str
    numbers: dict = field(default_factory=dict)   # rows and columns named as the report names them


TABLE1 = Claim(
    "table1", "Table 1: top-1 accuracy with and without Gradient Mask",
    "training with Gradient Mask gives a higher top-1 accuracy than normal training",
    "ResNet-18 on CIFAR-100 (1 V100, the original ResNet hyperparameters); ResNet-50 on ImageNet (8 V100); "
    "sigma 11, K 16, inhibition rate 0.5, every residual block but the last two; one run each",
    {"none": {"cifar100": 78.2, "imagenet": 75.5}, "lateral": {"cifar100": 80.26, "imagenet": 76.01}})

TABLE2 = Claim(
    "table2", "Table 2: ablations without LI and without minicolumn",
    "without LI the accuracy drops significantly; without minicolumn it is lower than the masked network "
    "and trains 3 times slower",
    "ResNet-18 on CIFAR-100, the same hyperparameters as Table 1",
    {"accuracy": {"lateral": 80.26, "norm": 75.86, "pixel": 78.97}, "slowdown": {"pixel": 3.0}})

TABLE2_DATA = "cifar100"   # the data of Table 2's numbers

TABLE3 = Claim(
    "table3", "Table 3: IoU of the top-15% saliency box with the object box",
    "LI-Map localises the object better than Grad-CAM and Grad-CAM++",
    "PASCAL VOC 2007 and ImageNet images with boxes; top 15% pixels -> bounding box -> IoU",
    {"voc2007": PAPER_TABLE3["PASCAL VOC 2007"], "imagenet": PAPER_TABLE3["ImageNet"]})

SANITY = Claim(
    "sanity", "Appendix A: cascading randomization (sanity check)",
    "LI-Map passes the cascading randomization test: its maps change when the weights are randomized",
    "Adebayo et al. (2018): re-initialise the network top-down, compare each map with the trained one")

FIGURE5 = Claim(
    "figure5", "Figure 5: accuracy after L1 pruning",
    "the network trained with Gradient Mask keeps a higher accuracy after pruning",
    "ResNet-50 on ImageNet, L1 pruning per layer and global")

FIGURE6 = Claim(
    "figure6", "Figure 6: accuracy under FGSM",
    "the network trained with Gradient Mask is more robust against FGSM",
    "ResNet-50 on ImageNet validation images both models classify correctly")

FIGURE7 = Claim(
    "figure7", "Figure 7: gradient signal-to-noise ratio during training",
    "Gradient Mask raises the GSNR of the convolution layers during training",
    "ResNet on CIFAR-10, GSNR of the conv weights per epoch")

FIGURE10 = Claim(
    "figure10", "Figure 10: accuracy with a blurred background",
    "the network trained with the LI background-blur augmentation (Algorithm 2) is more accurate when the "
    "background is blurred",
    "ResNet-50 fine-tuned 30 epochs with the augmentation, 100,000 ImageNet images with boxes")
