"""Cost of the Gradient Mask: training-step time and peak memory against the vanilla step.

Runs a full SGD step (forward, backward, optimizer) of ResNet-18 (CIFAR stem, 100 classes) with
each mask variant and without a mask, interleaved in rounds so that drift hits all variants
alike, warm-up excluded. Two figures per variant:

- step / vanilla: the median over rounds of (variant step time / vanilla step time of the same
  round). Honest but noisy on a shared 2-core machine (a few % between rounds).
- hooks / vanilla: the time of the mask hooks alone (mask and kept-count bookkeeping), run on the
  gradients that one real step delivered to the targets, divided by a vanilla step timed just
  before them; the median over rounds. This is the extra work the mask adds to a step, measured
  with far less noise.
- in-step hooks / vanilla: the time spent inside the hooks during the timed masked steps
  themselves (each hook call timed where the backward pass makes it, between the real backward
  operations, by tensor hooks registered just before and just after the mask's: :class:`HookTimer`;
  CPU: wall time, CUDA: events on the stream, i.e. the GPU time of the hook's kernels and of any
  wait for their launch), divided by the vanilla step of the same round; the median over rounds.
  The same work as the line above, in its real surroundings.

Peak memory of a step is measured per variant in a fresh subprocess (CPU: peak RSS during the
steps (VmHWM, reset first) minus RSS before them, with glibc's mmap threshold fixed so that RSS
follows live tensors; CUDA: max_memory_allocated).

    python benchmarks/bench_mask.py                      # CPU, 2 threads, batch 64
    python benchmarks/bench_mask.py --device cuda --batch-size 128 --bf16 --channels-last
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import gradmask

VARIANTS = {
    "vanilla": None,
    "lateral": dict(mode="lateral"),
    "norm": dict(mode="norm"),
    "pixel": dict(mode="pixel"),
    "lateral-full-kernel": dict(mode="lateral", kernel_size=None),
}


def build(args):
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = gradmask.create_model(args.model, args.num_classes, stem="cifar").to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.rand(args.batch_size, 3, 32, 32, device=device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    return model, optimizer, images, labels


def step(model, optimizer, images, labels, args):
    with torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16):
        loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def attach(model, variant):
    config = VARIANTS[variant]
    return None if config is None else gradmask.attach(model, gradmask.GradientMask(**config))


def timer(args):
    if args.device_type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        return lambda: (end.record(), torch.cuda.synchronize(), start.elapsed_time(end) / 1e3)[-1]
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


class HookTimer:
    """Times the gradient mask's whole tensor hook at every target where the backward pass runs it:
    a tensor hook registered just before the mask's marks the start, one registered just after
    marks the end (a tensor's hooks run in registration order; see :func:`attach_timed`). CUDA:
    events on the current stream (the GPU time between them: the hook's kernels and any wait for
    their launch); CPU: wall time. The mask's ``apply`` calls are counted between each pair, so a
    broken order is detected (``order_ok``) instead of timing something else."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.pairs: list = []
        self.open: dict = {}
        self.applies = 0
        self.order_ok = True

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self, name: str, grad: torch.Tensor) -> None:
        self.open[name] = (self._mark(), self.applies)

    def end(self, name: str, grad: torch.Tensor) -> None:
        opened = self.open.pop(name, None)
        if opened is None or self.applies != opened[1] + 1:
            self.order_ok = False
            return
        self.pairs.append((opened[0], self._mark()))

    def take_seconds(self) -> float:
        """Seconds inside the hooks since the last call (CUDA: call after a synchronize)."""
        if self.cuda:
            total = sum(start.elapsed_time(end) for start, end in self.pairs) / 1e3
        else:
            total = sum(end - start for start, end in self.pairs)
        self.pairs = []
        return total


def _tensor_hook_on_outputs(module, name: str, function):
    """A forward hook registering ``function(name, grad)`` on the module's output (run eagerly under
    torch.compile, like the mask's own hook); returns the removable handle."""
    eager = torch.compiler.disable(function)

    def forward_hook(mod, inputs, output):
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(functools.partial(eager, name))
    return module.register_forward_hook(forward_hook)


def attach_timed(model, gradient_mask: gradmask.GradientMask, timer: HookTimer):
    """``gradmask.attach(model, gradient_mask)`` (default targets) with ``timer``'s hooks around the
    mask's at every target. Returns ``(mask handle, the timer's removable hooks)``."""
    targets = gradmask.default_targets(model)
    hooks = [_tensor_hook_on_outputs(module, name, timer.start) for name, module in targets.items()]
    handle = gradmask.attach(model, gradient_mask)
    mask_gradient = handle._mask_gradient  # the tensor hook (looked up at every forward)

    def counted(name, grid, grad):
        timer.applies += 1
        return mask_gradient(name, grid, grad)

    handle._mask_gradient = counted
    hooks += [_tensor_hook_on_outputs(module, name, timer.end) for name, module in targets.items()]
    return handle, hooks


def time_variants(args) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per variant and round: ``(seconds per step, seconds per step spent in the hooks)``."""
    model, optimizer, images, labels = build(args)
    times = {v: [] for v in args.variants}
    in_hooks = {v: [] for v in args.variants}
    for round_index in range(args.rounds + 1):  # round 0 is warm-up, not recorded
        for variant in args.variants:
            hook_timer = HookTimer(args.device_type == "cuda")
            handle, hooks = (None, []) if VARIANTS[variant] is None else attach_timed(
                model, gradmask.GradientMask(**VARIANTS[variant]), hook_timer)
            step(model, optimizer, images, labels, args)  # settle caches for this variant
            if args.device_type == "cuda":
                torch.cuda.synchronize()
            hook_timer.take_seconds()
            elapsed = timer(args)
            for _ in range(args.steps):
                step(model, optimizer, images, labels, args)
            seconds = elapsed() / args.steps  # synchronizes on CUDA
            spent = hook_timer.take_seconds() if hook_timer.order_ok else float("nan")
            for hook in hooks:
                hook.remove()
            if handle is not None:
                handle.remove()
            if round_index:
                times[variant].append(seconds)
                in_hooks[variant].append(spent / args.steps)
    return times, in_hooks


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def hook_ratios(args) -> dict[str, list[tuple[float, float]]]:
    """Per round: ``(time of each variant's hooks, time of one vanilla step)``, measured back to
    back so that the machine's drift hits both alike. The hooks run on the gradients one real step
    delivered to the targets, through the whole tensor hook (mask and kept-count bookkeeping)."""
    model, optimizer, images, labels = build(args)
    grads = []  # the gradients one real step delivers to the default targets, in backward order
    recording = [_tensor_hook_on_outputs(module, name, lambda name, grad: grads.append(grad.detach().clone()))
                 for name, module in gradmask.default_targets(model).items()]
    step(model, optimizer, images, labels, args)
    for hook in recording:
        hook.remove()
    masked = {}
    for variant in args.variants:
        if VARIANTS[variant] is not None:
            masked[variant] = gradmask.attach(copy.deepcopy(model), gradmask.GradientMask(**VARIANTS[variant]))
    result = {variant: [] for variant in args.variants}
    for _ in range(args.rounds * args.steps + 1):
        elapsed = timer(args)
        step(model, optimizer, images, labels, args)
        vanilla = elapsed()
        for variant in args.variants:
            if variant not in masked:
                result[variant].append((0.0, vanilla))
                continue
            target = next(iter(masked[variant].targets))
            elapsed = timer(args)
            for grad in grads:
                masked[variant]._mask_gradient(target, None, grad)
            result[variant].append((elapsed(), vanilla))
    return {variant: pairs[1:] for variant, pairs in result.items()}  # warm-up round left out


def child_memory(args) -> None:
    """Print the peak memory of ``args.steps`` steps of one variant (run in a fresh process)."""
    model, optimizer, images, labels = build(args)
    handle = attach(model, args.child)
    if args.device_type == "cuda":
        step(model, optimizer, images, labels, args)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(args.steps):
            step(model, optimizer, images, labels, args)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        step(model, optimizer, images, labels, args)
        before = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        for _ in range(args.steps):
            step(model, optimizer, images, labels, args)
        peak = _status_bytes("VmHWM") - before
    del handle
    print(json.dumps({"variant": args.child, "peak_bytes": peak}))


def memory_variants(args) -> dict[str, int]:
    peaks = {}
    for variant in args.variants:
        command = [sys.executable, __file__, "--child", variant] + args.passthrough
        # A fixed mmap threshold stops glibc from keeping freed tensors in its heap, so peak
        # RSS follows the peak of live tensors rather than the allocator's caching.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        peaks[variant] = json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]
    return peaks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", help="write the raw measurements here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.variants = args.variants.split(",")
    if "vanilla" not in args.variants:
        args.variants.insert(0, "vanilla")
    args.device_type = torch.device(args.device).type
    args.passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    torch.set_num_threads(args.threads)
    if args.child:
        return child_memory(args)

    times, in_hooks = time_variants(args)
    hooks = hook_ratios(args)
    peaks = {} if args.no_memory else memory_variants(args)
    print(f"# {args.model}, batch {args.batch_size}, {args.device}"
          f"{' bf16' if args.bf16 else ''}{' channels_last' if args.channels_last else ''}, "
          f"{args.threads} threads, torch {torch.__version__}; median of {args.rounds} rounds x {args.steps} steps")
    print("| variant | step (ms) | step / vanilla | hooks (ms) | hooks / vanilla step | in-step hooks / vanilla step "
          "| peak memory (MiB) | memory / vanilla |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in args.variants:
        t = statistics.median(times[variant])
        paired = statistics.median(a / b for a, b in zip(times[variant], times["vanilla"]))
        mem = peaks.get(variant)
        mem_cols = (f"{mem / 2**20:.0f} | {mem / peaks['vanilla']:.3f}" if mem is not None else "- | -")
        hook_ms = statistics.median(h for h, _ in hooks[variant]) * 1e3
        hook_ratio = statistics.median(h / v for h, v in hooks[variant])
        in_step = f"{statistics.median(h / v for h, v in zip(in_hooks[variant], times['vanilla'])):.3f}"
        print(f"| {variant} | {t * 1e3:.0f} | {paired:.3f} | {hook_ms:.1f} | {hook_ratio:.3f} | {in_step} "
              f"| {mem_cols} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "passthrough"},
                       "times": times, "in_step_hook_seconds": in_hooks,
                       "hook_and_vanilla_seconds": hooks, "peak_bytes": peaks}, fh, indent=1)


if __name__ == "__main__":
    main()
