"""The Gradient Mask on a timm or torchvision model, where the package is installed (skips cleanly without).

    python examples/timm_torchvision.py --model timm:resnet18
    python examples/timm_torchvision.py --model torchvision:resnet18

``gradmask.attach`` finds the model's residual blocks by what their ``forward`` computes (timm's and
torchvision's ResNets, ConvNeXts, MobileNets, EfficientNets, ViTs); a few SGD steps on random images
show what the mask keeps at each target. Nothing is downloaded (random initial weights).
"""
import argparse
import importlib
import sys

import torch
import torch.nn.functional as F

import gradmask


def build(name: str, classes: int) -> torch.nn.Module:
    package, _, model = name.partition(":")
    module = importlib.import_module(package)  # ImportError (or a broken install's error) when unavailable
    if package == "timm":
        return module.create_model(model, pretrained=False, num_classes=classes)
    return getattr(importlib.import_module("torchvision.models"), model)(weights=None, num_classes=classes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="timm:resnet18", help="timm:NAME or torchvision:NAME")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args(argv)
    try:
        model = build(args.model, classes=10)
    except Exception as exc:  # noqa: BLE001 - torchvision can fail at import on some torch builds
        print(f"skipped: {args.model} needs {args.model.partition(':')[0]}, which does not import here "
              f"({type(exc).__name__}: {exc})")
        return 0
    torch.manual_seed(0)
    handle = gradmask.attach(model, gradmask.GradientMask(groups=4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(args.steps):
        images = torch.rand(8, 3, args.image_size, args.image_size)
        loss = F.cross_entropy(model(images), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, stats in handle.stats().items():
        print(f"{name}: kept {stats['kept_fraction']:.3f} of {stats['shape']} over {stats['calls']} calls")
    handle.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
