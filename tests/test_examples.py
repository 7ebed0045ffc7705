"""Every script in examples/ runs, on tiny data made here, a few steps each (the README links them)."""
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _cifar_archive(path: Path, n: int = 64) -> Path:
    """A cifar-10-python.tar.gz of the real layout (pickled dicts of uint8 rows) with n random images."""
    rng = np.random.default_rng(0)
    folder = path.parent / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch"):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return path


def test_every_example_is_tested_and_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == ["lightning_train.py", "register_model.py", "timm_torchvision.py", "train_cifar10.py"]
    for name in scripts:
        assert f"examples/{name}" in readme, name
        assert name in Path(__file__).read_text(), name


def test_plain_loop_on_a_cifar10_archive(tmp_path):
    archive = _cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    out = _run("train_cifar10.py", "--data", str(archive), "--steps", "3", "--batch-size", "16", cwd=tmp_path)
    assert "epoch 1: 3 steps" in out and "kept {'blocks.0': 0.5" in out, out


def test_lightning_script(tmp_path):
    pytest.importorskip("lightning")
    out = _run("lightning_train.py", "--max-steps", "3", "--images", "96", "--out", str(tmp_path / "logs"),
               cwd=tmp_path)
    assert "gradmask/kept/model.layer1.0" in out and "gradmask/energy_kept/model.layer1.0" in out, out


def test_timm_or_torchvision_model_or_a_clean_skip(tmp_path):
    for model in ("timm:resnet18", "torchvision:resnet18"):
        out = _run("timm_torchvision.py", "--model", model, "--steps", "1", "--image-size", "32", cwd=tmp_path)
        assert out.startswith("skipped: ") or "layer1.0: kept 0.5" in out, out


def test_a_registered_model_trains_through_the_cli(tmp_path):
    out = _run("register_model.py", "train", "--model", "tiny_resnet", "--epochs", "1", "--train-limit", "64",
               "--test-limit", "32", "--batch-size", "32", "--no-progress",
               "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert "tiny_resnet on synthetic, mask lateral" in out, out
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["model"] == "tiny_resnet" and final["epochs"] == 1
