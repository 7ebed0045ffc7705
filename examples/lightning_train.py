"""The Gradient Mask in a Lightning ``Trainer``: one callback (``pip install -e ".[lightning]"``).

    python examples/lightning_train.py --max-steps 50

Trains gradmask's quarter-width ResNet-18 on gradmask's synthetic images (nothing downloaded); the
callback attaches the mask when fitting starts, lifts it for validation and logs, per target, the kept
fraction and the share of the gradient's energy kept (``gradmask/kept/<target>``,
``gradmask/energy_kept/<target>``: the names ``gradmask train`` gives them in TensorBoard).
"""
import argparse

import lightning
import torch
import torch.nn.functional as F

import gradmask
from gradmask.data import make_synthetic
from gradmask.lightning import GradientMaskCallback


class Classifier(lightning.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.model = gradmask.create_model("resnet18_narrow", num_classes=10)
        self.lr = lr

    def training_step(self, batch, _):
        images, labels = batch
        loss = F.cross_entropy(self.model(images), labels)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, _):
        images, labels = batch
        self.log("val/acc", (self.model(images).argmax(1) == labels).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def loaders(n_train: int, n_val: int, batch_size: int):
    data = make_synthetic(n_train + n_val, seed=0, clutter=0.0)
    images, labels = data.images.float() / 255, data.labels
    train = torch.utils.data.TensorDataset(images[:n_train], labels[:n_train])
    val = torch.utils.data.TensorDataset(images[n_train:], labels[n_train:])
    return (torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True),
            torch.utils.data.DataLoader(val, batch_size=batch_size))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--out", default="lightning_logs")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    train, val = loaders(args.images, max(64, args.images // 10), 64)
    mask = GradientMaskCallback(gradmask.GradientMask(groups=4), targets=None, skip_last=2)
    trainer = lightning.Trainer(max_steps=args.max_steps, callbacks=[mask], default_root_dir=args.out,
                                logger=lightning.pytorch.loggers.CSVLogger(args.out), enable_progress_bar=False,
                                enable_model_summary=False, limit_val_batches=2, accelerator="cpu", devices=1)
    trainer.fit(Classifier(), train, val)
    print({k: round(float(v), 3) for k, v in trainer.logged_metrics.items()})


if __name__ == "__main__":
    main()
