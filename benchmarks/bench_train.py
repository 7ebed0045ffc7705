"""Cost of the data pipeline in the training step: images/second with pre-built batches on the
device against batches from ``TensorLoader`` with batched random crop + flip (what
``gradmask train`` uses for CIFAR-size data), in the same run.

Both variants run the same SGD step (forward, cross-entropy, backward, optimizer) of the same model
on CIFAR-size synthetic images; they alternate in rounds so that drift (other processes on the
cores) hits both alike, warm-up excluded. Two figures:

- pipeline step / pre-built step: the median over rounds of the ratio of the two step times of a
  round. Honest but noisy on a shared machine (a few %).
- loader alone / pre-built step: the time of producing a batch (index, gather, crop, flip, to
  float) without the model, over the median pre-built step. The extra work per step, with far less
  noise.

    python benchmarks/bench_train.py                       # CPU, narrow ResNet-18, batch 128
    python benchmarks/bench_train.py --mask lateral --model resnet18 --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import gradmask
from gradmask.data import RandomCropFlip, TensorLoader, dataset_stats, load_dataset
from gradmask.train.config import MASK_MODES


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet18_narrow")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=2560, help="synthetic 32x32 training images")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--mask", default="none", choices=MASK_MODES)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    ds = load_dataset("synthetic", split="train", n=args.images)
    stats = dataset_stats("synthetic")
    torch.manual_seed(0)
    model = gradmask.create_model(args.model, len(ds.classes), stem="cifar", mean=stats.mean, std=stats.std).to(device)
    if args.mask != "none":
        gradmask.attach(model, gradmask.GradientMask(mode=args.mask))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = TensorLoader(ds.images, ds.labels, args.batch_size, shuffle=True, drop_last=True,
                          augment=RandomCropFlip(padding=4), seed=0, device=device)
    prebuilt = [(x.clone(), y.clone()) for x, y in loader]  # the same kind of batches, made once

    def train_step(x, y):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    epoch = 0
    batches = iter(())

    def next_batch():
        nonlocal epoch, batches
        try:
            return next(batches)
        except StopIteration:
            epoch += 1
            loader.set_epoch(epoch)
            batches = iter(loader)
            return next(batches)

    def run_prebuilt(round_index: int) -> float:
        sync(device)
        start = time.perf_counter()
        for i in range(args.steps):
            train_step(*prebuilt[(round_index * args.steps + i) % len(prebuilt)])
        sync(device)
        return (time.perf_counter() - start) / args.steps

    def run_pipeline() -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(*next_batch())
        sync(device)
        return (time.perf_counter() - start) / args.steps

    def run_loader_alone(n: int = 20) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(n):
            next_batch()
        sync(device)
        return (time.perf_counter() - start) / n

    model.train()
    run_prebuilt(0), run_pipeline()  # warm-up
    pre, pipe, ratios = [], [], []
    for r in range(args.rounds):
        a, b = (run_prebuilt(r), run_pipeline()) if r % 2 == 0 else (None, run_pipeline())
        if a is None:
            a = run_prebuilt(r)
        pre.append(a), pipe.append(b), ratios.append(b / a)
    loader_alone = statistics.median(run_loader_alone() for _ in range(3))

    bs = args.batch_size
    pre_med, pipe_med = statistics.median(pre), statistics.median(pipe)
    print(f"{args.model}, mask {args.mask}, batch {bs} of 32x32 synthetic images, {device} "
          f"({torch.get_num_threads()} threads), {args.rounds} rounds x {args.steps} steps, median:")
    print(f"  pre-built batches on the device : {pre_med * 1e3:7.1f} ms/step  {bs / pre_med:7.0f} images/s")
    print(f"  TensorLoader + crop/flip        : {pipe_med * 1e3:7.1f} ms/step  {bs / pipe_med:7.0f} images/s")
    print(f"  pipeline step / pre-built step  : {statistics.median(ratios):.3f}  "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")
    print(f"  loader alone                    : {loader_alone * 1e3:7.2f} ms/batch = "
          f"{100 * loader_alone / pre_med:.2f}% of a pre-built step")


if __name__ == "__main__":
    main()
