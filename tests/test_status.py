"""gradmask status: the state of run folders read from their files, without locking or writing anything."""
import json
import os
import socket
import subprocess
import sys

import pytest

from gradmask.cli import main
from gradmask.cli.status import steps_text
from gradmask.train.status import FINISHED, STOPPED, TRAINING, run_status, scan, status_text


def _run(folder, epochs_planned, accs, split="test", final=False, lock=None, seconds=60.0):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"epochs": epochs_planned, "mask": "lateral"}))
    records = [{"epoch": e + 1, f"{split}_acc": a, "epoch_seconds": seconds + e} for e, a in enumerate(accs)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if final:
        (folder / "final.json").write_text(json.dumps({f"{split}_acc": accs[-1]}))
    if lock is not None:
        (folder / ".gradmask.lock").write_text(json.dumps(lock) + "\n")
    return folder


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def runs(tmp_path):
    here = socket.gethostname()
    _run(tmp_path / "runs" / "none-seed0", 3, [0.2, 0.4, 0.5], final=True)
    _run(tmp_path / "runs" / "lateral-seed0", 5, [0.1, 0.3], lock={"host": here, "pid": os.getpid(),
                                                                    "started": "2026-11-30T02:00:00"})
    _run(tmp_path / "runs" / "lateral-seed1", 5, [0.1], lock={"host": here, "pid": _dead_pid()})
    _run(tmp_path / "runs" / "tune" / "none-lr=0.1-seed0", 2, [0.3, 0.35], split="val", final=True)
    _run(tmp_path / "elsewhere", 4, [0.2], lock={"host": "another-host", "pid": 7})
    return tmp_path


def test_states_epochs_accuracy_and_time_left(runs):
    by_name = {r.path.relative_to(runs).as_posix(): r for r in scan(runs)}
    assert sorted(by_name) == ["elsewhere", "runs/lateral-seed0", "runs/lateral-seed1", "runs/none-seed0",
                               "runs/tune/none-lr=0.1-seed0"]
    done, training, stopped = by_name["runs/none-seed0"], by_name["runs/lateral-seed0"], by_name["runs/lateral-seed1"]
    assert (done.state, done.epochs_done, done.epochs_planned, done.last_acc, done.eta_seconds) == \
        (FINISHED, 3, 3, 0.5, 0.0)
    assert training.state == TRAINING and f"pid {os.getpid()}" in training.owner
    assert training.epoch_seconds == pytest.approx(60.5) and training.eta_seconds == pytest.approx(3 * 60.5)
    assert stopped.state == STOPPED and stopped.owner is None          # its lock's process is gone
    tune = by_name["runs/tune/none-lr=0.1-seed0"]
    assert (tune.split, tune.last_acc) == ("val", 0.35)
    assert by_name["elsewhere"].state == TRAINING and "cannot tell" in by_name["elsewhere"].owner


def test_the_table_and_the_summary(runs):
    text = status_text(runs, scan(runs), now=0.0)
    lines = text.splitlines()
    assert lines[0].split() == ["run", "state", "epochs", "last", "top-1", "per", "epoch", "left", "last", "epoch"]
    row = next(line for line in lines if line.startswith("runs/lateral-seed0 "))
    assert row.split()[1:5] == ["training", "2/5", "30.00%", "test"] and "3m02s" in row
    assert "5 runs: 2 finished, 2 training, 1 stopped; 10 epochs left" in text


def test_nothing_is_written_or_locked(runs):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs.rglob("*") if p.is_file()}
    scan(runs)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs.rglob("*") if p.is_file()} == before


def test_a_half_written_last_line_is_skipped(tmp_path):
    folder = _run(tmp_path / "r", 4, [0.2, 0.3])
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "test_a')
    assert run_status(folder).epochs_done == 2


def test_the_command(runs, capsys):
    assert main(["status", str(runs / "runs")]) == 0
    out = capsys.readouterr().out
    assert "none-seed0" in out and "4 runs: 2 finished, 1 training, 1 stopped" in out
    assert main(["status", "--json", str(runs / "runs" / "none-seed0")]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["state"] == "finished" and record["epochs_done"] == 3
    assert main(["status", str(runs / "missing")]) == 2
    assert "PATH" in capsys.readouterr().err


def test_a_reproduce_folder_lists_its_finished_steps(runs, capsys):
    assert steps_text(runs) == ""
    (runs / "reproduce.json").write_text(json.dumps({"preset": "cifar-full", "steps": {
        "train-cifar10": {"title": "t", "wall_seconds": 3725.0}, "robustness": {"title": "r", "wall_seconds": 61}}}))
    assert steps_text(runs) == ("reproduce --preset cifar-full: 2 steps finished: train-cifar10 (1h02m), "
                                "robustness (1m01s)\n")
    assert main(["status", str(runs)]) == 0
    assert capsys.readouterr().out.endswith("train-cifar10 (1h02m), robustness (1m01s)\n")


def test_a_run_without_an_epoch_gets_the_pace_of_its_siblings_marked_as_a_guess(tmp_path):
    _run(tmp_path / "a", 5, [0.1, 0.2], seconds=100.0)          # 100.5 s per epoch (median of 100, 101)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"epochs": 5}))
    text = status_text(tmp_path, scan(tmp_path), now=0.0)
    row = next(line for line in text.splitlines() if line.startswith("b "))
    assert "~8m22s" in row                                         # 5 x 100.5 s


def test_counts_are_pluralised_right(runs):
    one = runs / "runs" / "lateral-seed0"
    assert "\n1 run: 0 finished, 1 training, 0 stopped; 3 epochs left" in status_text(one, scan(one), now=0.0)
    from gradmask.util.progress import counted
    assert [counted(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    assert counted(1, "finished epoch") == "1 finished epoch" and counted(2, "index", "indices") == "2 indices"
