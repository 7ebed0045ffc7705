"""Your own model in the ``gradmask`` commands: register it, then run any command with it.

    python examples/register_model.py train --model tiny_resnet --epochs 1 --out runs/tiny

``gradmask.models.register_model`` adds ``fn(num_classes, stem, mean, std, **kw) -> nn.Module`` under its
function name (``groups``: the mask's channel sets K when ``--groups`` is not given), so ``--model tiny_resnet``
works in ``train``, ``compare``, ``mask-stats``... in this process (``--jobs N`` workers are fresh interpreters:
register there with the ``setup`` function of ``gradmask.compare.compare`` /
``gradmask.compare.executor.open_trainer``, or use ``--jobs 1``). The model takes images in [0, 1];
``Normalized`` puts the dataset's normalisation first.
"""
import sys

import torch.nn.functional as F
from torch import nn

from gradmask.cli import main
from gradmask.models import Normalized, register_model


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


@register_model(groups=4)  # the mask's default K on this model (plain @register_model: the library's 16)
def tiny_resnet(num_classes: int = 10, stem: str = "cifar", mean=(0.5,) * 3, std=(0.25,) * 3, **kw) -> nn.Module:
    """Four 16-channel residual blocks and a linear head: images (N, 3, H, W) -> logits (N, num_classes)."""
    body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), Block(16), Block(16), nn.MaxPool2d(2), Block(16),
                         Block(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
    return Normalized(body, mean, std)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
