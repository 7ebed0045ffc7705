"""``TensorLoader``: batches from a small dataset held whole on the training device.

The dataset stays a uint8 tensor (N, 3, H, W) on the device; each epoch draws a
seeded permutation (seed + epoch, like ``DistributedSampler``), takes this rank's
shard, and yields ``(images float (B,3,H,W) in [0,1], labels int64 (B,))`` on the
device with the augmentation applied to the whole batch.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from .augment import to_float
from .dataset import ImageDataset

__all__ = ["TensorLoader"]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class TensorLoader:
    """Iterate over an in-memory dataset in device-side batches.

    images: uint8 (N,3,H,W) (or float in [0,1]); labels: int64 (N,).
    batch_size: per rank.  shuffle: seeded permutation per epoch (else in order).
    drop_last: drop this rank's final incomplete batch.
    augment: ``augment(x_uint8_batch, generator) -> float batch`` (e.g.
      ``augment.RandomCropFlip()``); None converts to float only.
    seed: permutation of epoch e uses seed + e; augmentation uses its own stream
      derived from (seed, epoch, rank).  Call :meth:`set_epoch` every epoch.
    rank / world_size: each rank gets ``ceil(N / world_size)`` indices, shard
      ``perm[rank::world_size]`` of the permutation padded by repeating its head
      (as DistributedSampler does), so shards are disjoint when N divides evenly.
    device: where the data are moved once (default: where they already are).
    return_index: also yield the int64 (B,) dataset indices of the batch
      (e.g. to look up boxes).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: Optional[Augment] = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: Optional[torch.device | str] = None,
        dtype: torch.dtype = torch.float32,
        return_index: bool = False,
    ) -> None:
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
        if images.shape[0] == 0:
            raise ValueError("cannot build a TensorLoader over an empty dataset")
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        self.images, self.labels = images, labels.to(torch.int64)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.seed, self.rank, self.world_size = augment, int(seed), rank, world_size
        self.dtype, self.return_index = dtype, return_index
        self.epoch = 0

    @classmethod
    def from_dataset(cls, ds: ImageDataset, batch_size: int, **kw) -> "TensorLoader":
        """``TensorLoader(ds.images, ds.labels, batch_size, **kw)``."""
        return cls(ds.images, ds.labels, batch_size, **kw)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before drop_last)."""
        return math.ceil(self.images.shape[0] / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation / augmentation stream of ``epoch``."""
        self.epoch = int(epoch)

    def indices(self) -> torch.Tensor:
        """This rank's int64 (num_samples,) dataset indices for the current epoch (CPU)."""
        n = self.images.shape[0]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:
            perm = torch.cat([perm] * math.ceil(total / n))[:total]
        return perm[self.rank : total : self.world_size]

    def _aug_generator(self) -> torch.Generator:
        ss = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch, self.rank, 0xA06])
        g = torch.Generator(device=self.device)
        g.manual_seed(int(ss.generate_state(1, np.uint64)[0] & 0x7FFFFFFFFFFFFFFF))
        return g

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        idx_all = self.indices().to(self.device)
        gen = self._aug_generator() if self.augment is not None else None
        bs = self.batch_size
        stop = len(self) * bs
        for start in range(0, min(stop, idx_all.numel()), bs):
            idx = idx_all[start : start + bs]
            x = self.images.index_select(0, idx)
            y = self.labels.index_select(0, idx)
            x = self.augment(x, gen) if self.augment is not None else to_float(x, self.dtype)
            yield (x, y, idx) if self.return_index else (x, y)

    def __repr__(self) -> str:
        return (
            f"TensorLoader(n={self.images.shape[0]}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, augment={self.augment!r}, rank={self.rank}/{self.world_size}, "
            f"device={self.device})"
        )
