"""The Slurm executor (compare / reproduce --executor slurm) against a real single-node Slurm cluster
(.ci/start-slurm starts one in CI): the runs and numbers of --jobs 1, preemption and bit-identical
resume, re-attaching after the submitting command is killed, failed jobs named with their logs, one
submitting command per folder. Without Slurm these skip, naming why; with CI=true they fail. The
option parsing, the host list and the lock's take-over rule are tested without Slurm."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny

from gradmask.cli import main
from gradmask.cli.options import add_executor_arguments, executor_from_args
from gradmask.compare import slurm as slurm_module
from gradmask.compare.executor import SLURM_DIR, check_executor, open_trainer
from gradmask.compare.jobs import train_all
from gradmask.compare.slurm import JOBS_JSON, SlurmExecutor, SlurmJobFailed, SlurmRun, parse_sbatch_args, parse_time
from gradmask.train import TrainConfig, rundir
from gradmask.train.distributed import Launch, expand_hostlist, launch, slurm_launch
from gradmask.train.rundir import RunDirInUse, RunLock
from gradmask.util.progress import RunProgress

ROOT = Path(__file__).resolve().parents[1]
#: one CPU and little memory per job: two jobs side by side on the 2-CPU CI machine
FAST = dict(cpus_per_task=1, mem_gb=1, time=60, poll_seconds=0.3)


def _cluster_up() -> bool:
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(s.strip().rstrip("*") in ("idle", "mixed", "allocated") for s in states.splitlines())


@pytest.fixture(scope="module")
def slurm():
    """A Slurm cluster that takes jobs: one already up, else one .ci/start-slurm starts (when Slurm's
    daemons are installed); otherwise skip with the reason (fail under CI=true)."""
    why = None
    try:
        import submitit  # noqa: F401
    except ImportError:
        why = "submitit is not installed (pip install 'gradmask[slurm]')"
    if why is None and not _cluster_up():
        if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
            why = "no Slurm cluster answers sinfo and Slurm is not installed (CI runs .ci/start-slurm)"
        else:
            started = subprocess.run([str(ROOT / ".ci" / "start-slurm")], capture_output=True, text=True, timeout=180)
            if started.returncode != 0 or not _cluster_up():
                why = f".ci/start-slurm could not start Slurm: {(started.stderr or started.stdout)[-600:]}"
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the Slurm tests cannot run: {why}")
        pytest.skip(why)


def _numbers(final):
    # the checkpoint's checksum and the record's own cover the wall times, which differ between runs
    return {k: v for k, v in final.items()
            if k not in ("train_seconds", "trained_by", "device", "checkpoint", "checksum")}


def _epochs(run):
    keep = ("epoch_seconds", "images_per_second", "checksum")
    return [{k: v for k, v in json.loads(line).items() if k not in keep}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _job_state(job):
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
    return fields.get("JobState"), int(fields.get("Restarts", 0))


# ------------------------------------------------------------------------------------ through Slurm
COMPARE = ["--train-limit", "32", "--test-limit", "16", "--synthetic-train", "32", "--synthetic-test", "16",
           "--epochs", "1", "--batch-size", "16", "--lr", "0.05", "--no-progress", "--device", "cpu",
           "--variants", "none,lateral", "--seeds", "1", "--tune", "lr=0.02,0.1", "--tune-epochs", "1"]


def test_a_tuned_compare_through_slurm_gives_the_runs_and_numbers_of_one_process(slurm, tmp_path, capsys):
    assert main(["compare", *COMPARE, "--out", str(tmp_path / "local"), "--jobs", "1"]) == 0
    capsys.readouterr()
    assert main(["compare", *COMPARE, "--out", str(tmp_path / "slurm"), "--jobs", "2", "--executor", "slurm",
                 "--slurm-cpus-per-task", "1", "--slurm-mem-gb", "1", "--slurm-time", "1:00:00"]) == 0
    printed = capsys.readouterr().out
    names = ["none-seed0", "lateral-seed0"] + [f"tune/{v}-lr={lr}-seed0" for v in ("none", "lateral")
                                               for lr in (0.02, 0.1)]
    for name in names:
        local = json.loads((tmp_path / "local" / name / "final.json").read_text())
        remote = json.loads((tmp_path / "slurm" / name / "final.json").read_text())
        assert _numbers(remote) == _numbers(local), name
        assert _epochs(tmp_path / "slurm" / name) == _epochs(tmp_path / "local" / name), name
    def sweep(out):
        return {v: (r["chosen"], [(p["label"], p["val_acc"]) for p in r["points"]])
                for v, r in json.loads((out / "tuning.json").read_text())["variants"].items()}
    assert sweep(tmp_path / "slurm") == sweep(tmp_path / "local")
    # two job arrays (tuning, then the final runs), every job id in jobs.json and in the progress lines
    books = json.loads((tmp_path / "slurm" / SLURM_DIR / JOBS_JSON).read_text())
    assert sorted(Path(p).relative_to(tmp_path / "slurm").as_posix() for p in books["runs"]) == sorted(names)
    assert len({r["job"].split("_")[0] for r in books["runs"].values()}) == 2
    for record in books["runs"].values():
        assert f"job {record['job']} COMPLETED" in printed and Path(record["log"]).is_file()
    assert printed.count("slurm: submitted") == 2 and "at most 2 at a time" in printed


@pytest.mark.slow
def test_a_preempted_job_requeues_itself_and_resumes_bit_identically(slurm, tmp_path):
    config = tiny(tmp_path / "run", model="resnet18_narrow", groups=4, mask="lateral", synthetic_train=128,
                  train_limit=128, batch_size=32, epochs=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from gradmask.train import train
        train(config.replace(out=str(tmp_path / "reference")))
    finally:
        torch.set_num_threads(threads)
    lines, result = [], {}
    with SlurmExecutor(**FAST).trainer(tmp_path / "books", log=lines.append) as trainer:
        worker = threading.Thread(target=lambda: result.update(final=trainer(config)))
        worker.start()
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.time() + 120
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 1) and time.time() < deadline:
            time.sleep(0.1)
        job = json.loads((tmp_path / "books" / JOBS_JSON).read_text())["runs"][str(config.out)]["job"]
        assert metrics.read_text().count("\n") < 4, "the run finished before it could be preempted"
        subprocess.run(["scancel", "--signal=USR2", job], check=True)   # Slurm's warning before preemption
        while _job_state(job) != ("PENDING", 1) and time.time() < deadline:
            time.sleep(0.2)
        assert _job_state(job) == ("PENDING", 1)
        # Slurm holds a requeued job for two minutes: let it start now
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)
        worker.join(timeout=120)
    assert not worker.is_alive() and "final" in result
    log = Path(json.loads((tmp_path / "books" / JOBS_JSON).read_text())["runs"][str(config.out)]["log"]).read_text()
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log
    assert _numbers(result["final"]) == _numbers(json.loads((tmp_path / "reference" / "final.json").read_text()))
    assert _epochs(tmp_path / "run") == _epochs(tmp_path / "reference")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    reference = torch.load(tmp_path / "reference" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert any("job" in line and "PENDING" in line for line in lines[1:])   # the requeue was shown


@pytest.mark.slow
def test_a_killed_submitting_command_is_run_again_and_attaches_without_submitting_twice(slurm, tmp_path):
    out = tmp_path / "cmp"
    command = [sys.executable, "-m", "gradmask", "compare", *COMPARE[:COMPARE.index("--tune")], "--epochs", "3",
               "--train-limit", "96", "--synthetic-train", "96", "--out", str(out), "--jobs", "2",
               "--executor", "slurm", "--slurm-cpus-per-task", "1", "--slurm-mem-gb", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    books = out / SLURM_DIR / JOBS_JSON
    deadline = time.time() + 120
    while not (books.is_file() and len(json.loads(books.read_text())["runs"]) == 2) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    jobs = {run: r["job"] for run, r in json.loads(books.read_text())["runs"].items()}
    assert len(jobs) == 2
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "submitted" not in again.stdout
    assert again.stdout.count("attached to job") + again.stdout.count("finished earlier") == 2
    assert {run: r["job"] for run, r in json.loads(books.read_text())["runs"].items()} == jobs
    assert sorted(p.name for p in (out / SLURM_DIR / "logs").glob("*_submitted.pkl")) == \
        sorted(f"{j}_submitted.pkl" for j in jobs.values())
    assert all((Path(run) / "final.json").is_file() for run in jobs)


def test_a_kill_between_sbatch_and_the_books_finds_the_jobs_by_name(slurm, tmp_path, monkeypatch):
    from gradmask.compare import slurm as slurm_module
    config = tiny(tmp_path / "run")
    real = slurm_module.SlurmTrainer._record
    calls = []

    def killed(self, job, name):
        calls.append(job)
        raise KeyboardInterrupt    # the command dies right after sbatch returned

    monkeypatch.setattr(slurm_module.SlurmTrainer, "_record", killed)
    with pytest.raises(KeyboardInterrupt):
        with SlurmExecutor(**FAST).trainer(tmp_path / "books", log=None) as trainer:
            trainer(config)
    assert json.loads((tmp_path / "books" / JOBS_JSON).read_text())["submitting"]
    monkeypatch.setattr(slurm_module.SlurmTrainer, "_record", real)
    lines = []
    with SlurmExecutor(**FAST).trainer(tmp_path / "books", log=lines.append) as trainer:
        final = trainer(config)
    assert final["epochs"] == 1 and not any("submitted" in line for line in lines)
    assert json.loads((tmp_path / "books" / JOBS_JSON).read_text())["runs"][str(config.out)]["job"] == calls[0]


def test_a_failed_job_is_named_with_its_log_and_the_other_runs_finish(slurm, tmp_path):
    good, bad = tiny(tmp_path / "good"), tiny(tmp_path / "bad", resume=True)
    Path(bad.out).mkdir(parents=True)
    (Path(bad.out) / "checkpoint.pt").write_bytes(b"not a checkpoint")   # the job fails reading it
    lines = []
    with SlurmExecutor(**FAST).trainer(tmp_path / "books", jobs=2, log=lines.append) as trainer:
        with pytest.raises(SlurmJobFailed) as failed:
            train_all(trainer, [good, bad], jobs=2)
    ((run, job, log, why),) = failed.value.failures
    assert run == str(bad.out) and "checkpoint" in why and log in str(failed.value) and job in str(failed.value)
    assert Path(log).is_file() and "checkpoint" in Path(log).read_text()
    assert any(f"job {job} FAILED" in line and log in line for line in lines)
    assert (Path(good.out) / "final.json").is_file()


def test_two_submitting_commands_on_one_folder_are_refused(slurm, tmp_path, capsys):
    with SlurmExecutor(**FAST).trainer(tmp_path / "cmp" / SLURM_DIR, log=None):
        with pytest.raises(RunDirInUse, match="in use"):
            SlurmExecutor(**FAST).trainer(tmp_path / "cmp" / SLURM_DIR, log=None)
        capsys.readouterr()
        assert main(["compare", *COMPARE[:COMPARE.index("--tune")], "--out", str(tmp_path / "cmp"),
                     "--executor", "slurm"]) == 2
        assert "is in use by" in capsys.readouterr().err
    assert not (tmp_path / "cmp" / "none-seed0").exists()


@pytest.mark.slow
def test_a_run_of_two_processes_sets_up_ddp_from_slurm_like_torchrun(slurm, tmp_path):
    config = tiny(tmp_path / "slurm", mask="lateral", synthetic_train=64, train_limit=64, batch_size=16, epochs=1)
    with SlurmExecutor(tasks_per_node=2, **FAST).trainer(tmp_path / "books", log=None) as trainer:
        final = trainer(config)
    assert final["device"] == "cpu x2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "ddp.py"
    script.write_text("import json, sys\nfrom gradmask.train import TrainConfig, train\n"
                      "train(TrainConfig.from_dict(json.loads(sys.argv[1])))\n")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), json.dumps(config.replace(out=str(tmp_path / "torchrun")).to_dict())],
                          capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = json.loads((tmp_path / "torchrun" / "final.json").read_text())
    assert _numbers(final) == _numbers(reference)


# ------------------------------------------------------------------------------------ without Slurm
@pytest.mark.parametrize("text, names", [
    ("vm", ["vm"]), ("gpu[01-03,7],cpu-a", ["gpu01", "gpu02", "gpu03", "gpu7", "cpu-a"]),
    ("r[1-2]-n[08-09]", ["r1-n08", "r1-n09", "r2-n08", "r2-n09"]), ("a[9-10]", ["a9", "a10"])])
def test_host_lists_expand_as_scontrol_does(text, names):
    assert expand_hostlist(text) == names
    if shutil.which("scontrol") and _cluster_up():
        shown = subprocess.run(["scontrol", "show", "hostnames", text], capture_output=True, text=True).stdout
        assert shown.split() == names


def test_ranks_come_from_an_srun_step_of_several_tasks_and_torchrun_wins():
    step = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "4", "SLURM_JOB_ID": "4242",
            "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "4"}
    assert slurm_launch(step) == Launch(3, 4, 1, "tcp://gpu07:24242")
    assert slurm_launch({**step, "MASTER_ADDR": "h", "MASTER_PORT": "9"}).init_method == "tcp://h:9"
    # the batch script of a job (no srun step) is not a rank, nor is a step of one task
    assert slurm_launch({k: v for k, v in step.items() if k != "SLURM_STEP_NUM_TASKS"}) is None
    assert slurm_launch({**step, "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert launch({**step, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}) == Launch(1, 2, 1)
    assert launch({}) == Launch(0, 1, 0)


def test_a_requeued_job_takes_over_its_own_lock_but_not_another_jobs(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    folder.mkdir()

    def left(**owner):   # a lock file left by a process on another node (killed: its flock is gone)
        (folder / rundir.LOCK).write_text(json.dumps({"host": "node-a", "pid": 99, **owner}) + "\n")

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    left(slurm_job="70_7", slurm_restarts=0)
    lock = RunLock.acquire(folder)
    assert "an earlier run of this Slurm job" in capsys.readouterr().err
    assert json.loads((folder / rundir.LOCK).read_text())["slurm_job"] == "70_7"
    lock.release()
    for other in (dict(slurm_job="70_8", slurm_restarts=0), dict(slurm_job="70_7", slurm_restarts=1), {}):
        left(**other)
        with pytest.raises(RunDirInUse, match="cannot tell"):
            RunLock.acquire(folder)


def test_slurm_options_are_checked_before_anything_is_submitted(capsys):
    assert parse_time(90) == 90 and parse_time("1:30:00") == 90 and parse_time("2-00") == 2880
    assert parse_time("0:00:30") == 1 and parse_time("45") == 45
    for bad in ("1h", "0", -3, "1:2:3:4"):
        with pytest.raises(ValueError, match="--slurm-time"):
            parse_time(bad)
    assert parse_sbatch_args(["--account=abc", "--exclusive"]) == {"account": "abc", "exclusive": True}
    with pytest.raises(ValueError, match="long sbatch options"):
        parse_sbatch_args(["-A", "abc"])
    with pytest.raises(ValueError, match="--slurm-partition"):
        parse_sbatch_args(["--partition=gpu"])
    with pytest.raises(ValueError, match="--slurm-gpus-per-node"):
        SlurmExecutor(gpus_per_node=-1)
    with pytest.raises(ValueError, match="--slurm-mem-gb"):
        SlurmExecutor(mem_gb=0)
    assert SlurmExecutor(gpus_per_node=8, nodes=2).processes == 16
    params = SlurmExecutor(partition="gpu", gpus_per_node=4, mem_gb=1.5, sbatch_args=("--qos=high",)).parameters(3, "n")
    assert params["ntasks_per_node"] == 4 and params["array_parallelism"] == 3 and params["mem"] == "1536MB"
    assert params["additional_parameters"] == {"requeue": True, "qos": "high"}
    with pytest.raises(ValueError, match="device cpu"):
        SlurmExecutor(gpus_per_node=1).check_device("cpu")
    assert check_executor("slurm") == SlurmExecutor() and check_executor("local") == "local"
    with pytest.raises(ValueError, match="executor"):
        check_executor("ssh")
    assert main(["compare", *COMPARE[:4], "--slurm-gpus-per-node", "2"]) == 2
    assert "--slurm-gpus-per-node need --executor slurm" in capsys.readouterr().err
    assert main(["reproduce", "--slurm-partition", "gpu"]) == 2
    assert "--slurm-partition need --executor slurm" in capsys.readouterr().err


def test_a_batch_trainer_gets_whole_lists_and_the_progress_counter_counts_its_runs():
    class Batch:
        def __init__(self):
            self.calls = []

        def __call__(self, config):
            raise AssertionError("train_all hands the whole list to train_batch")

        def train_batch(self, configs, before=None, finished=None):
            self.calls.append(list(configs))
            for k, c in enumerate(configs, 1):
                before(k, c)
                if finished is not None:
                    finished(c, 1.0, True)
            return [{"run": c.out} for c in configs]

    batch, lines, started = Batch(), [], []
    progress = RunProgress(3, log=lines.append)
    configs = [tiny(f"/tmp/x{k}") for k in range(3)]
    results = train_all(progress.wrap(batch), configs, jobs=2, before=lambda k, c: started.append(k))
    assert results == [{"run": c.out} for c in configs] and batch.calls == [configs] and started == [1, 2, 3]
    assert progress.done == 3 and len(lines) == 3


def test_the_local_executor_is_the_default_and_unchanged(tmp_path):
    from gradmask.compare.jobs import ProcessTrainer
    from gradmask.train import train
    with open_trainer("local", 1, "cpu", tmp_path) as trainer:
        assert trainer is train
    with open_trainer("local", 2, "cpu", tmp_path) as trainer:
        assert isinstance(trainer, ProcessTrainer)
    assert not (tmp_path / SLURM_DIR).exists()
    import argparse
    parser = argparse.ArgumentParser()
    add_executor_arguments(parser)
    assert executor_from_args(parser.parse_args([])) == "local"


def test_a_slurm_job_calls_setup_before_it_trains(monkeypatch):
    """What a job runs (SlurmRun, pickled with the user's ``setup``) calls it first, then trains."""
    import pickle
    calls = []
    monkeypatch.setattr(slurm_module, "train", lambda config: calls.append(("train", config.augment)) or {})
    run = pickle.loads(pickle.dumps(SlurmRun(setup=_record_setup)))
    _SETUP_CALLS.clear()
    assert run(TrainConfig(augment="none").to_dict()) == {}
    assert _SETUP_CALLS == ["setup"] and calls == [("train", "none")]
    SlurmRun()(TrainConfig(augment="none").to_dict())  # no setup: trains all the same
    assert _SETUP_CALLS == ["setup"] and len(calls) == 2


_SETUP_CALLS: list = []


def _record_setup() -> None:
    _SETUP_CALLS.append("setup")
