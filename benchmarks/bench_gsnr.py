"""Cost of GSNR: per-sample gradients (torch.func vmap, chunked) against one ordinary batched
backward pass over the same images, measured in the same run.

ResNet-18 (CIFAR stem, 10 classes) in eval mode, N random 32x32 images. Timed, after a small
warm-up of each path:

- backward: forward + backward of the N images (summed gradients, ``--backward-batch`` images
  per pass; default all N in one pass);
- gsnr: :func:`gradmask.robustness.gsnr` over the N images in chunks of ``--chunk`` (per-sample
  gradients of every parameter, float64 moments); with ``--masked`` also with a Gradient Mask
  (the functional mask under vmap).

Prints the seconds and the ratio gsnr / backward (the target is <= ~10x). The per-sample gradients
of one chunk take ``chunk x parameters x 4`` bytes (ResNet-18, chunk 64: about 2.9 GB).

    python benchmarks/bench_gsnr.py                       # 512 images, 2 threads (minutes on CPU)
    python benchmarks/bench_gsnr.py --images 128 --masked
    python benchmarks/bench_gsnr.py --device cuda
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import gradmask
from gradmask.robustness import gsnr


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backward_pass(model, images, labels, batch: int) -> None:
    model.zero_grad(set_to_none=True)
    for i in range(0, images.shape[0], batch):
        F.cross_entropy(model(images[i:i + batch]), labels[i:i + batch], reduction="sum").backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=64, help="GSNR samples per vmap call")
    parser.add_argument("--backward-batch", type=int, default=None, help="images per backward pass (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--masked", action="store_true", help="also time GSNR with a lateral Gradient Mask")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = gradmask.create_model(args.model, 10, stem="cifar").to(device).eval()
    images = torch.rand(args.images, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.images,), device=device)
    batch = args.backward_batch or args.images
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.model} (CIFAR stem, 10 classes, {params / 1e6:.1f} M parameters), {args.images} images 32x32, "
          f"{device}, {torch.get_num_threads()} threads; GSNR chunk {args.chunk} "
          f"(per-sample gradients {args.chunk * params * 4 / 2**30:.1f} GiB per chunk)")

    # warm-up: a few images through each path
    backward_pass(model, images[:4], labels[:4], 4)
    gsnr(model, None, images[:4], labels[:4], chunk_size=4, gradient_mask=None)
    sync(device)

    start = time.perf_counter()
    backward_pass(model, images, labels, batch)
    sync(device)
    t_backward = time.perf_counter() - start
    print(f"backward  (batched, {batch} per pass): {t_backward:8.2f} s")

    start = time.perf_counter()
    gsnr(model, None, images, labels, chunk_size=args.chunk, gradient_mask=None)
    sync(device)
    t_gsnr = time.perf_counter() - start
    print(f"gsnr      (per-sample, chunk {args.chunk}):   {t_gsnr:8.2f} s   ratio {t_gsnr / t_backward:5.1f}x")

    if args.masked:
        gm = gradmask.GradientMask()
        gsnr(model, None, images[:4], labels[:4], chunk_size=4, gradient_mask=gm)
        sync(device)
        start = time.perf_counter()
        gsnr(model, None, images, labels, chunk_size=args.chunk, gradient_mask=gm)
        sync(device)
        t_masked = time.perf_counter() - start
        print(f"gsnr masked (lateral, chunk {args.chunk}):  {t_masked:8.2f} s   ratio {t_masked / t_backward:5.1f}x")


if __name__ == "__main__":
    main()
