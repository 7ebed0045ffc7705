"""``gradmask reproduce --device cuda:N``: the preset's recipes are the device type's, the runs and
evaluations get the full device; without CUDA the error is train's."""
import pytest
import torch

from gradmask.cli import build_parser, main
from gradmask.reproduce import make_plan


def test_reproduce_parses_cuda_n_like_train(capsys):
    parse = build_parser().parse_args
    assert parse(["reproduce", "--device", "cuda:1"]).device == "cuda:1"
    assert parse(["reproduce"]).device == "auto"
    for command in ("reproduce", "train"):
        with pytest.raises(SystemExit) as exc:
            parse([command, "--device", "gpu"])
        assert exc.value.code == 2
        assert "--device must be auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err


def test_plan_looks_recipes_up_by_device_type_and_trains_on_the_full_device(tmp_path):
    data = {"cifar10": str(tmp_path)}
    on_1, on_cuda = make_plan("cifar", data, "cuda:1"), make_plan("cifar", data, "cuda")
    assert on_1.device_type == on_cuda.device_type == "cuda" and make_plan("quick").device_type == "cpu"
    fields = on_1.training("cifar10")
    assert fields["device"] == "cuda:1" and fields["model"] == "resnet18"      # the GPU recipe, not the CPU one
    assert {**fields, "device": "cuda"} == on_cuda.training("cifar10")
    assert on_1.training("synthetic")["device"] == "cuda:1"                    # the box experiments' own runs
    assert on_1.to_json()["device"] == "cuda:1"
    for bad in ("cuda:x", "cuda:", "gpu", None):
        with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
            make_plan("quick", device=bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_reproduce_on_cuda_without_cuda_fails_like_train_before_any_work(tmp_path, capsys):
    out = tmp_path / "reproduce"
    assert main(["reproduce", "--device", "cuda:1", "--out", str(out), "--no-progress"]) == 2
    reproduce_error = capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["train", "--device", "cuda:1", "--out", str(tmp_path / "train"), "--no-progress"]) == 2
    train_error = capsys.readouterr().err.strip().splitlines()[-1]
    expected = "error: device 'cuda:1' was requested but CUDA is not available here"
    assert expected in reproduce_error and expected in train_error
    assert reproduce_error.replace("gradmask reproduce", "gradmask train") == train_error
    assert not out.exists() and not (tmp_path / "train").exists()
