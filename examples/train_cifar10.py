"""A plain PyTorch training loop on CIFAR-10 with your own model and the Gradient Mask in one line.

    python examples/train_cifar10.py --data cifar-10-python.tar.gz --epochs 1

``--data`` is the python release of CIFAR-10 (``cifar-10-python.tar.gz`` from the CIFAR site, or its
extracted ``cifar-10-batches-py`` folder). The model is defined here; ``gradmask.attach`` finds its
residual blocks by what they compute, and masks the gradient at the output of every block but the last two.
"""
import argparse
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import gradmask


class Block(nn.Module):
    """A residual block: relu(x + conv(relu(conv(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class SmallResNet(nn.Module):
    """Images (N, 3, 32, 32) in [0, 1] -> logits (N, 10)."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width), Block(width), nn.MaxPool2d(2), Block(width), Block(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def load_cifar10(path: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10's python release (the .tar.gz or its folder): images (N, 3, 32, 32) uint8, labels (N,)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    batches = []
    path = Path(path)
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        batches = [pickle.loads((folder / n).read_bytes(), encoding="bytes") for n in names if (folder / n).is_file()]
    else:
        with tarfile.open(path) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            batches = [pickle.loads(tar.extractfile(members[n]).read(), encoding="bytes")
                       for n in names if n in members]
    if not batches:
        raise FileNotFoundError(f"no CIFAR-10 {split} batches ({', '.join(names)}) in {path}")
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([b[b"labels"] for b in batches])
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="cifar-10-python.tar.gz or its cifar-10-batches-py folder")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps (a quick check)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    train_x, train_y = load_cifar10(args.data, "train")
    test_x, test_y = load_cifar10(args.data, "test")
    model = SmallResNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    handle = gradmask.attach(model, gradmask.GradientMask(groups=4, inhibition_rate=0.5))  # the one line
    step = 0
    for epoch in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(train_x)).split(args.batch_size):
            images = train_x[idx].float() / 255
            loss = F.cross_entropy(model(images), train_y[idx])
            optimizer.zero_grad()
            loss.backward()                      # gradients at the blocks' outputs are masked here
            optimizer.step()
            step += 1
            if args.steps and step >= args.steps:
                break
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(test_x[i:i + 500].float() / 255).argmax(1) == test_y[i:i + 500]).sum())
                          for i in range(0, len(test_x), 500))
        kept = {name: round(s["kept_fraction"], 3) for name, s in handle.stats().items()}
        print(f"epoch {epoch + 1}: {step} steps, loss {loss.item():.3f}, test acc {correct / len(test_x):.3f}, "
              f"kept {kept}")
        handle.reset_stats()
        if args.steps and step >= args.steps:
            break
    handle.remove()


if __name__ == "__main__":
    main()
