"""The GPU checks as one prepared command: the device-generic tests on CUDA, the mask's cost, the
training engine's speed and a short Table 1 comparison, within one time budget.

    python benchmarks/gpu_check.py --out DIR [--dry-run] [--data cifar10=PATH] [--budget-minutes 9]

DIR receives at most 6 files, one folder deep: ``summary.json`` (rewritten after every step, so a
killed run keeps what finished), ``summary.md``, ``gpu_check.log`` (every step's output and
tracebacks) and ``compare/{report.md, results.json, accuracy.png}``. Scratch (training runs,
pytest's XML, the dataset cache when ``$GRADMASK_CACHE`` is unset) goes to ``--work`` (default: a
new folder under the system's temp dir, never inside DIR).

Each step runs in its own process with a share of the budget; a step that fails, crashes or
overruns its share is recorded as failed (with its traceback, and what it measured before) and
the next step runs. The comparison gets whatever time is left.

1. ``tests``: ``python -m pytest -v -m "cuda and not slow" tests`` (the ``[cuda]`` instances of the
   device-generic tests and ``tests/test_device_cuda.py``; 4 pytest-xdist workers when xdist is
   installed and CUDA is there): passed / failed / skipped counts.
2. ``mask_bench``: ResNet-18 (CIFAR stem, 100 classes), batch 128, bf16 autocast, channels_last,
   eager and ``torch.compile``d, one model per variant (vanilla, ``lateral``, ``norm``, ``pixel``,
   ``lateral`` with the full kernel), timed in interleaved rounds after warm-up with CUDA events
   (``torch.cuda.synchronize`` only between timed blocks): the median over rounds of the step
   time / the vanilla step of the same round (compiled + mask vs compiled: the mask inside the
   compiled graphs), and, eager, of the hooks' own time inside those steps / the vanilla step (CUDA
   events recorded by tensor hooks registered just before and just after the mask's hook on each
   target: the whole hook, bookkeeping included, where the backward pass runs it; compiled models
   get no such timers, whose Python side effects cannot run inside a compiled backward); compiled:
   the graphs Dynamo compiled and its graph breaks per variant; peak memory of a step
   (``max_memory_allocated``, eager, one model at a time) / vanilla.
3. ``train_speed``: :func:`gradmask.train.train` on CIFAR-10 (``--data cifar10=PATH``; otherwise a
   synthetic 32x32 stand-in, labelled so), data on the device, bf16, channels_last, compiled,
   2 epochs, without and with the mask: seconds per 50,000 training images in the second epoch.
4. ``compare``: :func:`gradmask.compare.compare` on CIFAR-10, ResNet-18, one-cycle, ``none`` vs
   ``lateral``, 2 seeds, as many epochs as the time left allows, compiled or eager, whichever fits
   more (estimated from steps 2 and 3, see :func:`compare_plan`); its report is the usual one
   (copied into DIR/compare).

``--dry-run`` runs the same steps on the CPU at tiny sizes (narrow ResNet, synthetic data, a few
steps; the mask bench compiles with Dynamo's ``eager`` backend, the engine does not compile) so
the command is known to work before a GPU is there. What cannot run (no CUDA, no data) is recorded
as ``skipped`` with the reason, never as passed; without CUDA and without ``--dry-run`` every step
but the test collection is skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO, Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402

STEPS = ("tests", "mask_bench", "train_speed", "compare")
#: Each step's share of what is left of the budget when it starts (the last takes all that is left).
SHARES = {"tests": 0.22, "mask_bench": 0.30, "train_speed": 0.25, "compare": 0.23}
RESERVE_SECONDS = 8.0     # kept back from the budget for writing the summary
KILL_GRACE_SECONDS = 10.0  # a step's process is killed this long after its share ran out
NO_CUDA = "CUDA is not available here (torch.cuda.is_available() is False)"
CIFAR10_IMAGES = 50_000
OUTPUT_FILES = ("summary.json", "summary.md", "gpu_check.log")
COMPARE_FILES = ("report.md", "results.json", "accuracy.png")
TARGETS = {"lateral_hook_share": 0.01, "pixel_hook_share": 0.03, "memory_ratio": 1.01, "epoch_seconds": 4.0,
           "compiled_lateral_step_ratio": 1.02}


@dataclass(frozen=True)
class Sizes:
    """What each step runs: the GPU sizes, or the CPU rehearsal's (``--dry-run``)."""

    device: str
    bench_model: str
    bench_classes: int
    bench_batch: int
    bench_image: int
    bench_groups: int
    bench_rounds: int
    bench_steps: int
    bench_warmup: int
    compile_backend: str
    compiled_variants: Optional[tuple[str, ...]]  # None: every variant
    train_model: str
    train_batch: int
    train_groups: int
    train_compile: bool
    train_limit: Optional[int]
    test_limit: Optional[int]
    synthetic_train: int
    synthetic_test: int
    compare_max_epochs: int
    compare_seeds: int
    compare_amp: str


GPU = Sizes(device="cuda", bench_model="resnet18", bench_classes=100, bench_batch=128, bench_image=32,
            bench_groups=16, bench_rounds=15, bench_steps=10, bench_warmup=3, compile_backend="inductor",
            compiled_variants=("vanilla", "lateral", "pixel", "norm", "lateral-full-kernel"),
            train_model="resnet18", train_batch=128, train_groups=16, train_compile=True, train_limit=None,
            test_limit=None, synthetic_train=10_000, synthetic_test=2_000, compare_max_epochs=40,
            compare_seeds=2, compare_amp="bf16")
DRY = Sizes(device="cpu", bench_model="resnet18_narrow", bench_classes=10, bench_batch=8, bench_image=16,
            bench_groups=4, bench_rounds=2, bench_steps=2, bench_warmup=1, compile_backend="eager",
            compiled_variants=("vanilla", "lateral"),
            train_model="resnet18_narrow", train_batch=32, train_groups=4, train_compile=False, train_limit=96,
            test_limit=32, synthetic_train=96, synthetic_test=32, compare_max_epochs=1, compare_seeds=2,
            compare_amp="none")


# ------------------------------------------------------------------------------ small helpers

def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def median(values: list[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def sizes_for(args) -> Sizes:
    return DRY if args.dry_run else GPU


class StepResult:
    """A step's record, written (atomically) to ``path`` whenever it changes: a step killed at its
    deadline leaves what it had measured."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"status": "running", "result": {}}

    def update(self, **fields) -> None:
        self.data.update(fields)
        write_json_atomic(self.path, self.data)

    def result(self, **fields) -> None:
        self.data["result"].update(fields)
        write_json_atomic(self.path, self.data)


def environment() -> dict:
    """Versions and the device: what a reader needs to place the numbers."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    try:
        import gradmask
        info["gradmask"] = gradmask.__version__
    except Exception as exc:  # noqa: BLE001 - recorded, the steps will say more
        info["gradmask"] = f"does not import: {exc}"
    for package in ("torchvision", "timm"):
        try:
            info[package] = __import__(package).__version__
        except Exception as exc:  # noqa: BLE001 - optional packages
            info[package] = f"not importable ({type(exc).__name__})"
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001 - a copy of the tree without .git
        info["commit"] = None
    info["commit"] = info["commit"] or os.environ.get("GRADMASK_COMMIT")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_capability=f"{props.major}.{props.minor}", gpu_multiprocessors=props.multi_processor_count)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip() or None
        except Exception:  # noqa: BLE001 - no nvidia-smi
            info["driver"] = None
    return info


def run_process(command: list[str], timeout: float, log, env: dict) -> tuple[Optional[int], bool, float]:
    """Run ``command`` (its own process group) with output appended to ``log``; kill the whole group
    after ``timeout`` seconds. Returns (exit code or None, timed out, seconds)."""
    log.flush()
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        code = process.wait(timeout=max(timeout, 1.0))
        return code, False, time.perf_counter() - start
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None, True, time.perf_counter() - start


# ------------------------------------------------------------------------------ step 1: tests

def junit_counts(path: Path) -> Optional[dict]:
    """``{"passed", "failed", "errors", "skipped", "failures": [name: message]}`` from pytest's XML."""
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) for s in suites)
    errors = sum(int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    failures = []
    for case in root.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            failures.append(f"{case.get('classname')}::{case.get('name')}: {(bad.get('message') or '')[:300]}")
    return {"passed": total - failed - errors - skipped, "failed": failed, "errors": errors, "skipped": skipped,
            "failures": failures[:50]}


def verbose_counts(text: str) -> dict:
    """Counts from ``pytest -v`` lines (``path::test[id] PASSED [ 10%]``), for a killed run."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    for line in text.splitlines():
        if "::" not in line:
            continue
        for word, key in ((" PASSED", "passed"), (" FAILED", "failed"), (" ERROR", "errors"), (" SKIPPED", "skipped"),
                          (" XFAIL", "skipped"), (" XPASS", "passed")):
            if word in line:
                counts[key] += 1
                if key in ("failed", "errors"):
                    counts["failures"].append(line.strip()[:300])
                break
    return counts


def step_tests(args, seconds: float, log, env: dict) -> dict:
    """Runs pytest (not a child of this script: pytest is the child). Returns the step record."""
    junit = Path(args.work) / "pytest.xml"
    junit.unlink(missing_ok=True)
    targets = ["tests/test_device_cuda.py"] if args.dry_run else ["tests"]
    workers = ["-n", "4"] if torch.cuda.is_available() and importlib.util.find_spec("xdist") else []
    command = [sys.executable, "-m", "pytest", "-v", "-m", "cuda and not slow", "-p", "no:cacheprovider",
               "-o", "addopts=", "--continue-on-collection-errors", f"--junitxml={junit}", *workers, *targets]
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    offset = Path(log.name).stat().st_size
    code, timed_out, took = run_process(command, seconds, log, env)
    counts = junit_counts(junit) if not timed_out else None
    if counts is None:
        with open(log.name, errors="replace") as fh:
            fh.seek(offset)
            counts = verbose_counts(fh.read())
    result = {"command": " ".join(command[1:]), "exit_code": code, **counts}
    cuda = torch.cuda.is_available()
    if timed_out:
        return {"status": "failed", "reason": f"timed out after {took:.0f} s (its share of the budget); "
                                              f"counts are from the tests that finished", "result": result}
    if not cuda:
        collected = sum(counts[k] for k in ("passed", "failed", "errors", "skipped"))
        return {"status": "skipped", "reason": f"{NO_CUDA}: pytest collected {collected} "
                                               f"CUDA tests and skipped {counts['skipped']}", "result": result}
    if counts["failed"] or counts["errors"] or code not in (0, 1):
        return {"status": "failed", "reason": f"{counts['failed']} failed, {counts['errors']} errors "
                                              f"(pytest exit code {code})", "result": result}
    if counts["passed"] == 0:
        return {"status": "failed", "reason": "no test passed", "result": result}
    return {"status": "passed", "result": result}


# ------------------------------------------------------------------------------ step 2: the mask's cost

from bench_mask import VARIANTS, HookTimer, attach_timed  # noqa: E402  (benchmarks/ is on sys.path)


class Arm:
    """One variant of the mask bench: its own model (same initial weights for every variant),
    optimizer, mask hooks (eager: with a ``bench_mask.HookTimer`` around them; ``timer`` is None
    compiled), eager or compiled."""

    def __init__(self, variant: str, settings: Optional[dict], sizes: Sizes, device: torch.device,
                 compiled: bool, bf16: bool):
        import gradmask
        torch.manual_seed(0)
        model = gradmask.create_model(sizes.bench_model, sizes.bench_classes, stem="cifar").to(device)
        model = model.to(memory_format=torch.channels_last)
        self.variant, self.device, self.bf16 = variant, device, bf16
        self.timer = None if compiled else HookTimer(device.type == "cuda")
        self.handle = None
        if settings is not None:
            gm = gradmask.GradientMask(**{"groups": sizes.bench_groups, **settings})
            self.handle = gradmask.attach(model, gm) if compiled else attach_timed(model, gm, self.timer)[0]
        self.model = model
        self.net = torch.compile(model, backend=sizes.compile_backend) if compiled else model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        import torch.nn.functional as F
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.net(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(arm: Arm, images, labels, steps: int) -> tuple[float, float]:
    """(seconds per step, seconds per step inside the mask hooks) over ``steps`` steps."""
    _synchronize(arm.device)  # outside the timed block
    if arm.timer is not None:
        arm.timer.take_seconds()
    if arm.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            arm.step(images, labels)
        end.record()
        torch.cuda.synchronize(arm.device)
        seconds = start.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        for _ in range(steps):
            arm.step(images, labels)
        seconds = time.perf_counter() - t0
    return seconds / steps, (0.0 if arm.timer is None else arm.timer.take_seconds()) / steps


def peak_memory(variant: str, settings, sizes: Sizes, device, images, labels) -> int:
    """``max_memory_allocated`` over two steps of one variant, eager, nothing else alive."""
    arm = Arm(variant, settings, sizes, device, compiled=False, bf16=True)
    for _ in range(2):
        arm.step(images, labels)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        arm.step(images, labels)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del arm
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def summarize_mode(rows: dict[str, dict], rounds: list[dict]) -> dict:
    """Per variant: medians over rounds of step / vanilla step and in-step hooks / vanilla step
    (``order_ok`` None: not timed, compiled)."""
    out = {}
    for variant in rows:
        pairs = [(r[variant], r["vanilla"]) for r in rounds if variant in r and "vanilla" in r]
        step = median([s / v[0] for (s, _), v in pairs])
        timed = rows[variant]["order_ok"] is not None
        hook = median([h / v[0] for (_, h), v in pairs]) if rows[variant]["order_ok"] else None
        out[variant] = {"step_ms": None if not pairs else 1e3 * median([s for (s, _), _ in pairs]),
                        "step_ratio": step,
                        "hook_ms": None if not pairs or not timed else 1e3 * median([h for (_, h), _ in pairs]),
                        "hook_share": hook if variant != "vanilla" else None, "rounds": len(pairs),
                        "hook_order_ok": rows[variant]["order_ok"]}
    return out


def step_mask_bench(args, record: StepResult, deadline: float) -> None:
    sizes = sizes_for(args)
    cuda = sizes.device == "cuda"
    if cuda and not torch.cuda.is_available():
        record.update(status="skipped", reason=f"{NO_CUDA} (use --dry-run for the CPU rehearsal)")
        return
    device = torch.device(sizes.device)
    torch.backends.cudnn.benchmark = True
    _compile_models_side_by_side()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(sizes.bench_batch, 3, sizes.bench_image, sizes.bench_image, generator=g).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, sizes.bench_classes, (sizes.bench_batch,), generator=g).to(device)
    record.result(setting={"model": sizes.bench_model, "stem": "cifar", "classes": sizes.bench_classes,
                           "batch": sizes.bench_batch, "image": sizes.bench_image, "groups": sizes.bench_groups,
                           "bf16_autocast": True, "channels_last": True, "device": str(device),
                           "compile_backend": sizes.compile_backend, "steps_per_round": sizes.bench_steps},
                  variants={v: s for v, s in VARIANTS.items()})
    notes = []
    if cuda:
        peaks = {}
        for variant, settings in VARIANTS.items():
            peaks[variant] = peak_memory(variant, settings, sizes, device, images, labels)
        record.result(memory={v: {"peak_bytes": p, "ratio": p / peaks["vanilla"]} for v, p in peaks.items()})
    else:
        record.result(memory=None)
        notes.append("peak memory: CUDA only (benchmarks/bench_mask.py measures CPU peak RSS in subprocesses)")
    for mode in ("eager", "compiled"):
        arms, graphs = {}, {}
        chosen = sizes.compiled_variants if mode == "compiled" and sizes.compiled_variants else tuple(VARIANTS)
        for variant, settings in ((v, VARIANTS[v]) for v in chosen):
            left = deadline - time.time()
            built = time.perf_counter()
            before = _dynamo_counts()
            arm = Arm(variant, settings, sizes, device, compiled=mode == "compiled", bf16=True)
            for _ in range(sizes.bench_warmup):
                arm.step(images, labels)
            _synchronize(device)
            arms[variant] = arm
            graphs[variant] = tuple(after - first for after, first in zip(_dynamo_counts(), before))
            cost = time.perf_counter() - built
            if mode == "compiled" and time.time() + 2 * cost > deadline - 10 and variant != chosen[-1]:
                notes.append(f"compiled: stopped after {variant!r} (warm-up {cost:.0f} s, {left:.0f} s were left)")
                break
        rounds: list[dict] = []
        for round_index in range(sizes.bench_rounds + 1):  # round 0 settles clocks and caches: not kept
            if rounds and time.time() > deadline - 5:
                notes.append(f"{mode}: stopped after {len(rounds)} rounds (budget)")
                break
            timing = {v: timed_steps(arm, images, labels, sizes.bench_steps) for v, arm in arms.items()}
            if round_index:
                rounds.append(timing)
        rows = {v: {"order_ok": None if arm.timer is None else arm.timer.order_ok} for v, arm in arms.items()}
        summary = summarize_mode(rows, rounds)
        for variant, arm in arms.items():  # a masked model whose hooks never ran would time as vanilla
            summary[variant]["mask_calls"] = (None if arm.handle is None else
                                              min(s["calls"] for s in arm.handle.stats().values()))
            if mode == "compiled":  # Dynamo's counts while this variant compiled (its warm-up steps)
                summary[variant]["graphs"], summary[variant]["graph_breaks"] = graphs[variant]
        record.result(**{mode: summary}, notes=notes)
        unmasked = [v for v, row in summary.items() if row["mask_calls"] == 0]
        if unmasked:
            raise RuntimeError(f"{mode}: the mask hooks of {unmasked} never ran: their times are not the mask's")
        del arms
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    record.update(status="passed", targets=mask_targets(record.data["result"]))


def mask_targets(result: dict) -> list[dict]:
    """The issues' targets (eager hook share of the step: lateral <= 1%, pixel <= 3%; compiled +
    lateral step <= 1.02 compiled vanilla step, on CUDA only; peak memory within 1%), held against
    the figures that were measured."""
    rows = []
    table = result.get("eager") or {}
    for variant, key in (("lateral", "lateral_hook_share"), ("pixel", "pixel_hook_share")):
        share = (table.get(variant) or {}).get("hook_share")
        rows.append({"what": f"{variant} hooks / vanilla step (eager)", "target": f"<= {TARGETS[key]:.0%}",
                     "measured": share, "met": None if share is None else share <= TARGETS[key]})
    ratio = ((result.get("compiled") or {}).get("lateral") or {}).get("step_ratio")
    limit = TARGETS["compiled_lateral_step_ratio"]
    cuda = (result.get("setting") or {}).get("device", "").startswith("cuda")
    rows.append({"what": "lateral step / vanilla step (compiled)", "target": f"<= {limit}", "measured": ratio,
                 "met": None if ratio is None or not cuda else ratio <= limit})
    memory = result.get("memory") or {}
    for variant, row in memory.items():
        if variant != "vanilla":
            rows.append({"what": f"{variant} peak memory / vanilla", "target": f"<= {TARGETS['memory_ratio']}",
                         "measured": row["ratio"], "met": row["ratio"] <= TARGETS["memory_ratio"]})
    return rows


def _dynamo_counts() -> tuple[int, int]:
    """(graphs Dynamo compiled, graph breaks) in this process so far."""
    from torch._dynamo.utils import counters
    return counters["stats"].get("unique_graphs", 0), sum(counters["graph_break"].values())


def _compile_models_side_by_side() -> None:
    """One compiled model per variant, alive together: they share the forward's code objects, and
    Dynamo does not guard on module hooks by default (a masked model would run the vanilla one's
    code, unmasked). Guard on hooks, and leave room for every variant's entry."""
    import torch._dynamo
    if hasattr(torch._dynamo.config, "skip_nnmodule_hook_guards"):
        torch._dynamo.config.skip_nnmodule_hook_guards = False
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))


# ------------------------------------------------------------------------------ step 3: engine speed

def _data_fields(args, sizes: Sizes) -> tuple[dict, str]:
    """TrainConfig data fields and a description: CIFAR-10 when given, else the synthetic stand-in."""
    if args.cifar10:
        return ({"dataset": "cifar10", "data": args.cifar10, "train_limit": sizes.train_limit,
                 "test_limit": sizes.test_limit}, f"CIFAR-10 ({args.cifar10})")
    return ({"dataset": "synthetic", "synthetic_train": sizes.synthetic_train, "synthetic_test": sizes.synthetic_test,
             "train_limit": sizes.train_limit, "test_limit": sizes.test_limit},
            f"synthetic 32x32 stand-in ({sizes.train_limit or sizes.synthetic_train} training images; "
            f"no --data cifar10=PATH)")


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def step_train_speed(args, record: StepResult, deadline: float) -> None:
    from gradmask.train import TrainConfig, train
    sizes = sizes_for(args)
    if sizes.device == "cuda" and not torch.cuda.is_available():
        record.update(status="skipped", reason=f"{NO_CUDA} (use --dry-run for the CPU rehearsal)")
        return
    data, description = _data_fields(args, sizes)
    record.result(setting={"model": sizes.train_model, "stem": "cifar", "data": description, "batch": sizes.train_batch,
                           "amp": "bf16", "channels_last": True, "compile": sizes.train_compile, "epochs": 2,
                           "device": sizes.device, "data_on_device": True})
    runs = {}
    for mask in ("none", "lateral"):
        spent = [r["wall_seconds"] for r in runs.values()]
        if spent and time.time() + 1.2 * spent[0] > deadline:
            runs[mask] = {"skipped": f"not enough of the budget left ({deadline - time.time():.0f} s; "
                                     f"the run without the mask took {spent[0]:.0f} s)"}
            record.result(runs=runs)
            continue
        out = Path(args.work) / "train_speed" / mask
        config = TrainConfig.from_dict(dict(
            **data, model=sizes.train_model, stem="cifar", epochs=2, batch_size=sizes.train_batch,
            lr=0.1, schedule="triangle", warmup_epochs=0.5, amp="bf16", channels_last=True,
            compile=sizes.train_compile, device=sizes.device, mask=mask, groups=sizes.train_groups,
            progress=False, out=str(out), overwrite=True))
        start = time.perf_counter()
        final = train(config)
        wall = time.perf_counter() - start
        epochs = _records(out)
        last = epochs[-1]
        per_epoch = CIFAR10_IMAGES / last["images_per_second"]
        runs[mask] = {"wall_seconds": wall, "epoch_seconds": [r["epoch_seconds"] for r in epochs],
                      "images_per_second": [r["images_per_second"] for r in epochs],
                      "train_seconds_per_50k_images": per_epoch, "test_acc": final["test_acc"],
                      "device": final["device"]}
        record.result(runs=runs)
    if "train_seconds_per_50k_images" in runs.get("lateral", {}) and "train_seconds_per_50k_images" in runs["none"]:
        record.result(mask_slowdown=runs["lateral"]["train_seconds_per_50k_images"]
                      / runs["none"]["train_seconds_per_50k_images"])
    none = runs["none"]["train_seconds_per_50k_images"]
    stand_in = "" if args.cifar10 else ", stand-in data"
    record.update(status="passed", targets=[{
        "what": f"ResNet-18 epoch without the mask (50,000 images, second epoch{stand_in})",
        "target": f"<= {TARGETS['epoch_seconds']} s", "measured": none,
        "met": none <= TARGETS["epoch_seconds"] if sizes.device == "cuda" else None}])


# ------------------------------------------------------------------------------ step 4: Table 1

def _epochs(seconds_left: float, runs: int, per_epoch: float, overhead: float) -> int:
    return int((0.85 * seconds_left - runs * overhead) // (runs * per_epoch))


def compare_plan(seconds_left: float, speed: Optional[dict], bench: Optional[dict], sizes: Sizes,
                 runs: int) -> tuple[int, bool, str]:
    """``(epochs per run, compiled, how)``: the most epochs that fit ``seconds_left`` for ``runs`` runs,
    compiled (from the engine's epochs measured by ``train_speed``: the second epoch, plus the
    first epoch's extra, compiling, and 15 s per run) or eager (from ``mask_bench``'s eager vanilla
    and ``lateral`` steps x 391 steps + 15% for the test pass, and 15 s per run), whichever fits
    more; ``speed`` / ``bench`` are those steps' records (None when they did not run)."""
    if sizes.device != "cuda":
        return sizes.compare_max_epochs, sizes.train_compile, "dry run: fixed"
    options = []
    runs_measured = ((speed or {}).get("result") or {}).get("runs") or {}
    if (speed or {}).get("status") == "passed" and "epoch_seconds" in runs_measured.get("none", {}):
        none = runs_measured["none"]["epoch_seconds"]
        lateral = runs_measured.get("lateral", {}).get("epoch_seconds") or [x * 1.5 for x in none]
        overhead = max(none[0] - none[-1], lateral[0] - lateral[-1], 0.0) + 15.0
        options.append((True, (none[-1] + lateral[-1]) / 2, overhead, "compiled (train_speed's epochs)"))
    eager = ((bench or {}).get("result") or {}).get("eager") or {}
    if (eager.get("vanilla") or {}).get("step_ms") and (eager.get("lateral") or {}).get("step_ms"):
        steps = math.ceil(CIFAR10_IMAGES / sizes.train_batch)
        per_epoch = 1.15 * steps * (eager["vanilla"]["step_ms"] + eager["lateral"]["step_ms"]) / 2e3
        options.append((False, per_epoch, 15.0, "eager (mask_bench's steps)"))
    if not options:
        options.append((False, 20.0, 40.0, "eager (nothing measured: assumed)"))
    compiled, per_epoch, overhead, source = max(options, key=lambda o: _epochs(seconds_left, runs, o[1], o[2]))
    epochs = min(_epochs(seconds_left, runs, per_epoch, overhead), sizes.compare_max_epochs)
    how = "; ".join(f"{o[3]}: {o[1]:.1f} s per epoch, {o[2]:.0f} s per run besides, "
                    f"{_epochs(seconds_left, runs, o[1], o[2])} epochs" for o in options)
    return epochs, compiled, f"{seconds_left:.0f} s left for {runs} runs; {how}"


def step_compare(args, record: StepResult, deadline: float) -> None:
    from gradmask.compare import compare
    from gradmask.train import TrainConfig
    sizes = sizes_for(args)
    if sizes.device == "cuda" and not torch.cuda.is_available():
        record.update(status="skipped", reason=f"{NO_CUDA} (use --dry-run for the CPU rehearsal)")
        return
    if sizes.device == "cuda" and not args.cifar10:
        record.update(status="skipped", reason="no CIFAR-10 data: pass --data cifar10=PATH")
        return
    earlier = {name: json.loads(path.read_text()) for name in ("train_speed", "mask_bench")
               if (path := Path(args.work) / f"{name}.json").is_file()}
    runs = 2 * sizes.compare_seeds
    epochs, compiled, plan = compare_plan(deadline - time.time(), earlier.get("train_speed"),
                                          earlier.get("mask_bench"), sizes, runs)
    record.result(plan=plan, epochs=epochs)
    if epochs < 1:
        record.update(status="skipped", reason=f"not enough time left for one epoch per run ({plan})")
        return
    data, description = (_data_fields(args, sizes) if sizes.device == "cpu" else
                         ({"dataset": "cifar10", "data": args.cifar10}, f"CIFAR-10 ({args.cifar10})"))
    base = TrainConfig.from_dict(dict(
        **data, model=sizes.train_model, stem="cifar", epochs=epochs, batch_size=sizes.train_batch,
        lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="triangle", warmup_epochs=0.25 * epochs,
        amp=sizes.compare_amp, channels_last=True, compile=compiled, device=sizes.device,
        groups=sizes.train_groups, progress=False))
    out = Path(args.work) / "compare"
    record.result(setting={"data": description, "model": sizes.train_model, "epochs": epochs,
                           "seeds": sizes.compare_seeds, "variants": ["none", "lateral"], "batch": sizes.train_batch,
                           "lr": 0.1,
                           "schedule": "triangle", "amp": sizes.compare_amp, "compile": compiled, "out": str(out)})
    compare(base, variants=("none", "lateral"), seeds=sizes.compare_seeds, out=out,
            log=lambda line: print(line, flush=True))
    record.result(**collect_compare(out, Path(args.out)))
    record.update(status="passed")


def collect_compare(work: Path, out: Path) -> dict:
    """Copy the comparison's report files into ``out/compare`` and return its summary numbers."""
    target = out / "compare"
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in COMPARE_FILES:
        if (work / name).is_file():
            shutil.copy2(work / name, target / name)
            copied.append(f"compare/{name}")
    summary = json.loads((work / "results.json").read_text())["summary"] if (work / "results.json").is_file() else None
    return {"files": copied, "summary": summary}


# ------------------------------------------------------------------------------ the orchestrator

CHILD_STEPS = {"mask_bench": step_mask_bench, "train_speed": step_train_speed, "compare": step_compare}


def child_main(args) -> int:
    record = StepResult(Path(args.result))
    try:
        CHILD_STEPS[args.child](args, record, args.deadline)
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, with its traceback
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        record.update(status="failed", reason=f"{type(exc).__name__}: {str(exc)[:500]}", traceback=text)
        return 1
    return 0


def render_markdown(summary: dict) -> str:
    env, steps = summary["environment"], summary["steps"]
    lines = [f"# gradmask GPU check{' (dry run on the CPU: no GPU figures)' if summary['dry_run'] else ''}", "",
             f"{summary['started']} to {summary.get('finished') or '(running)'}, "
             f"{summary.get('wall_seconds', 0):.0f} s "
             f"of a {summary['budget_seconds']:.0f} s budget. `{summary['command']}`", "",
             "| | |", "|---|---|"]
    for key in ("gpu", "driver", "torch", "torch_cuda", "cudnn", "python", "torchvision", "timm", "gradmask", "commit",
                "cpus"):
        if env.get(key) is not None:
            lines.append(f"| {key} | {env[key]} |")
    lines += ["", "| step | status | seconds | note |", "|---|---|---:|---|"]
    for name, step in steps.items():
        note = step.get("reason") or ""
        note = note.replace("|", "/")[:300]
        lines.append(f"| {name} | **{step['status']}** | {step.get('seconds', 0):.0f} | {note} |")
    tests = (steps.get("tests") or {}).get("result") or {}
    if tests:
        lines += ["", f"Tests: {tests.get('passed')} passed, {tests.get('failed')} failed, "
                      f"{tests.get('errors')} errors, {tests.get('skipped')} skipped (`{tests.get('command')}`)."]
        lines += [f"- {f}" for f in tests.get("failures", [])[:20]]
    bench = (steps.get("mask_bench") or {}).get("result") or {}
    if bench.get("setting"):
        s = bench["setting"]
        lines += ["", f"Mask cost: {s['model']} ({s['stem']} stem, {s['classes']} classes), batch {s['batch']}, "
                      f"{s['image']}x{s['image']}, bf16 autocast, channels_last, {s['device']}; medians over rounds "
                      f"of {s['steps_per_round']} steps (compiled: backend {s['compile_backend']}).", "",
                  "| mode | variant | step (ms) | step / vanilla | hooks (ms) | hooks / vanilla step "
                  "| peak memory / vanilla | graphs / graph breaks |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        memory = bench.get("memory") or {}
        for mode in ("eager", "compiled"):
            for variant, row in (bench.get(mode) or {}).items():
                mem = memory.get(variant, {}).get("ratio")
                lines.append(f"| {mode} | {variant} | {_fmt(row['step_ms'], '.2f')} | "
                             f"{_fmt(row['step_ratio'], '.3f')} | "
                             f"{_fmt(row['hook_ms'], '.3f')} | {_fmt(row['hook_share'], '.2%')} | "
                             f"{_fmt(mem if mode == 'eager' else None, '.4f')} | "
                             f"{_fmt(row.get('graphs'), 'd')} / {_fmt(row.get('graph_breaks'), 'd')} |")
        lines += [f"- {n}" for n in bench.get("notes", [])]
    speed = (steps.get("train_speed") or {}).get("result") or {}
    if speed.get("runs"):
        s = speed["setting"]
        lines += ["", f"Engine speed: {s['model']}, {s['data']}, batch {s['batch']}, bf16, channels_last, "
                      f"compile={s['compile']}, {s['device']}.", "",
                  "| mask | seconds per 50,000 training images (epoch 2) | epoch seconds (train + test) | test acc |",
                  "|---|---:|---|---:|"]
        for mask, run in speed["runs"].items():
            if "skipped" in run:
                lines.append(f"| {mask} | skipped: {run['skipped']} | | |")
            else:
                lines.append(f"| {mask} | {run['train_seconds_per_50k_images']:.2f} | "
                             f"{', '.join(f'{x:.1f}' for x in run['epoch_seconds'])} | {run['test_acc']:.4f} |")
    comparison = (steps.get("compare") or {}).get("result") or {}
    if comparison.get("summary"):
        s = comparison["setting"]
        lines += ["", f"Table 1 (short): {s['data']}, {s['model']}, {s['epochs']} epochs, one-cycle, "
                      f"{s['seeds']} seeds ({comparison.get('plan')}); full report: compare/report.md.", "",
                  "| variant | runs | top-1 (%) | vs none (pp) | 95% CI |", "|---|---:|---:|---:|---|"]
        for row in comparison["summary"]:
            ci = ("" if row.get("ci_low_pp") is None else f"[{row['ci_low_pp']:+.2f}, {row['ci_high_pp']:+.2f}]")
            lines.append(f"| {row['variant']} | {row['finished_runs']} | {_fmt(row['top1_mean_pct'], '.2f')} +- "
                         f"{_fmt(row['top1_std_pct'], '.2f')} | {_fmt(row['delta_vs_none_pp'], '+.2f')} | {ci} |")
    targets = [t for step in steps.values() for t in step.get("targets", [])]
    if targets:
        lines += ["", "| target | wanted | measured | met |", "|---|---|---:|---|"]
        for t in targets:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(f"| {t['what']} | {t['target']} | {_fmt(t['measured'], '.4g')} | {met} |")
    if summary["dry_run"] or not env.get("cuda_available"):
        lines += ["", "No GPU figures: this run had no CUDA device; its numbers only show that the command works."]
    return "\n".join(lines) + "\n"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for summary.json, summary.md, gpu_check.log, compare/")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                        help="cifar10=PATH: the CIFAR-10 archive or folder (python release, ImageFolder or .tar.gz)")
    parser.add_argument("--budget-minutes", type=float, default=9.0, help="wall-clock budget of all steps (default 9)")
    parser.add_argument("--work", help="scratch folder (runs, cache); default: a new folder under the temp dir")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"which steps, comma-separated (default {','.join(STEPS)})")
    parser.add_argument("--child", choices=sorted(CHILD_STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cifar10 = None
    for item in args.data:
        name, sep, path = item.partition("=")
        if not sep or name != "cifar10" or not path:
            parser.error(f"--data takes cifar10=PATH, got {item!r}")
        if not Path(path).exists():
            raise FileNotFoundError(f"--data cifar10={path}: no such file or folder")
        args.cifar10 = str(Path(path).resolve())
    if not (math.isfinite(args.budget_minutes) and 1.0 <= args.budget_minutes <= 600.0):
        parser.error(f"--budget-minutes must be in [1, 600], got {args.budget_minutes}")
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown or not args.steps:
        parser.error(f"--steps takes a comma-separated subset of {','.join(STEPS)}, "
                     f"got {','.join(unknown) or 'nothing'}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    started, clock = now_iso(), time.time()
    budget = 60.0 * args.budget_minutes
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="gradmask-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if work == out or out in work.parents:
        raise ValueError(f"--work ({work}) must lie outside --out ({out}): DIR holds only the summary files")
    args.work, args.out = str(work), str(out)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.setdefault("GRADMASK_CACHE", str(work / "cache"))
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    summary = {"format": 1, "command": command,
               "dry_run": args.dry_run, "started": started, "finished": None, "budget_seconds": budget,
               "work": str(work), "sizes": asdict(sizes_for(args)), "environment": environment(), "steps": {}}
    with open(out / "gpu_check.log", "a", buffering=1) as log:
        log.write(f"# gradmask gpu_check {started}: {summary['command']}\n")

        def save() -> None:
            summary["wall_seconds"] = time.time() - clock
            write_json_atomic(out / "summary.json", summary)
            (out / "summary.md").write_text(render_markdown(summary))

        save()
        steps = [s for s in STEPS if s in args.steps]
        for index, name in enumerate(steps):
            left = clock + budget - RESERVE_SECONDS - time.time()
            weights = [SHARES[s] for s in steps[index:]]
            share = left if index == len(steps) - 1 else left * weights[0] / sum(weights)
            log.write(f"\n# ---- step {name}: {share:.0f} s of {left:.0f} s left ({now_iso()})\n")
            start = time.time()
            try:
                if share < 5:
                    record = {"status": "skipped", "reason": f"budget spent ({left:.0f} s left)"}
                elif name == "tests":
                    record = step_tests(args, share, log, env)
                else:
                    record = run_child(args, name, share, log, env, work)
            except Exception as exc:  # noqa: BLE001 - a broken step never stops the next
                text = traceback.format_exc()
                log.write(text)
                record = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "traceback": text}
            record["seconds"] = time.time() - start
            summary["steps"][name] = record
            print(f"[gpu_check] {name}: {record['status']} ({record['seconds']:.0f} s)"
                  f"{' - ' + record['reason'] if record.get('reason') else ''}", flush=True)
            save()
        summary["finished"] = now_iso()
        save()
    print((out / "summary.md").read_text(), flush=True)
    return 0


def run_child(args, name: str, seconds: float, log, env: dict, work: Path) -> dict:
    """Run step ``name`` in a fresh process with ``seconds`` of the budget; its record (possibly
    partial) comes back through a JSON file."""
    result = work / f"{name}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result", str(result),
               "--deadline", str(time.time() + seconds), "--out", args.out, "--work", args.work,
               "--budget-minutes", str(args.budget_minutes)]
    if args.dry_run:
        command.append("--dry-run")
    if args.cifar10:
        command += ["--data", f"cifar10={args.cifar10}"]
    code, timed_out, took = run_process(command, seconds + KILL_GRACE_SECONDS, log, env)
    record = json.loads(result.read_text()) if result.is_file() else {"status": "failed", "result": {}}
    if timed_out:
        record.update(status="failed", reason=f"killed after {took:.0f} s (its share of the budget); "
                                              f"the result holds what it measured before")
        if name == "compare":
            record["result"].update(_report_after_kill(work / "compare", Path(args.out), log))
    elif code != 0 and record.get("status") in ("running", "passed"):
        record.update(status="failed", reason=f"the step's process exited with code {code} (see gpu_check.log)")
    elif record.get("status") == "running":
        record.update(status="failed", reason="the step's process ended without a result")
    return record


def _report_after_kill(work: Path, out: Path, log) -> dict:
    """The comparison's report from the runs that finished before the kill (if any)."""
    try:
        from gradmask.compare import write_report
        write_report(work)
        return collect_compare(work, out)
    except Exception as exc:  # noqa: BLE001 - nothing finished, or the report failed: say so
        log.write(f"no report after the kill: {type(exc).__name__}: {exc}\n")
        return {"report": f"not written: {type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    sys.exit(main())
