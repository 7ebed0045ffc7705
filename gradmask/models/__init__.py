"""Model registry: one contract for every model (images in [0, 1] -> logits).

``create_model("resnet18", num_classes=10, stem="cifar")`` builds a registered model;
``"torchvision:NAME"`` / ``"timm:NAME"`` build a user's model from those packages (randomly
initialised, never downloaded) wrapped in :class:`Normalized` when they are installed.
"""
from __future__ import annotations

import contextlib
import importlib
import itertools
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..settings import DEFAULTS, MaskSettings
from .families import ConvNeXt, ConvNeXtBlock, GroupedBottleneck, InvertedResidual, MobileNet, RegNet
from .resnet import IMAGENET_MEAN, IMAGENET_STD, BasicBlock, Bottleneck, Normalize, Normalized, ResNet
from .vit import VisionTransformer

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_GROUPS: dict[str, int] = {}  # each entry's default gradient-mask channel sets K


def register_model(fn: Optional[Callable[..., nn.Module]] = None, *, groups: int = DEFAULTS.groups):
    """Decorator: register ``fn(num_classes, stem, mean, std) -> nn.Module`` under its name, with
    ``groups`` the mask's default channel sets K on it (``@register_model(groups=4)``; plain
    ``@register_model``: the library default, the paper's 16). ``groups`` must be an integer >= 1."""
    MaskSettings(groups=groups)  # ValueError naming groups

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[fn.__name__] = fn
        _GROUPS[fn.__name__] = groups
        return fn
    return register if fn is None else register(fn)


def model_groups(name: str) -> int:
    """The default ``groups`` (K) of model ``name``: its registry entry's, else (``torchvision:`` /
    ``timm:`` names, unregistered names) the library default, the paper's 16."""
    return _GROUPS.get(name, DEFAULTS.groups)


def list_models() -> list[str]:
    """The registered model names, sorted (``torchvision:NAME`` / ``timm:NAME`` are accepted besides)."""
    return sorted(_REGISTRY)


@register_model(groups=16)
def resnet18(num_classes: int = 1000, stem: str = "imagenet", **kw) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes, stem, **kw)


@register_model(groups=16)
def resnet34(num_classes: int = 1000, stem: str = "imagenet", **kw) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, stem, **kw)


@register_model(groups=16)
def resnet50(num_classes: int = 1000, stem: str = "imagenet", **kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, stem, **kw)


@register_model(groups=4)
def resnet18_narrow(num_classes: int = 10, stem: str = "cifar", **kw) -> ResNet:
    """ResNet-18 layout at a quarter of the width (16-32-64-128): for CPU runs."""
    return ResNet(BasicBlock, (2, 2, 2, 2), (16, 32, 64, 128), num_classes, stem, **kw)


@register_model(groups=4)
def convnext_micro(num_classes: int = 10, stem: str = "cifar", **kw) -> ConvNeXt:
    """ConvNeXt blocks (depthwise 7x7, LayerNorm, MLP, layer scale, drop path 0.1), 16-32-64-128
    channels, two blocks per stage."""
    return ConvNeXt((2, 2, 2, 2), (16, 32, 64, 128), num_classes, stem, **kw)


_MOBILE_SETTINGS = ((1, 16, 1, 1), (4, 32, 2, 2), (4, 48, 2, 2), (4, 64, 2, 1))


@register_model(groups=4)
def mobilenetv2_micro(num_classes: int = 10, stem: str = "cifar", **kw) -> MobileNet:
    """MobileNetV2 inverted residuals (ReLU6), 16-32-48-64 channels; a skip only in blocks 0, 2, 4
    and 6 (stride 1, same channels)."""
    return MobileNet(_MOBILE_SETTINGS, num_classes, stem, **kw)


@register_model(groups=4)
def efficientnet_micro(num_classes: int = 10, stem: str = "cifar", **kw) -> MobileNet:
    """EfficientNet MBConv blocks (SiLU, squeeze-excite, drop path 0.1), the layout of
    ``mobilenetv2_micro``."""
    return MobileNet(_MOBILE_SETTINGS, num_classes, stem, act=nn.SiLU, se=True, drop_path=0.1, **kw)


@register_model(groups=4)
def regnet_micro(num_classes: int = 10, stem: str = "cifar", **kw) -> RegNet:
    """RegNetX / ResNeXt grouped bottlenecks (group width 8), 16-32-64-128 channels, depths 1-2-2-1."""
    return RegNet((1, 2, 2, 1), (16, 32, 64, 128), 8, num_classes, stem, **kw)


@register_model(groups=4)
def vit_tiny(num_classes: int = 10, stem: str = "cifar", **kw) -> VisionTransformer:
    """ViT, 6 blocks of width 96 (3 heads, MLP x2), class token: patch 4 on 32x32 images (stem
    ``"cifar"``: an 8x8 grid) or patch 16 on 224x224 (``"imagenet"``: 14x14)."""
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
    size, patch = (32, 4) if stem == "cifar" else (224, 16)
    return VisionTransformer(num_classes, image_size=size, patch_size=patch, **kw)


def _external(name: str, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    package, _, model_name = name.partition(":")
    try:
        module = importlib.import_module(package)
    except Exception as exc:  # torchvision fails at import on CPU-only torch builds
        raise ValueError(f"model {name!r} needs the package {package!r}, which does not import "
                         f"here ({type(exc).__name__}: {exc})") from exc
    if package == "timm":
        model = module.create_model(model_name, pretrained=False, num_classes=num_classes)
    else:
        builder = getattr(importlib.import_module("torchvision.models"), model_name, None)
        if builder is None:
            raise ValueError(f"torchvision has no model {model_name!r}")
        model = builder(weights=None, num_classes=num_classes)
    return Normalized(model, mean, std)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without either)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; each submodule's ``training`` flag restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def create_model(name: str, num_classes: int, stem: str = "cifar",
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> nn.Module:
    """Build a model taking images in [0, 1] ``(N, 3, H, W)`` and returning logits ``(N, classes)``."""
    if name.startswith(("torchvision:", "timm:")):
        return _external(name, num_classes, mean, std)
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())} "
                         f"(or 'torchvision:NAME' / 'timm:NAME' where installed)")
    return _REGISTRY[name](num_classes=num_classes, stem=stem, mean=mean, std=std)


__all__ = ["BasicBlock", "Bottleneck", "ConvNeXt", "ConvNeXtBlock", "GroupedBottleneck", "InvertedResidual",
           "MobileNet", "Normalize", "Normalized", "RegNet", "ResNet", "VisionTransformer", "create_model",
           "eval_mode", "list_models", "model_device", "model_groups", "register_model", "IMAGENET_MEAN",
           "IMAGENET_STD"]
