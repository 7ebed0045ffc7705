"""A small vision transformer (pre-norm blocks, class token), timm's layout at CPU size.

Its blocks output token sequences ``(N, T, D)`` with ``T = 1 + H*W`` (the class token, then the
patches row by row); it states its patch grid the way timm does (``patch_embed.grid_size``,
``num_prefix_tokens``), so :func:`gradmask.attach` masks the blocks on that grid.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .families import DropPath
from .resnet import IMAGENET_MEAN, IMAGENET_STD, Normalize


class PatchEmbed(nn.Module):
    """``(N, 3, S, S)`` -> ``(N, H*W, D)``: non-overlapping ``patch x patch`` patches, a linear
    embedding each (a strided convolution), row-major order; ``grid_size = (S // patch,) * 2``."""

    def __init__(self, image_size: int, patch_size: int, dim: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        self.image_size = image_size
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"this ViT takes {self.image_size}x{self.image_size} images, got "
                             f"{tuple(x.shape[-2:])[0]}x{tuple(x.shape[-2:])[1]}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention over ``(N, T, D)`` (``F.scaled_dot_product_attention``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x = x + drop_path(attn(norm1(x)))``, then
    ``x + drop_path(mlp(norm2(x)))``; ``(N, T, D) -> (N, T, D)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, drop_path: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """``normalize -> patch embedding -> [class token; patches] + position embedding -> blocks ->
    LayerNorm -> fc on the class token``.

    Args:
        image_size, patch_size: square images of ``image_size`` pixels cut into ``patch_size``
            patches (grid ``image_size // patch_size`` squared).
        dim, depth, heads, mlp_ratio: embedding width, number of blocks, attention heads, MLP
            hidden width / dim.
        drop_path: the last block's stochastic depth rate (linear from 0 over the blocks).
    """

    num_prefix_tokens = 1

    def __init__(self, num_classes: int, image_size: int = 32, patch_size: int = 4, dim: int = 96,
                 depth: int = 6, heads: int = 3, mlp_ratio: float = 2.0, drop_path: float = 0.0,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.normalize = Normalize(mean, std)
        self.patch_embed = PatchEmbed(image_size, patch_size, dim)
        tokens = self.num_prefix_tokens + self.patch_embed.grid_size[0] * self.patch_embed.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, rate) for rate in rates])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.normalize(x))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])
