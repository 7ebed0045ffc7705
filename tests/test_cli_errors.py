"""One error boundary for the command line (issue 26, item 8): every expected failure (a damaged
file of any JSON shape, divergence, a full disk, a directory where a file should be) prints one
line naming the file or option and exits 2; an unexpected exception prints its traceback and says
it is a bug to report (exit 1)."""
import errno
import json
import shutil

import pytest
from tiny_runs import tiny

from gradmask.cli import main
from gradmask.train import train

TINY = ["--train-limit", "16", "--test-limit", "16", "--synthetic-train", "16", "--synthetic-test", "16",
        "--epochs", "1", "--batch-size", "16", "--lr", "0.05", "--mask", "none", "--no-progress"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-errors") / "run"
    train(tiny(out))
    return out


def _copy(finished, tmp_path, name="run"):
    return shutil.copytree(finished, tmp_path / name)


def _one_error_line(capsys, *names):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("gradmask: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("gradmask ") and ": error: " in lines[0], err
    for name in names:
        assert name in lines[0], err
    return lines[0]


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "3", "null", '{"dataset": "synthetic", ', ""])
def test_config_json_of_any_shape_is_named(finished, tmp_path, capsys, content):
    out = tmp_path / "cmp"
    run = _copy(finished, out, "none-seed0")
    (run / "config.json").write_text(content)
    assert main(["compare", "--report-only", "--out", str(out)]) == 2
    _one_error_line(capsys, "config.json")
    assert main(["status", str(out)]) == 0  # status lists it whatever its config
    assert "none-seed0" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["[]", '"x"', '{"test_acc": 0.5, ', "{"])
def test_final_json_of_any_shape_is_named(finished, tmp_path, capsys, content):
    run = _copy(finished, tmp_path)
    (run / "final.json").write_text(content)
    assert main(["train", *TINY, "--resume", "--out", str(run)]) == 2
    _one_error_line(capsys, "final.json")


@pytest.mark.parametrize("content", ["[]", '{"variants": ', "7"])
def test_tuning_json_of_any_shape_is_named(finished, tmp_path, capsys, content):
    out = tmp_path / "cmp"
    _copy(finished, out, "none-seed0")
    (out / "tuning.json").write_text(content)
    assert main(["compare", "--report-only", "--out", str(out)]) == 2
    _one_error_line(capsys, "tuning.json")


@pytest.mark.parametrize("line", ['{"epoch": "one"}', '{"epoch": null}', '{"epoch": 1.5}', "[1]", '{"epoch": true}'])
def test_metrics_jsonl_with_a_bad_epoch_is_named(finished, tmp_path, capsys, line):
    run = _copy(finished, tmp_path)
    (run / "metrics.jsonl").write_text(line + "\n" + (run / "metrics.jsonl").read_text())
    assert main(["status", str(run)]) == 2
    _one_error_line(capsys, "metrics.jsonl", "line 1")


def test_a_directory_where_the_checkpoint_should_be_is_named(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    (run / "final.json").unlink()
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").mkdir()
    assert main(["train", *TINY, "--resume", "--out", str(run)]) == 2
    _one_error_line(capsys, "checkpoint.pt", "directory")
    assert main(["saliency", str(run)]) == 2
    _one_error_line(capsys, "checkpoint.pt", "directory")


def test_divergence_is_one_line_naming_the_option(tmp_path, capsys):
    args = ["--train-limit", "32", "--test-limit", "16", "--synthetic-train", "32", "--synthetic-test", "16",
            "--epochs", "2", "--batch-size", "4", "--mask", "none", "--no-progress"]
    assert main(["train", *args, "--lr", "1e6", "--out", str(tmp_path / "run")]) == 2
    _one_error_line(capsys, "diverged", "--lr")


@pytest.mark.parametrize("where", ["lock", "record"])
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, where):
    import os
    import tempfile

    from gradmask.util import files
    if where == "lock":  # every fsync fails: the first write is the run folder's lock
        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "fsync", full)
    else:  # the records' temporary files land on a full device
        real = tempfile.mkstemp

        def full_disk(**kw):
            _, name = real(**kw)
            return os.open("/dev/full", os.O_WRONLY), name
        monkeypatch.setattr(files.tempfile, "mkstemp", full_disk)
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys, "disk full", str(tmp_path / "run"))
    assert (".gradmask.lock" if where == "lock" else "config.json") in line


def test_a_full_disk_appending_metrics_names_the_file(tmp_path, monkeypatch):
    from gradmask.train import rundir

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "open", full, raising=False)
    with pytest.raises(OSError, match=r"disk full while writing .*metrics\.jsonl"):
        rundir.RunDir(tmp_path).append_metrics({"epoch": 1})


def test_an_unexpected_exception_prints_its_traceback_and_says_it_is_a_bug(tmp_path, capsys, monkeypatch):
    from gradmask.cli import build_parser
    from gradmask.cli.options import COMMANDS

    def broken(args):
        raise KeyError("surprise")

    build_parser()  # registers every command
    monkeypatch.setattr(COMMANDS["status"], "run", broken)
    assert main(["status", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'surprise'" in err and "bug" in err and "report" in err


def test_metrics_are_reported_unchanged_by_the_boundary(finished, capsys):
    assert main(["status", str(finished), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_failed_slurm_jobs_are_an_expected_failure_naming_their_logs():
    from gradmask.cli import expected_error
    from gradmask.compare.slurm import SlurmJobFailed
    error = SlurmJobFailed([("runs/x/none-seed0", "17", "runs/x/slurm/logs/17_0.err", "out of memory")])
    message = expected_error(error)
    assert message is not None and "runs/x/slurm/logs/17_0.err" in message and "\n" not in message
    assert expected_error(RuntimeError("a bug")) is None
