"""benchmarks/gpu_check.py: the dry run end to end (what CI can prove before a GPU is there), the
records of steps that cannot run, and the pieces that keep a one-shot GPU run's results."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402

VARIANTS = ["vanilla", "lateral", "norm", "pixel", "lateral-full-kernel"]


def run_script(*args, timeout=240):
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-check")
    start = time.perf_counter()
    printed = run_script("--dry-run", "--out", str(root / "out"), "--work", str(root / "work"),
                         "--budget-minutes", "5").stdout
    return root / "out", json.loads((root / "out" / "summary.json").read_text()), printed, time.perf_counter() - start


@pytest.mark.slow
def test_dry_run_writes_few_files_and_every_step(dry_run):
    out, summary, printed, seconds = dry_run
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["compare/accuracy.png", "compare/report.md", "compare/results.json", "gpu_check.log",
                     "summary.json", "summary.md"]
    assert list(summary["steps"]) == ["tests", "mask_bench", "train_speed", "compare"]
    assert summary["dry_run"] and summary["sizes"]["device"] == "cpu" and summary["finished"]
    assert summary["environment"]["torch"] == torch.__version__
    assert summary["wall_seconds"] < 180 and seconds < 180
    md = (out / "summary.md").read_text()
    assert "dry run" in md and "No GPU figures" in md and md in printed
    assert "pytest" in (out / "gpu_check.log").read_text()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the dry run's test step runs the CUDA tests")
def test_dry_run_skips_the_cuda_tests_with_the_reason(dry_run):
    tests = dry_run[1]["steps"]["tests"]
    assert tests["status"] == "skipped" and "CUDA is not available" in tests["reason"]
    assert tests["result"]["skipped"] > 50 and tests["result"]["passed"] == 0 and tests["result"]["failed"] == 0


@pytest.mark.slow
def test_dry_run_mask_bench_measures_every_variant(dry_run):
    bench = dry_run[1]["steps"]["mask_bench"]
    assert bench["status"] == "passed", bench.get("traceback")
    eager, compiled = bench["result"]["eager"], bench["result"]["compiled"]
    assert list(eager) == VARIANTS and list(compiled) == ["vanilla", "lateral"]
    for table in (eager, compiled):
        assert table["vanilla"]["step_ratio"] == 1.0 and table["vanilla"]["mask_calls"] is None
        for variant, row in table.items():
            assert row["step_ms"] > 0 and row["rounds"] == 2
            if variant != "vanilla":  # the hooks ran (compiled too)
                assert row["mask_calls"] > 0
    for variant, row in eager.items():  # and took time inside the steps
        assert row["hook_order_ok"] and (variant == "vanilla" or 0 < row["hook_share"] < 5 and row["hook_ms"] > 0)
    for row in compiled.values():  # untimed inside the compiled graphs, which the mask did not break
        assert row["hook_order_ok"] is None and row["hook_share"] is None and row["hook_ms"] is None
        assert row["graphs"] >= 1 and row["graph_breaks"] == 0
    assert compiled["lateral"]["graphs"] == compiled["vanilla"]["graphs"]
    assert bench["result"]["memory"] is None and any("memory" in n for n in bench["result"]["notes"])
    assert [t["what"] for t in bench["targets"]] == ["lateral hooks / vanilla step (eager)",
                                                     "pixel hooks / vanilla step (eager)",
                                                     "lateral step / vanilla step (compiled)"]
    assert bench["targets"][2]["measured"] > 0 and bench["targets"][2]["met"] is None  # not held on a CPU


@pytest.mark.slow
def test_dry_run_trains_and_compares_through_the_engine(dry_run):
    out, summary, _, _ = dry_run
    speed, comparison = summary["steps"]["train_speed"], summary["steps"]["compare"]
    assert speed["status"] == "passed" and comparison["status"] == "passed", (speed, comparison)
    for mask in ("none", "lateral"):
        run = speed["result"]["runs"][mask]
        assert len(run["epoch_seconds"]) == 2 and run["train_seconds_per_50k_images"] > 0 and run["device"] == "cpu"
    assert speed["targets"][0]["met"] is None  # a CPU epoch is not held against the GPU target
    rows = {row["variant"]: row for row in comparison["result"]["summary"]}
    assert set(rows) == {"none", "lateral"} and all(r["finished_runs"] == 2 for r in rows.values())
    assert rows["lateral"]["ci_low_pp"] <= rows["lateral"]["delta_vs_none_pp"] <= rows["lateral"]["ci_high_pp"]
    assert "lateral" in (out / "compare" / "report.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_and_without_dry_run_every_step_is_skipped_not_passed(tmp_path):
    run_script("--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--budget-minutes", "2",
               "--steps", "mask_bench,train_speed,compare")
    steps = json.loads((tmp_path / "out" / "summary.json").read_text())["steps"]
    assert list(steps) == ["mask_bench", "train_speed", "compare"]
    for step in steps.values():
        assert step["status"] == "skipped" and "CUDA is not available" in step["reason"]


@pytest.mark.parametrize("argv,message", [
    (["--data", "cifar100=x"], "cifar10=PATH"), (["--budget-minutes", "0"], "budget-minutes"),
    (["--steps", "tests,nope"], "steps"), (["--steps", ""], "steps"),
])
def test_bad_options_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", "x", *argv])
    assert message in capsys.readouterr().err


def test_missing_data_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data cifar10="):
        gpu_check.parse_args(["--out", "x", "--data", f"cifar10={tmp_path / 'absent.tar.gz'}"])


def test_work_folder_inside_out_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--work"):
        gpu_check.main(["--out", str(tmp_path), "--work", str(tmp_path / "work"), "--steps", "compare"])


def test_a_process_over_its_time_is_killed_with_its_children(tmp_path):
    log = open(tmp_path / "log", "a")
    marker = tmp_path / "late"
    (tmp_path / "grandchild.py").write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w')\n")
    (tmp_path / "child.py").write_text("import subprocess, sys, time\n"
                                       f"subprocess.Popen([sys.executable, {str(tmp_path / 'grandchild.py')!r}])\n"
                                       "time.sleep(30)\n")
    start = time.perf_counter()
    with log:
        exit_code, timed_out, seconds = gpu_check.run_process([sys.executable, str(tmp_path / "child.py")], 1.0, log,
                                                              {})
    assert exit_code is None and timed_out and seconds < 10 and time.perf_counter() - start < 10
    time.sleep(3.5)
    assert not marker.exists()  # the grandchild went with it


def test_a_failing_step_is_recorded_with_its_traceback(tmp_path, monkeypatch):
    def broken(args, record, deadline):
        record.result(partial=1.5)
        raise RuntimeError("device lost")
    monkeypatch.setitem(gpu_check.CHILD_STEPS, "train_speed", broken)
    args = gpu_check.parse_args(["--out", str(tmp_path), "--child", "train_speed", "--result",
                                 str(tmp_path / "r.json"), "--deadline", "0"])
    assert gpu_check.child_main(args) == 1
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["status"] == "failed" and record["reason"] == "RuntimeError: device lost"
    assert "device lost" in record["traceback"] and record["result"] == {"partial": 1.5}


def test_test_counts_from_junit_and_from_a_killed_verbose_log(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite tests="5" failures="1" errors="1" skipped="1">'
                   '<testcase classname="tests.test_a" name="t1"/><testcase classname="tests.test_a" name="t2">'
                   '<failure message="boom"/></testcase><testcase classname="tests.test_b" name="t3">'
                   '<error message="e"/>'
                   '</testcase></testsuite></testsuites>')
    counts = gpu_check.junit_counts(xml)
    assert (counts["passed"], counts["failed"], counts["errors"], counts["skipped"]) == (2, 1, 1, 1)
    assert counts["failures"] == ["tests.test_a::t2: boom", "tests.test_b::t3: e"]
    log = ("tests/test_mask.py::test_a[cuda] PASSED [ 10%]\ntests/test_mask.py::test_b[cuda] FAILED [ 20%]\n"
           "tests/test_device_cuda.py::test_c SKIPPED (needs CUDA) [ 30%]\nnoise PASSED\n")
    counts = gpu_check.verbose_counts(log)
    assert (counts["passed"], counts["failed"], counts["skipped"]) == (1, 1, 1) and len(counts["failures"]) == 1


def test_compare_plan_takes_the_mode_that_fits_more_epochs():
    speed = {"status": "passed", "result": {"runs": {"none": {"epoch_seconds": [40.0, 4.0]},
                                                     "lateral": {"epoch_seconds": [50.0, 6.0]}}}}
    bench = {"status": "passed", "result": {"eager": {"vanilla": {"step_ms": 10.0}, "lateral": {"step_ms": 14.0}}}}
    steps = 391  # ceil(50000 / 128)
    eager_epoch = 1.15 * steps * 12.0 / 1e3
    # compiled: (4 + 6) / 2 = 5 s per epoch, 44 + 15 s per run besides; eager: 15 s per run besides
    compiled_epochs = int((0.85 * 300 - 4 * 59) // 20)
    eager_epochs = int((0.85 * 300 - 4 * 15) // (4 * eager_epoch))
    epochs, compiled, plan = gpu_check.compare_plan(300.0, speed, bench, gpu_check.GPU, runs=4)
    assert (epochs, compiled) == (max(compiled_epochs, eager_epochs), compiled_epochs > eager_epochs)
    assert "300 s left" in plan and "compiled" in plan and "eager" in plan
    epochs, compiled, _ = gpu_check.compare_plan(3000.0, speed, bench, gpu_check.GPU, runs=4)
    assert compiled and epochs == min(int((0.85 * 3000 - 4 * 59) // 20), gpu_check.GPU.compare_max_epochs)
    assert gpu_check.compare_plan(50.0, speed, bench, gpu_check.GPU, runs=4)[0] < 1
    failed = {**speed, "status": "failed"}  # a compile that failed is not planned with
    assert gpu_check.compare_plan(3000.0, failed, bench, gpu_check.GPU, runs=4)[1] is False
    epochs, compiled, plan = gpu_check.compare_plan(600.0, None, None, gpu_check.GPU, runs=4)
    assert (epochs, compiled) == (int((0.85 * 600 - 4 * 40) // 80), False) and "assumed" in plan
    assert gpu_check.compare_plan(10.0, None, None, gpu_check.DRY, runs=4) == (1, False, "dry run: fixed")
