"""DistributedDataParallel with 2 CPU processes (gloo) launched by torchrun."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import gradmask
from gradmask.train import TrainConfig, load_checkpoint

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from gradmask.train import TrainConfig, train

    config = TrainConfig.from_dict(json.loads(sys.argv[1]))
    spy = sys.argv[2]

    class Spy:
        def on_train_start(self, ctx):
            torch.save({"indices": ctx.data.train.indices(), "world_size": ctx.dist.world_size,
                        "ddp": type(ctx.net).__name__, "targets": sorted(ctx.handle.targets)},
                       os.path.join(spy, f"start{ctx.dist.rank}.pt"))

        def on_train_end(self, ctx, final):
            torch.save(ctx.model.state_dict(), os.path.join(spy, f"rank{ctx.dist.rank}.pt"))

    train(config, callbacks=[Spy()])
""")


def _torchrun(args, tmp_path, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


@pytest.mark.slow
def test_two_gloo_processes_train_one_model_on_disjoint_shards(tmp_path):
    out, spy = tmp_path / "run", tmp_path / "spy"
    spy.mkdir()
    config = TrainConfig(train_limit=256, test_limit=101, epochs=2, batch_size=64, lr=0.05, schedule="triangle",
                         warmup_epochs=0.5, mask="lateral", progress=False, out=str(out))
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    proc = _torchrun([str(script), json.dumps(config.to_dict()), str(spy)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    starts = [torch.load(spy / f"start{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(s["world_size"] == 2 and s["ddp"] == "DistributedDataParallel" for s in starts)
    assert starts[0]["targets"] == starts[1]["targets"] and len(starts[0]["targets"]) == 6
    shard0, shard1 = (set(s["indices"].tolist()) for s in starts)
    assert not shard0 & shard1 and shard0 | shard1 == set(range(256)) and len(shard0) == 128

    weights = [torch.load(spy / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key

    records = [json.loads(line) for line in Path(out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # written once, by rank 0
    assert records[-1]["images_per_second"] > 0
    assert all(0.45 < v <= 0.5 for v in records[-1]["mask_kept"].values())
    final = json.loads(Path(out / "final.json").read_text())
    assert final["device"] == "cpu x2"
    model, _ = load_checkpoint(out)
    assert all(torch.equal(v, weights[0][k]) for k, v in model.state_dict().items())
    # every test image counted once: 101 images over 2 shards of 51, one of them padding
    test = gradmask.data.load_dataset("synthetic", split="test", n=101)
    with torch.no_grad():
        logits = model(test.images.float() / 255)
    assert final["test_acc"] * 101 == pytest.approx((logits.argmax(1) == test.labels).sum().item(), abs=1e-6)


@pytest.mark.slow
def test_torchrun_runs_the_cli(tmp_path):
    out = tmp_path / "cli"
    proc = _torchrun(["-m", "gradmask", "train", "--train-limit", "128", "--test-limit", "64", "--epochs", "1",
                      "--batch-size", "32", "--mask", "none", "--no-progress", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("test acc") == 1  # rank 0 reports
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1 and (out / "final.json").exists()
