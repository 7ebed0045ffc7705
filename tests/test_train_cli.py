"""``gradmask train``: a tiny job end to end, resume, and errors on bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradmask.cli import main

TINY = ["--train-limit", "128", "--test-limit", "64", "--epochs", "2", "--batch-size", "64", "--lr", "0.05",
        "--schedule", "cosine", "--no-progress"]


def test_cli_runs_a_tiny_job_and_resumes_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--mask", "norm", "--groups", "8", "--inhibition-rate", "0.25", "--seed", "4",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test acc" in printed and str(out) in printed
    config = json.loads(Path(out / "config.json").read_text())
    assert (config["mask"], config["groups"], config["inhibition_rate"], config["seed"], config["epochs"]) == (
        "norm", 8, 0.25, 4, 2)
    records = [json.loads(line) for line in Path(out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0.7 < v <= 0.75 for v in records[-1]["mask_kept"].values())
    final = json.loads(Path(out / "final.json").read_text())
    # a used directory needs --resume (finished: reports without training) or --overwrite
    assert main(["train", *TINY, "--mask", "norm", "--groups", "8", "--inhibition-rate", "0.25", "--seed", "4",
                 "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", *TINY, "--mask", "norm", "--groups", "8", "--inhibition-rate", "0.25", "--seed", "4",
                 "--out", str(out), "--resume"]) == 0
    assert json.loads(Path(out / "final.json").read_text()) == final


def test_cli_preset_quick_with_overrides(tmp_path):
    out = tmp_path / "quick"
    assert main(["train", "--preset", "quick", "--train-limit", "64", "--test-limit", "32", "--epochs", "1",
                 "--mask", "none", "--no-progress", "--out", str(out)]) == 0
    config = json.loads(Path(out / "config.json").read_text())
    assert config["schedule"] == "triangle" and config["train_limit"] == 64 and config["mask"] == "none"


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "cifar10", "--data", "/no/such/cifar"], "/no/such/cifar"),
    (["--dataset", "cifar100"], "data"),
    (["--model", "resnet7"], "resnet7"),
    (["--epochs", "0"], "epochs"),
    (["--lr", "-1"], "lr"),
    (["--inhibition-rate", "1.5"], r"--inhibition-rate must be in \[0, 1\)"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--amp", "fp8x"], "cuda|amp"),
])
def test_cli_bad_input_exits_2_with_a_message(argv, message, tmp_path, capsys):
    try:
        code = main(["train", *TINY, "--out", str(tmp_path / "bad"), *argv])
    except SystemExit as exc:  # argparse rejects a choice
        code = exc.code
    assert code == 2
    import re
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_python_dash_m_gradmask_lists_train():
    proc = subprocess.run([sys.executable, "-m", "gradmask", "train", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "--preset" in proc.stdout and "--inhibition-rate" in proc.stdout
