"""Several runs at once (compare / reproduce --jobs): the same results as one at a time, the order kept,
failures raised naming the run, GPUs shared out, bad input refused."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from gradmask.cli import main
from gradmask.compare import compare
from gradmask.compare.jobs import ProcessTrainer, job_devices, train_all
from gradmask.compare.tuning import read_tuning
from gradmask.train import TrainConfig

TINY = dict(model="resnet18_narrow", groups=4, epochs=1, batch_size=32, lr=0.05, schedule="triangle",
            warmup_epochs=0.5, augment="none", train_limit=64, test_limit=32, synthetic_train=96,
            synthetic_test=32, progress=False, device="cpu")


def _finals(out, names):
    return {n: json.loads((out / n / "final.json").read_text()) for n in names}


def _numbers(final):
    # the checksums cover the recorded times
    return {k: v for k, v in final.items() if k not in ("train_seconds", "trained_by", "checksum", "checkpoint")}


@pytest.mark.slow
def test_two_worker_processes_give_the_results_of_one_process(tmp_path):
    base = TrainConfig.from_dict(TINY)
    tune = {"lr": [0.02, 0.1]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # the reference at the workers' thread count
    try:
        compare(base, ("none", "lateral"), seeds=1, out=tmp_path / "one", log=None, tune=tune, tune_epochs=1)
    finally:
        torch.set_num_threads(threads)
    lines = []
    with ProcessTrainer(2, "cpu", threads=1) as trainer:
        compare(base, ("none", "lateral"), seeds=1, out=tmp_path / "two", log=lines.append, tune=tune,
                tune_epochs=1, train_fn=trainer, jobs=2)
    names = ["none-seed0", "lateral-seed0"] + [f"tune/{v}-lr={lr}-seed0" for v in ("none", "lateral")
                                               for lr in (0.02, 0.1)]
    one, two = _finals(tmp_path / "one", names), _finals(tmp_path / "two", names)
    assert {n: _numbers(f) for n, f in two.items()} == {n: _numbers(f) for n, f in one.items()}
    def sweep(out):
        return {v: (r["chosen"], [(p["label"], p["val_acc"]) for p in r["points"]])
                for v, r in read_tuning(out)["variants"].items()}
    assert sweep(tmp_path / "two") == sweep(tmp_path / "one")
    # every run announced once, tuning first, in training order within each phase
    assert [line.split("]")[0] for line in lines] == [f"[tune {k}/4" for k in range(1, 5)] + ["[1/2", "[2/2"]


def test_train_all_starts_runs_in_order_and_runs_them_side_by_side():
    started, running, most = [], [0], [0]
    lock = threading.Lock()

    def train_fn(config):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return {"config": config}

    results = train_all(train_fn, list(range(6)), jobs=3, before=lambda k, c: started.append((k, c)))
    assert results == [{"config": c} for c in range(6)]
    assert started == [(k + 1, k) for k in range(6)] and most[0] == 3      # started in list order
    assert train_all(train_fn, list(range(3)), jobs=1) == [{"config": c} for c in range(3)]


def test_the_first_failure_stops_the_runs_not_yet_started():
    calls = []

    def train_fn(config):
        calls.append(config)
        if config == 1:
            raise ValueError("run 1 broke")
        time.sleep(0.05)
        return {}

    with pytest.raises(ValueError, match="run 1 broke"):
        train_all(train_fn, list(range(20)), jobs=2)
    assert len(calls) < 20


@pytest.fixture
def own_augments():
    """The augmentations a test registers are gone after it (the registry is the process's)."""
    from gradmask.train.augment import AUGMENTS
    before = dict(AUGMENTS)
    yield
    AUGMENTS.clear()
    AUGMENTS.update(before)


def test_a_run_failing_in_a_worker_process_is_named(tmp_path, own_augments):
    # a plug-in registered only in this process does not exist in a fresh worker
    from gradmask.train.plugins import Augment, register_augment
    register_augment("only-here")(lambda config: Augment(crop_flip=False))
    config = TrainConfig.from_dict({**TINY, "augment": "only-here", "out": str(tmp_path / "run")})
    with ProcessTrainer(1, "cpu", threads=1) as trainer:
        with pytest.raises(RuntimeError, match=r"run .*run failed in a worker process \(jobs=1\).*only-here"):
            trainer(config)


def _user_augment(config):
    from gradmask.train.plugins import Augment
    return Augment(crop_flip=False)


def register_user_augment() -> None:
    """A user's plug-in: registered in this process by the script, in the workers by ``setup``."""
    from gradmask.train.plugins import register_augment
    register_augment("user-augment")(_user_augment)


def test_a_user_plugin_reaches_the_worker_processes_through_setup(tmp_path, own_augments):
    register_user_augment()
    config = TrainConfig.from_dict({**TINY, "augment": "user-augment"})
    dirs = compare(config, ("none",), seeds=2, out=tmp_path, jobs=2, setup=register_user_augment, log=None)
    assert [d.name for d in dirs] == ["none-seed0", "none-seed1"]
    for d in dirs:
        assert json.loads((d / "config.json").read_text())["augment"] == "user-augment"
        assert (d / "final.json").is_file()


def test_workers_share_out_the_gpus():
    assert job_devices("cuda", 3, cuda_count=2) == ["cuda:0", "cuda:1", "cuda:0"]
    assert job_devices("auto", 2, cuda_count=4) == ["cuda:0", "cuda:1"]
    assert job_devices("auto", 2, cuda_count=0) == [None, None]
    assert job_devices("cuda:1", 2, cuda_count=2) == [None, None]      # the config's own GPU for all
    assert job_devices("cpu", 2, cuda_count=2) == [None, None]
    with pytest.raises(ValueError, match="no CUDA device"):
        job_devices("cuda", 2, cuda_count=0)


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True, "2"])
def test_bad_jobs_are_refused_before_anything_trains(tmp_path, jobs):
    with pytest.raises(ValueError, match=r"jobs \(--jobs\) must be an integer >= 1"):
        compare(TrainConfig.from_dict(TINY), ("none",), seeds=1, out=tmp_path, jobs=jobs, train_fn=lambda c: {})
    assert not any(tmp_path.iterdir())


def test_jobs_are_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="cannot run under torchrun"):
        ProcessTrainer(2)


def test_compare_cli_rejects_bad_jobs(tmp_path, capsys):
    assert main(["compare", "--jobs", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_reproduce_trains_each_steps_runs_side_by_side(tmp_path, monkeypatch):
    from gradmask.reproduce import reproduce
    from gradmask.reproduce.experiments import table2 as table2_experiment
    from gradmask.train import train
    from tests.test_compare_tuning import tiny_full_plan

    threads = []

    def recording(config):
        threads.append(threading.current_thread().name)
        return train(config)

    def killed(*args, **kwargs):      # stop after the training steps
        raise KeyboardInterrupt

    monkeypatch.setattr(table2_experiment, "training_cost", killed)
    with pytest.raises(KeyboardInterrupt):
        reproduce(tiny_full_plan(seeds=1), tmp_path, train_fn=recording, log=lambda line: None, jobs=2)
    # tuning (2 lrs x 2 arms), Table 1 (2; its runs serve the boxes too), Table 2 (3), li-blur (1)
    assert len(threads) == 10 and all(name.startswith("gradmask-run") for name in threads[:-1])
    assert threads[-1] == "MainThread"             # a step of one run trains it in place
    assert (tmp_path / "synthetic" / "runs" / "tuning.json").is_file()


def test_reproduce_cli_rejects_bad_jobs(tmp_path, capsys):
    assert main(["reproduce", "--jobs", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--jobs" in capsys.readouterr().err and not (tmp_path / "r").exists()


SCRIPT = """
import json, sys, time
from gradmask.compare.jobs import ProcessTrainer
from gradmask.train import TrainConfig
trainer = ProcessTrainer(1, "cpu", threads=1)
config = TrainConfig.from_dict(json.loads(sys.argv[1]))
future = trainer._pool.submit(time.sleep, 600)          # a worker busy for ten minutes
while not trainer._pool._processes:
    time.sleep(0.05)
print(next(iter(trainer._pool._processes)), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_killing_the_parent_stops_its_workers(tmp_path):
    config = TrainConfig.from_dict({**TINY, "out": str(tmp_path / "run")})
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(config.to_dict())], stdout=subprocess.PIPE,
                              text=True)
    try:
        worker = int(parent.stdout.readline())
        os.kill(worker, 0)                                   # alive while the parent is
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived its killed parent by 30 s")
    finally:
        parent.kill()


def test_a_failure_is_raised_without_waiting_for_the_runs_in_training():
    def train_fn(config):
        if config == "slow":
            time.sleep(3)
            return {}
        raise ValueError("broke")

    start = time.perf_counter()
    with pytest.raises(ValueError, match="broke"):
        train_all(train_fn, ["slow", "bad", "never"], jobs=2)
    assert time.perf_counter() - start < 2.0


def test_leaving_a_process_trainer_with_an_error_ends_its_workers():
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with ProcessTrainer(1, "cpu", threads=1) as trainer:
            trainer._pool.submit(time.sleep, 60)
            while not trainer._pool._processes:
                time.sleep(0.05)
            worker = next(iter(trainer._pool._processes.values()))
            raise KeyboardInterrupt
    worker.join(timeout=20)
    assert not worker.is_alive() and time.perf_counter() - start < 30
