"""What torch.compile does with the mask hooks: graphs, recompiles, compile time, step time.

    python benchmarks/bench_compile.py --model resnet18_narrow --batch-size 32 --steps 5

Four variants, each in a fresh Dynamo state (``torch._dynamo.reset()``) on the same weights and
batch: eager, eager + mask, compiled, compiled + mask (``dynamic=False``, as the engine does). For
each: the first step (compilation included, wall time), the median of ``--steps`` full SGD steps
after two warm-up steps in CPU time of this process (``time.process_time``: on a shared machine
wall time mostly measures the other jobs; run with one thread), and the number of graphs compiled.
Compile times depend on inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``): run with a fresh
one for cold numbers.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import gradmask


def run(model_name: str, batch: int, steps: int, mask: bool, compiled: bool, groups: int) -> dict:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = gradmask.create_model(model_name, 10)
    handle = gradmask.attach(model, gradmask.GradientMask(groups=groups)) if mask else None
    net = torch.compile(model, dynamic=False if mask else None) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def step(clock=time.process_time) -> float:
        start = clock()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        return clock() - start

    first = step(time.perf_counter)
    for _ in range(2):
        step()
    times = [step() for _ in range(steps)]
    counters = torch._dynamo.utils.counters
    result = {"first_s": first, "step_ms": 1000 * statistics.median(times),
              "graphs": counters["stats"].get("unique_graphs", 0),
              "calls_per_target": None if handle is None else
              max(s["calls"] for s in handle.stats().values()) / (3 + steps)}
    if handle is not None:
        handle.remove()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18_narrow")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--groups", type=int, default=4)
    args = parser.parse_args()
    print(f"{args.model}, batch {args.batch_size}, 32x32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| variant | first step (s, wall) | step (ms, CPU) | graphs compiled | mask calls per target and step |")
    print("|---|---:|---:|---:|---:|")
    for name, mask, compiled in [("eager", False, False), ("eager + mask", True, False),
                                 ("compiled", False, True), ("compiled + mask", True, True)]:
        r = run(args.model, args.batch_size, args.steps, mask, compiled, args.groups)
        calls = "-" if r["calls_per_target"] is None else f"{r['calls_per_target']:.2f}"
        print(f"| {name} | {r['first_s']:.1f} | {r['step_ms']:.0f} | {r['graphs']} | {calls} |",
              flush=True)


if __name__ == "__main__":
    main()
