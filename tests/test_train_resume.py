"""Resume after a kill reaches bit-identical weights to an uninterrupted run (CPU)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gradmask.train import TrainConfig, read_checkpoint, train

# Registered here and in the killed subprocess: a per-batch augmentation drawing from the global
# torch RNG, so the test also checks that the RNG state is restored on resume.
REGISTER = textwrap.dedent("""
    import torch
    from gradmask.train.plugins import Augment, register_augment

    def _noise(images, labels, model):
        return (images + 0.05 * torch.randn_like(images)).clamp_(0, 1)

    register_augment("test-noise")(lambda config: Augment(crop_flip=True, batch=_noise))
""")
exec(REGISTER)

KILLED = textwrap.dedent("""
    import json, os, sys
    from gradmask.train import TrainConfig, train
    {register}
    config = TrainConfig.from_dict(json.loads(sys.argv[1]))

    def die(ctx, record):
        if ctx.epoch == int(sys.argv[2]):
            os._exit(17)  # killed: epoch {{n}} computed but neither its metrics nor its checkpoint written

    train(config, callbacks=[die])
""")


def _config(out, **kw):
    base = dict(train_limit=192, test_limit=64, epochs=3, batch_size=64, lr=0.05, schedule="cosine",
                warmup_epochs=0.5, label_smoothing=0.1, augment="test-noise", mask="lateral", seed=3,
                progress=False, out=str(out))
    return TrainConfig.from_dict({**base, **kw})


def _kill_at(config, epoch, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED.format(register=REGISTER))
    proc = subprocess.run([sys.executable, str(script), json.dumps(config.to_dict()), str(epoch)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert proc.returncode == 17, proc.stderr[-3000:]


def _strip_times(records):
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second", "checksum")}
            for r in records]


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(tmp_path):
    whole = _config(tmp_path / "whole")
    final_whole = train(whole)
    reference = read_checkpoint(tmp_path / "whole")

    resumed = _config(tmp_path / "resumed")
    _kill_at(resumed, 2, tmp_path)
    out = tmp_path / "resumed"
    assert not (out / "final.json").exists()
    assert read_checkpoint(out)["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1

    epochs_run = []
    final = train(resumed.replace(resume=True), callbacks=[lambda ctx, record: epochs_run.append(ctx.epoch)])
    assert epochs_run == [2, 3]
    state = read_checkpoint(out)
    assert state["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        assert torch.equal(state["model"][key], value), key
    for a, b in zip(state["optimizer"]["state"].values(), reference["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    metrics = [json.loads(line) for line in Path(out / "metrics.jsonl").read_text().splitlines()]
    reference_metrics = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert _strip_times(metrics) == _strip_times(reference_metrics)
    # the checkpoint's checksum differs with the recorded times
    assert {k: v for k, v in final.items() if k not in ("train_seconds", "checkpoint")} == \
        {k: v for k, v in final_whole.items() if k not in ("train_seconds", "checkpoint")}


@pytest.mark.slow
def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path):
    config = _config(tmp_path / "run", epochs=1)
    _kill_at(config, 1, tmp_path)  # dies before the first checkpoint
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    final = train(config.replace(resume=True))
    assert final["epochs"] == 1 and (tmp_path / "run" / "final.json").exists()
