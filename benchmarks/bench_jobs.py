"""What ``--jobs`` buys: the same comparison trained one run at a time and N runs at a time.

    OMP_NUM_THREADS=2 python benchmarks/bench_jobs.py --jobs 2 --train-limit 4000 --seeds 2

Both arms run ``gradmask.compare`` with the same runs (none and lateral x ``--seeds`` on the
synthetic data, narrow ResNet-18, one epoch) into fresh folders. The arms take turns, ``--rounds``
times, and each arm's median is kept. ``jobs=1`` uses every torch thread of this process; ``jobs=N``
gives each worker process its share (at least one). The printout gives the wall time, the training
images per second and the ratio to ``jobs=1`` measured in the same invocation. Run it on an idle
machine: wall time is what it measures.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gradmask.compare import compare
from gradmask.train import TrainConfig


def one_arm(base: TrainConfig, seeds: int, jobs: int, out: Path) -> float:
    start = time.perf_counter()
    compare(base, ("none", "lateral"), seeds=seeds, out=out, log=None, jobs=jobs)   # jobs > 1: worker processes
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    base = TrainConfig.from_dict(dict(
        dataset="synthetic", model="resnet18_narrow", groups=4, epochs=1, batch_size=args.batch_size,
        lr=0.05, schedule="triangle", warmup_epochs=0.3, augment="none", train_limit=args.train_limit,
        test_limit=500, synthetic_train=args.train_limit, synthetic_test=500, gsnr_every=0,
        progress=False, device="cpu"))
    runs = 2 * args.seeds
    print(f"torch threads {torch.get_num_threads()}; {runs} runs of {args.train_limit} images x 1 epoch; "
          f"jobs=1 vs jobs={args.jobs} ({max(1, torch.get_num_threads() // args.jobs)} thread(s) per worker), "
          f"{args.rounds} rounds")
    walls: dict[int, list[float]] = {1: [], args.jobs: []}
    with tempfile.TemporaryDirectory() as tmp:
        compare(base.replace(train_limit=256, test_limit=64), ("none",), seeds=1, out=Path(tmp) / "warm",
                log=None)                                      # data cache and imports warm
        for r in range(args.rounds):
            for jobs in (1, args.jobs) if r % 2 == 0 else (args.jobs, 1):
                walls[jobs].append(one_arm(base, args.seeds, jobs, Path(tmp) / f"r{r}-j{jobs}"))
    images = runs * args.train_limit
    one = statistics.median(walls[1])
    for jobs, times in walls.items():
        wall = statistics.median(times)
        print(f"jobs={jobs}: wall {wall:.1f} s (rounds {', '.join(f'{t:.1f}' for t in times)}), "
              f"{images / wall:.0f} training images per wall second, {one / wall:.2f}x jobs=1")


if __name__ == "__main__":
    main()
