"""Smaller traps (issue 26, item 9): ``no_gradient_mask()`` without models is an error (it is not
global); a start that fails validation writes nothing; a folder whose run finished no epoch can be
started again with other settings, after a message."""
import json

import pytest
import torch
from tiny_runs import tiny

import gradmask
from gradmask.cli import main
from gradmask.train import train
from gradmask.train.status import scan

TINY = ["--train-limit", "16", "--test-limit", "16", "--synthetic-train", "16", "--synthetic-test", "16",
        "--epochs", "1", "--batch-size", "16", "--lr", "0.05", "--no-progress"]


def test_no_gradient_mask_without_models_is_an_error():
    with pytest.raises(ValueError, match=r"no_gradient_mask\(\) needs the models"):
        with gradmask.no_gradient_mask():
            pass
    with pytest.raises(ValueError, match="list"):
        with gradmask.no_gradient_mask([torch.nn.Linear(2, 2)]):
            pass


def test_a_start_that_fails_validation_writes_nothing(tmp_path, capsys):
    """The probe: `--groups 5` left config.json; the corrected command was refused, status listed it."""
    out = tmp_path / "runs" / "a"
    assert main(["train", *TINY, "--mask", "lateral", "--groups", "5", "--out", str(out)]) == 2
    assert "groups" in capsys.readouterr().err
    assert not out.exists() and scan(tmp_path) == []
    assert main(["train", *TINY, "--mask", "lateral", "--groups", "4", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["groups"] == 4


def test_a_failed_start_keeps_an_existing_folder_and_an_overwritten_run(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", *TINY, "--mask", "lateral", "--groups", "5", "--out", str(empty)]) == 2
    assert empty.is_dir() and list(empty.iterdir()) == []
    done = tmp_path / "done"
    train(tiny(done, mask="lateral", groups=4))
    before = {p.name: p.read_bytes() for p in done.iterdir()}
    assert main(["train", *TINY, "--mask", "lateral", "--groups", "5", "--overwrite", "--out", str(done)]) == 2
    assert {p.name: p.read_bytes() for p in done.iterdir()} == before  # --overwrite cleared nothing


class Killed(Exception):
    pass


def _unstarted(out, **kw):
    """A run folder whose run was killed before finishing its first epoch (config.json only)."""
    def die(ctx):
        raise Killed

    with pytest.raises(Killed):
        train(tiny(out, **kw), callbacks=[type("Die", (), {"on_train_start": staticmethod(die)})()])
    assert (out / "config.json").is_file() and not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_with_no_finished_epoch_starts_again_with_other_settings(tmp_path, capsys, resume):
    out = tmp_path / "run"
    _unstarted(out, lr=0.2)
    capsys.readouterr()
    final = train(tiny(out, lr=0.1, resume=resume))
    err = capsys.readouterr().err
    assert "finished no epoch" in err and "lr" in err, err
    assert final["epochs"] == 1 and json.loads((out / "config.json").read_text())["lr"] == 0.1


def test_a_folder_with_no_finished_epoch_and_a_damaged_config_starts_again(tmp_path, capsys):
    out = tmp_path / "run"
    _unstarted(out)
    (out / "config.json").write_text("[")
    capsys.readouterr()
    train(tiny(out))
    assert "finished no epoch" in capsys.readouterr().err


def test_a_folder_with_a_finished_epoch_is_still_refused(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, lr=0.2))
    with pytest.raises(ValueError, match="not empty"):
        train(tiny(out, lr=0.1))
    with pytest.raises(ValueError, match="lr"):
        train(tiny(out, lr=0.1, resume=True))
