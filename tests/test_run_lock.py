"""A run folder is owned by one process at a time: a lock file with host and pid (held with flock
while the owner lives), taken over with a message when its owner died on this host, a clear error
at once otherwise; partial temporary files are cleaned when the folder is taken; an unwritable
--out fails before the data load."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from gradmask.train import TrainConfig, engine, train
from gradmask.train.rundir import LOCK, RunDir, RunDirInUse

# a process owning a run folder as RunDir.lock() does (flock + host/pid), without importing torch (fast)
HOLD = textwrap.dedent("""
    import fcntl, json, os, socket, sys, time
    os.makedirs(sys.argv[1], exist_ok=True)
    fd = os.open(os.path.join(sys.argv[1], ".gradmask.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, (json.dumps({"host": socket.gethostname(), "pid": os.getpid()}) + "\\n").encode())
    print(os.getpid(), flush=True)
    time.sleep(120)
""")

# a parent that starts the lock holder and is then killed (a torchrun agent whose ranks outlive it)
PARENT = textwrap.dedent("""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE, text=True)
    print(child.stdout.readline().strip(), flush=True)
    child.stdout.close()
    import time
    time.sleep(120)
""")


def tiny(out, **kw) -> TrainConfig:
    base = dict(train_limit=16, test_limit=16, synthetic_train=16, synthetic_test=16, epochs=1, batch_size=16,
                lr=0.05, mask="none", progress=False, out=str(out))
    return TrainConfig.from_dict({**base, **kw})


def _hold(out, script=HOLD, *args):
    """Start a process holding the lock of ``out``; returns (process, pid of the holder)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args, str(out)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    pid = int(proc.stdout.readline().strip())
    proc.stdout.close()  # the holder prints only its pid
    return proc, pid


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _wait_dead(pid, timeout=10.0):
    """Until ``pid`` is gone or a zombie (an orphan whose reaper is slow)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still alive")


def test_a_second_job_is_refused_at_once_and_a_dead_owner_is_taken_over(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    proc, pid = _hold(out)
    try:
        def no_data(*a, **k):
            raise AssertionError("the data must not be loaded while another process owns the folder")
        monkeypatch.setattr(engine, "build_data", no_data)
        with pytest.raises(RunDirInUse, match=rf"in use by pid {pid} on {socket.gethostname()}"):
            train(tiny(out))
        with pytest.raises(RunDirInUse):
            train(tiny(out, resume=True))
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing written
        monkeypatch.undo()
    finally:
        _kill_group(proc)
    final = train(tiny(out))  # the owner was killed: its lock is taken over, with a message
    assert final["epochs"] == 1
    assert f"pid {pid}" in capsys.readouterr().err
    assert not (out / LOCK).exists()  # released at the end


def test_a_live_rank_whose_launcher_was_killed_keeps_the_folder(tmp_path):
    out = tmp_path / "run"
    proc, pid = _hold(out, PARENT, HOLD)
    try:
        os.kill(proc.pid, signal.SIGKILL)  # the launcher dies, the rank lives on
        proc.wait(timeout=30)
        os.kill(pid, 0)  # still running
        with pytest.raises(RunDirInUse, match=f"pid {pid}"):
            train(tiny(out, resume=True))
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _wait_dead(pid)
    assert train(tiny(out, resume=True))["epochs"] == 1


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"host": "some-other-host", "pid": 12345}) + "\n")
    with pytest.raises(RunDirInUse, match="some-other-host.*delete"):
        train(tiny(out))


def test_the_lock_is_released_when_training_fails(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="target"):
        train(tiny(out, mask="lateral", targets=["no.such.module"]))
    assert not (out / LOCK).exists()
    assert train(tiny(out, overwrite=True))["epochs"] == 1


def test_partial_temporary_files_are_removed_when_the_folder_is_taken(tmp_path):
    out = tmp_path / "run"
    train(tiny(out))
    partial = [out / ".checkpoint.pt.k2j3h4.tmp", out / ".metrics.csv.abc.tmp"]
    for p in partial:
        p.write_bytes(b"\0" * 1000)
    (out / "notes.tmp").write_text("not ours")
    train(tiny(out, resume=True))  # finished: nothing trains, but the folder is taken
    assert not any(p.exists() for p in partial) and (out / "notes.tmp").exists()
    partial[0].write_bytes(b"\0" * 1000)
    train(tiny(out, overwrite=True))
    assert not partial[0].exists()


def test_an_unwritable_out_fails_before_the_data_is_loaded(tmp_path, monkeypatch):
    out = tmp_path / "read-only"
    out.mkdir()
    real_open = os.open

    def refuse(path, flags, *args, **kw):  # what a read-only folder does to a new file (root ignores chmod)
        if os.fspath(path).startswith(str(out)) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", refuse)
    loaded = []
    monkeypatch.setattr(engine, "build_data", lambda *a, **k: loaded.append(1))
    with pytest.raises(ValueError, match=rf"{out}.*not writable"):
        train(tiny(out))
    assert not loaded


def test_run_dir_is_empty_ignores_the_lock_and_partial_files(tmp_path):
    run = RunDir(tmp_path / "r")
    lock = run.lock()
    (run.path / ".config.json.x1.tmp").write_text("{")
    assert run.is_empty()
    with pytest.raises(RunDirInUse):
        run.lock()  # the same folder twice, even from one process
    lock.release()
    assert not (run.path / LOCK).exists()
    run.lock().release()


def test_a_second_reproduce_on_a_folder_in_use_is_refused(tmp_path):
    from gradmask.reproduce import make_plan, reproduce
    from gradmask.train.rundir import RunDirInUse, RunLock
    held = RunLock.acquire(tmp_path)            # as a reproduce running on this folder holds it
    try:
        with pytest.raises(RunDirInUse, match="in use by pid"):
            reproduce(make_plan("quick", seeds=1), tmp_path, log=lambda line: None,
                      train_fn=lambda config: pytest.fail("trained in a folder in use"))
    finally:
        held.release()
    assert not (tmp_path / "reproduce.json").exists()
