"""Small versions of the residual families the default targets must find by structure.

Each is the family's block in its usual form, at CPU size, behind the registry's contract
(images in [0, 1] ``(N, 3, H, W)`` -> logits; ``Normalize`` first): ConvNeXt (depthwise 7x7,
LayerNorm, MLP, layer scale, drop path), inverted residuals (MobileNetV2 / EfficientNet: a skip
only where the stride is 1 and the channels match, optional squeeze-excite), and RegNet /
ResNeXt (grouped 3x3 bottleneck, projection shortcut). The blocks' attributes are deliberately
not ResNet-shaped (no ``conv1`` / ``conv2`` / ``downsample``): they are found by what they compute.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .resnet import IMAGENET_MEAN, IMAGENET_STD, Normalize


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's branch with probability ``p`` and scale the
    kept ones by ``1 / (1 - p)``; the identity in eval mode or for ``p = 0``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x * keep.bernoulli_(1.0 - self.p).div_(1.0 - self.p)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a map ``(N, C, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _head(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def _stem_stride(stem: str) -> int:
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
    return 1 if stem == "cifar" else 4


class ConvNeXtBlock(nn.Module):
    """``x + drop_path(gamma * mlp(norm(dwconv7x7(x))))`` (ConvNeXt, channels-last MLP)."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))
        return x + self.drop_path((self.gamma * branch).permute(0, 3, 1, 2))


class ConvNeXt(nn.Module):
    """``normalize -> stem -> [downsample -> ConvNeXt blocks] x stages -> pool -> norm -> fc``;
    stem ``"cifar"``: 3x3 stride 1, ``"imagenet"``: 4x4 stride 4 (patchify); downsampling between
    stages: LayerNorm + 2x2 stride-2 conv."""

    def __init__(self, depths: Sequence[int], dims: Sequence[int], num_classes: int, stem: str = "cifar",
                 drop_path: float = 0.1, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        stride = _stem_stride(stem)
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 3 if stride == 1 else stride, stride,
                                            1 if stride == 1 else 0), LayerNorm2d(dims[0]))
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        stages, cin, index = [], dims[0], 0
        for depth, dim in zip(depths, dims):
            down = nn.Identity() if dim == cin and not stages else nn.Sequential(
                LayerNorm2d(cin), nn.Conv2d(cin, dim, 2, 2))
            stages.append(nn.Sequential(down, *[ConvNeXtBlock(dim, rates[index + i]) for i in range(depth)]))
            index += depth
            cin = dim
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(cin), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(self.normalize(x))))


class SqueezeExcite(nn.Module):
    """``x * sigmoid(fc2(act(fc1(mean_hw(x)))))``."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class InvertedResidual(nn.Module):
    """MobileNetV2 / EfficientNet MBConv: 1x1 expand, depthwise 3x3 (``stride``), optional
    squeeze-excite, 1x1 project (no activation); ``x + drop_path(block(x))`` only where
    ``stride == 1`` and ``cin == cout``, else ``block(x)`` (not a residual block)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: type = nn.ReLU6,
                 se: bool = False, drop_path: float = 0.0):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), act()]
        if se:
            layers.append(SqueezeExcite(hidden, max(1, cin // 4)))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.has_skip = stride == 1 and cin == cout
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_skip:
            return x + self.drop_path(self.block(x))
        return self.block(x)


class MobileNet(nn.Module):
    """``normalize -> stem conv -> inverted residuals -> 1x1 conv -> pool -> fc``.

    ``settings``: ``(expand, channels, repeats, stride)`` per group (MobileNetV2's table); the
    first block of a group has the group's stride, the others stride 1.
    """

    def __init__(self, settings: Sequence[tuple[int, int, int, int]], num_classes: int, stem: str = "cifar",
                 stem_channels: int = 16, last_channels: int = 256, act: type = nn.ReLU6, se: bool = False,
                 drop_path: float = 0.0, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        stride = 1 if _stem_stride(stem) == 1 else 2
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(3, stem_channels, 3, stride, 1, bias=False),
                                  nn.BatchNorm2d(stem_channels), act())
        blocks, cin = [], stem_channels
        for expand, channels, repeats, group_stride in settings:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, channels, group_stride if i == 0 else 1, expand, act, se,
                                               drop_path))
                cin = channels
        self.blocks = nn.Sequential(*blocks)
        self.last = nn.Sequential(nn.Conv2d(cin, last_channels, 1, bias=False), nn.BatchNorm2d(last_channels), act())
        self.head = _head(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.last(self.blocks(self.stem(self.normalize(x)))))


class GroupedBottleneck(nn.Module):
    """RegNet / ResNeXt block: ``relu(shortcut(x) + project(grouped3x3(reduce(x))))``, the 3x3
    convolution in groups of ``group_width`` channels, optional squeeze-excite; ``shortcut`` a 1x1
    projection + BN where the stride or the width changes, else ``nn.Identity``."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int, bottleneck_ratio: float = 1.0,
                 se: bool = False):
        super().__init__()
        width = int(round(cout * bottleneck_ratio))
        if width % group_width:
            raise ValueError(f"the block width {width} must be a multiple of group_width={group_width}")
        self.reduce = nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.grouped = nn.Sequential(nn.Conv2d(width, width, 3, stride, 1, groups=width // group_width, bias=False),
                                     nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.se = SqueezeExcite(width, max(1, cin // 4)) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.project(self.se(self.grouped(self.reduce(x)))))


class RegNet(nn.Module):
    """``normalize -> stem -> stages of GroupedBottleneck (first block stride 2 but in stage 1)
    -> pool -> fc``."""

    def __init__(self, depths: Sequence[int], widths: Sequence[int], group_width: int, num_classes: int,
                 stem: str = "cifar", stem_channels: int = 16, se: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        stride = 1 if _stem_stride(stem) == 1 else 2
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(3, stem_channels, 3, stride, 1, bias=False),
                                  nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True))
        stages, cin = [], stem_channels
        for index, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for i in range(depth):
                blocks.append(GroupedBottleneck(cin, width, 2 if i == 0 and index > 0 else 1, group_width, se=se))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = _head(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(self.normalize(x))))
