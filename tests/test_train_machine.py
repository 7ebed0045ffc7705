"""What makes numbers differ between machines (issue 26, item 5): every run records its numerical
setup (CPU, torch dispatch capability, threads, library versions), and a resume restores the thread
count it trained with (bit-identical to an uninterrupted run) or says what it cannot restore."""
import json

import pytest
import torch
from tiny_runs import tiny

from gradmask.train import read_checkpoint, train
from gradmask.train.checkpoint import save_checkpoint
from gradmask.train.rundir import FINAL_KEYS, METRIC_KEYS


class Killed(Exception):
    pass


def _weights(out):
    return read_checkpoint(out)["model"]


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def threads():
    """Set the thread count for the test; the process's own comes back after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _epoch_one(out, **kw):
    """A two-epoch tiny run stopped after its first epoch's checkpoint (a kill between epochs)."""
    config = tiny(out, epochs=2, train_eval_images=0, **kw)
    done = []

    def stop_after_checkpoint(ctx, record):
        if ctx.epoch == 2:  # epoch 1's checkpoint is on disk: stop before epoch 2's is
            done.append(True)
            raise Killed

    with pytest.raises(Killed):
        train(config, callbacks=[stop_after_checkpoint])
    assert done and read_checkpoint(out)["epoch"] == 1
    return config


@pytest.mark.slow
def test_resume_with_another_thread_count_restores_the_runs_and_is_bit_identical(tmp_path, threads, capsys):
    """The probe: kill after epoch 1 with one thread, resume with two: the result matched neither run."""
    threads(1)
    train(tiny(tmp_path / "whole", epochs=2, train_eval_images=0))
    threads(2)
    train(tiny(tmp_path / "whole2", epochs=2, train_eval_images=0))
    differs = not _same(_weights(tmp_path / "whole"), _weights(tmp_path / "whole2"))
    threads(1)
    config = _epoch_one(tmp_path / "cut")
    threads(2)
    capsys.readouterr()
    train(config.replace(resume=True))
    assert _same(_weights(tmp_path / "cut"), _weights(tmp_path / "whole"))
    assert "with 1 torch threads" in capsys.readouterr().err
    assert torch.get_num_threads() == 2  # the caller's count is back after train()
    machine = json.loads((tmp_path / "cut" / "config.json").read_text())["machine"]
    assert [m["from_epoch"] for m in machine] == [1, 2] and [m["threads"] for m in machine] == [1, 1]
    if not differs:
        pytest.skip("1 and 2 threads gave the same weights on this machine: the restore was not tested")


def test_every_run_records_its_machine_and_keeps_its_contracts(tmp_path):
    train(tiny(tmp_path, train_eval_images=0))
    machine = json.loads((tmp_path / "config.json").read_text())["machine"]
    assert machine == read_checkpoint(tmp_path)["machine"] and len(machine) == 1
    m = machine[0]
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["threads"] == torch.get_num_threads() and m["torch"] == str(torch.__version__)
    for key in ("cpu", "numpy", "pillow", "python", "deterministic", "env", "device"):
        assert key in m
    assert set(json.loads((tmp_path / "final.json").read_text())) - {"checksum"} == set(FINAL_KEYS)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert set(METRIC_KEYS) <= set(record) and "machine" not in record


def test_resume_on_another_setup_says_it_is_not_bit_identical(tmp_path, capsys):
    config = _epoch_one(tmp_path)
    state = read_checkpoint(tmp_path)
    state["machine"][-1]["cpu_capability"] = "AVX2" if state["machine"][-1]["cpu_capability"] != "AVX2" else "DEFAULT"
    state["machine"][-1]["torch"] = "2.0.0"
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    capsys.readouterr()
    train(config.replace(resume=True))
    err = capsys.readouterr().err
    assert "will not be bit-identical" in err and "cpu_capability" in err and "torch 2.0.0 ->" in err, err


def test_resume_of_a_checkpoint_without_a_machine_record_says_so(tmp_path, capsys):
    config = _epoch_one(tmp_path)
    state = read_checkpoint(tmp_path)
    del state["machine"]
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    capsys.readouterr()
    train(config.replace(resume=True))
    assert "does not record the threads" in capsys.readouterr().err
