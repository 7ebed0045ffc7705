"""ResNet-18/34/50 with CIFAR (3x3, no max-pool) or ImageNet (7x7/2 + max-pool) stem.

Images enter in [0, 1]; normalisation is the model's first layer (``Normalize``), so saliency,
attacks and augmentation all work in image space.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..hooks import register_residual_block

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``x`` (N, C, H, W) in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Normalized(nn.Module):
    """A user's model that expects normalised input, made to take images in [0, 1]: images
    ``(N, 3, H, W)`` -> ``model((images - mean) / std)`` (``mean``, ``std``: one value per channel)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)


def _shortcut(cin: int, cout: int, stride: int) -> Optional[nn.Sequential]:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(*_conv_bn(cin, cout, 1, stride))


@register_residual_block
class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus the identity (or a 1x1 projection)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


@register_residual_block
class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), plus the identity (or a 1x1 projection)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, cout, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """``normalize -> stem -> layer1..layer4 -> global average pool -> fc``.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        depths: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        widths: base width per stage, e.g. (64, 128, 256, 512).
        num_classes: size of the output.
        stem: ``"cifar"`` (3x3 stride 1, no max-pool) or ``"imagenet"`` (7x7 stride 2 + max-pool).
        mean, std: the input normalisation (first layer).
    """

    def __init__(self, block: type, depths: Sequence[int], widths: Sequence[int], num_classes: int,
                 stem: str = "imagenet", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.normalize = Normalize(mean, std)
        if stem == "cifar":
            conv, bn = _conv_bn(3, widths[0], 3)
            self.stem = nn.Sequential(conv, bn, nn.ReLU(inplace=True))
        else:
            conv, bn = _conv_bn(3, widths[0], 7, 2)
            self.stem = nn.Sequential(conv, bn, nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        cin = widths[0]
        for index, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for b in range(depth):
                stride = 2 if (b == 0 and index > 0) else 1
                blocks.append(block(cin, width, stride))
                cin = width * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.num_stages = len(depths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
