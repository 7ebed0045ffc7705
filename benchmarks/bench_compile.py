"""What torch.compile does with the mask: graphs, graph breaks, compile time, step time.

    python benchmarks/bench_compile.py --model resnet18_narrow --batch-size 32 --steps 10

Four variants, each in a fresh Dynamo state (``torch._dynamo.reset()``) on the same weights and
batch: eager, eager + mask, compiled, compiled + mask (``dynamic=False``, as the engine does, for
both compiled variants). For each: the first step (compilation included, wall time), the median of
``--steps`` full SGD steps after two warm-up steps in CPU time of this process
(``time.process_time``: on a shared machine wall time mostly measures the other jobs; run with one
thread), the graphs Dynamo compiled and its graph breaks (``torch._dynamo.utils.counters``, forward
and backward: the mask's hooks are traced with the forward), and the mask's calls per target and
step (every target masked at every step, or the times are not the mask's). The mask's inhibition
rate alternates between 0.5 and 0.4 from step to step (a schedule): a variant that recompiled for
it would show more graphs. Compile times depend on inductor's on-disk cache
(``TORCHINDUCTOR_CACHE_DIR``): run with a fresh one for cold numbers. ``--backend aot_eager`` (no
code generation) checks graphs and graph breaks in seconds.

The table's last column divides each masked variant's step by its vanilla variant's (eager + mask /
eager, compiled + mask / compiled) in this run. Those are separate runs one after the other: on a
machine shared with other jobs, ``--paired N`` adds N rounds of the four variants interleaved step
by step on one model with the mask attached (the vanilla variants switch it off with
``handle.enabled = False``; compiled, that is one more entry in Dynamo's cache, compiled once):
the median over rounds of each masked step over the vanilla step of the same round, which drift
hits alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import gradmask

VARIANTS = (("eager", False, False), ("eager + mask", True, False), ("compiled", False, True),
            ("compiled + mask", True, True))
RATES = (0.5, 0.4)  # alternated step by step
VANILLA = {"eager + mask": "eager", "compiled + mask": "compiled"}  # each masked variant's vanilla one


def run(model_name: str, batch: int, steps: int, mask: bool, compiled: bool, groups: int, backend: str) -> dict:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = gradmask.create_model(model_name, 10)
    handle = gradmask.attach(model, gradmask.GradientMask(groups=groups)) if mask else None
    net = torch.compile(model, dynamic=False, backend=backend) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    done = 0

    def step(clock=time.process_time) -> float:
        nonlocal done
        if handle is not None:
            handle.gradient_mask.inhibition_rate = RATES[done % len(RATES)]
        done += 1
        start = clock()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        return clock() - start

    first = step(time.perf_counter)
    for _ in range(2):
        step()
    times = [step() for _ in range(steps)]
    result = {"first_s": first, "step_ms": 1000 * statistics.median(times),
              "graphs": counters["stats"].get("unique_graphs", 0) if compiled else None,
              "graph_breaks": sum(counters["graph_break"].values()) if compiled else None,
              "calls_per_target": None if handle is None else
              min(s["calls"] for s in handle.stats().values()) / done}
    if handle is not None:
        handle.remove()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18_narrow", help="a gradmask model name (default resnet18_narrow)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant, after 3 untimed ones")
    parser.add_argument("--groups", type=int, default=4, help="the mask's channel sets")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                        help="also time the four variants interleaved step by step, ROUNDS rounds (default 0: not)")
    args = parser.parse_args(argv)
    for name, value in (("--batch-size", args.batch_size), ("--steps", args.steps), ("--groups", args.groups)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    print(f"{args.model}, batch {args.batch_size}, 32x32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, backend {args.backend}")
    print("| variant | first step (s, wall) | step (ms, CPU) | graphs compiled | graph breaks "
          "| mask calls per target and step | step / vanilla step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    steps = {}
    for name, mask, compiled in VARIANTS:
        r = run(args.model, args.batch_size, args.steps, mask, compiled, args.groups, args.backend)
        steps[name] = r["step_ms"]
        vanilla = VANILLA.get(name)

        def cell(value, spec=""):
            return "-" if value is None else format(value, spec)
        print(f"| {name} | {r['first_s']:.1f} | {r['step_ms']:.1f} | {cell(r['graphs'])} | {cell(r['graph_breaks'])} "
              f"| {cell(r['calls_per_target'], '.2f')} "
              f"| {cell(None if vanilla is None else r['step_ms'] / steps[vanilla], '.3f')} |", flush=True)
    if args.paired:
        paired(args)


def paired(args) -> None:
    """``--paired``: the four variants interleaved step by step on one model (see the docstring)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = gradmask.create_model(args.model, 10)
    handle = gradmask.attach(model, gradmask.GradientMask(groups=args.groups))
    compiled = torch.compile(model, dynamic=False, backend=args.backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(args.batch_size, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch_size,), generator=g)
    done = 0

    def step(mask: bool, compile_: bool) -> float:
        nonlocal done
        handle.enabled = mask
        handle.gradient_mask.inhibition_rate = RATES[done % len(RATES)]
        done += 1
        start = time.process_time()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy((compiled if compile_ else model)(x), y).backward()
        optimizer.step()
        return time.process_time() - start

    for _, mask, compile_ in VARIANTS:  # compile both cache entries, warm up
        for _ in range(3):
            step(mask, compile_)
    calls = handle.stats()[next(iter(handle.targets))]["calls"]
    times = {name: [] for name, _, _ in VARIANTS}
    for round_index in range(args.paired):
        order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
        for name, mask, compile_ in order:
            times[name].append(step(mask, compile_))
    calls = handle.stats()[next(iter(handle.targets))]["calls"] - calls
    handle.remove()
    print(f"\nPaired: {args.paired} rounds of the four variants interleaved on one model (mask calls per target "
          f"and masked step: {calls / (2 * args.paired):.2f})")
    print("| variant | step (ms, CPU, median) | step / vanilla step of the same round (median) |")
    print("|---|---:|---:|")
    for name, _, _ in VARIANTS:
        vanilla = VANILLA.get(name)
        ratio = ("-" if vanilla is None else
                 f"{statistics.median(a / b for a, b in zip(times[name], times[vanilla])):.3f}")
        print(f"| {name} | {1000 * statistics.median(times[name]):.1f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
