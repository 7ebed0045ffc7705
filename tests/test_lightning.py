"""gradmask.lightning.GradientMaskCallback with a real Lightning Trainer."""
import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("lightning")
from pathlib import Path

import lightning  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import gradmask  # noqa: E402
from gradmask import GradientMask  # noqa: E402
from gradmask.hooks import mask_handles  # noqa: E402
from gradmask.lightning import GradientMaskCallback  # noqa: E402


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.f(x)


class Net(nn.Module):
    def __init__(self, blocks=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*[Residual(8) for _ in range(blocks)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class Module(lightning.LightningModule):
    """Records, per step, whether mask hooks were on the model; optionally fails at a step."""

    def __init__(self, model=None, fail_at=None):
        super().__init__()
        self.model = model if model is not None else Net()
        self.fail_at = fail_at
        self.hooked = {"train": [], "val": []}

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, index):
        if self.fail_at == index:
            raise RuntimeError("failing on purpose")
        self.hooked["train"].append(len(mask_handles(self)))
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, index):
        self.hooked["val"].append(len(mask_handles(self)))
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loaders(n=32, batch=8):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))
    return (torch.utils.data.DataLoader(data, batch_size=batch),
            torch.utils.data.DataLoader(data, batch_size=batch))


def trainer(tmp_path, callbacks, **kw):
    options = dict(max_epochs=2, accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, logger=CSVLogger(str(tmp_path), name="logs"), callbacks=callbacks)
    options.update(kw)
    return lightning.Trainer(**options)


def test_callback_attaches_for_training_only_logs_kept_fractions_and_removes_at_the_end(tmp_path):
    torch.manual_seed(0)
    module = Module()
    callback = GradientMaskCallback(GradientMask(groups=2, kernel_size=3), targets=None, skip_last=1)
    trainer(tmp_path, [callback], num_sanity_val_steps=1).fit(module, *loaders())
    assert module.hooked["train"] == [1] * 8          # 2 epochs x 4 steps, the mask on
    assert module.hooked["val"] and set(module.hooked["val"]) == {0}  # sanity check and validation: off
    assert callback.handle is None and not mask_handles(module)
    rows = list(csv.DictReader(Path(tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()))
    kept = [float(r["gradmask/kept/model.blocks.0"]) for r in rows if r.get("gradmask/kept/model.blocks.0")]
    assert len(kept) == 2 and all(0.4 < k <= 0.5 for k in kept)  # 8x8 maps, rate 0.5: 32 of 64 kept
    assert "gradmask/kept/model.blocks.2" not in rows[0]  # skip_last=1
    tag = "gradmask/energy_kept/model.blocks.0"
    energy = [float(r[tag]) for r in rows if r.get(tag)]
    assert len(energy) == 2 and all(0 < e <= 1 for e in energy)  # the names gradmask train logs (metric_names)


def test_masked_training_differs_from_plain_and_matches_attach(tmp_path):
    """The callback's training equals a hand-written loop with gradmask.attach."""
    train, _ = loaders()
    torch.manual_seed(0)
    module = Module()
    start = {k: v.clone() for k, v in module.state_dict().items()}
    gm = GradientMask(groups=2, kernel_size=3)
    trainer(tmp_path, [GradientMaskCallback(gm)], max_epochs=1, logger=False, limit_val_batches=0).fit(module, train)
    by_hand = Module()
    by_hand.load_state_dict(start)
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.05)
    plain = Module()
    plain.load_state_dict(start)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.05)
    with gradmask.attach(by_hand, gm):
        for x, y in train:
            optimizer.zero_grad()
            F.cross_entropy(by_hand(x), y).backward()
            optimizer.step()
    for x, y in train:
        plain_optimizer.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        plain_optimizer.step()
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, by_hand.state_dict()[k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(module.model.stem.weight, plain.model.stem.weight)


def test_callback_removes_the_mask_when_fitting_fails(tmp_path):
    module = Module(fail_at=2)
    callback = GradientMaskCallback(GradientMask(groups=2, kernel_size=3))
    with pytest.raises(RuntimeError, match="failing on purpose"):
        trainer(tmp_path, [callback], logger=False).fit(module, *loaders())
    assert callback.handle is None and not mask_handles(module)


@pytest.mark.parametrize("precision,dtype", [("bf16-mixed", torch.bfloat16), ("64-true", torch.float64)])
def test_precision_settings(tmp_path, precision, dtype):
    seen = []

    class Recording(GradientMask):
        def apply(self, grad):
            seen.append(grad.dtype)
            return super().apply(grad)

    module = Module()
    trainer(tmp_path, [GradientMaskCallback(Recording(groups=2, kernel_size=3))], max_epochs=1, logger=False,
            limit_val_batches=0, precision=precision).fit(module, loaders()[0])
    assert len(seen) == 4 * 1 and set(seen) == {dtype}
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_model_without_targets_and_bad_arguments_are_clear_errors(tmp_path):
    plain = Module(model=nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(4)))
    with pytest.raises(ValueError, match=r"GradientMaskCallback: Module has no residual blocks.*targets=\[\.\.\.\]"):
        trainer(tmp_path, [GradientMaskCallback(GradientMask())], logger=False).fit(plain, loaders()[0])
    with pytest.raises(ValueError, match="gradient_mask must be a gradmask.GradientMask"):
        GradientMaskCallback("lateral")
    with pytest.raises(ValueError, match="skip_last must be an integer >= 0"):
        GradientMaskCallback(GradientMask(), skip_last=-1)
    module = Module()
    with pytest.raises(ValueError, match="target 'blocks.9' matches no module of Module"):
        trainer(tmp_path, [GradientMaskCallback(GradientMask(), targets=["blocks.9"])], logger=False).fit(
            module, loaders()[0])


DDP_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import lightning
    sys.path.insert(0, sys.argv[2])
    from test_lightning import GradientMaskCallback, GradientMask, Module, loaders, mask_handles
    from lightning.pytorch.loggers import CSVLogger

    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = Module()
    callback = GradientMaskCallback(GradientMask(groups=2, kernel_size=3))
    counts = []

    class Count(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            counts.append(callback.handle.stats()["model.blocks.0"]["calls"])

    trainer = lightning.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False,
                                enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                                logger=CSVLogger(sys.argv[1], name="logs"), callbacks=[callback, Count()])
    train, val = loaders(64, 8)
    trainer.fit(module, train, val)
    rank = trainer.global_rank
    weights = module.model.stem.weight.detach()
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump({"world": trainer.world_size, "train": module.hooked["train"], "val": module.hooked["val"],
                   "counts": counts, "hooks_after": len(mask_handles(module)),
                   "weights": weights.flatten()[:10].tolist()}, f)
    # end the gloo group before the interpreter does: left to interpreter exit, its threads can be torn
    # down mid-flight ("terminate called without an active exception", SIGABRT; seen once in CI)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
''')


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """Lightning's DDP strategy (2 processes, gloo): every rank masks its shard, logs once per epoch."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(script), str(tmp_path), os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads(Path(tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["world"] == 2
        assert r["train"] == [1] * 8  # 64 images, 2 ranks, batch 8: 4 steps per epoch, 2 epochs
        assert r["val"] and set(r["val"]) == {0}
        assert r["counts"] == [1, 2, 3, 4] * 2  # the stats reset after each epoch's log
        assert r["hooks_after"] == 0
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas equal
    rows = list(csv.DictReader(Path(tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()))
    assert len([r for r in rows if r.get("gradmask/kept/model.blocks.0")]) == 2
