"""Sinusoidal embedding of the diffusion timestep (Vaswani et al. 2017, Sec. 3.5).

The network is shared across all noise levels, so it must be told which one it is looking at. A
scalar t becomes a vector of sines and cosines at geometrically spaced frequencies: nearby
timesteps get similar vectors, distant ones nearly orthogonal vectors, and no parameters are learned.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Map timesteps ``[B]`` to embeddings ``[B, dim]``: ``[sin(t w_0), ..., sin(t w_{d/2-1}), cos(t w_0), ...]``.

    The frequencies are w_k = max_period^(-k / (dim/2)), k = 0 .. dim/2 - 1: wavelengths from 2 pi
    (one step) up to almost 2 pi * max_period, so every t in 0..T-1 gets a distinct code.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even integer >= 2 (half sines, half cosines), got {dim!r}")
        if max_period <= 1:
            raise ValueError(f"max_period must be > 1, got {max_period}")
        self.dim = dim
        self.max_period = max_period
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        # A buffer follows the module across devices but is not a parameter and not saved.
        self.register_buffer("freqs", freqs.to(torch.float32), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 1:
            raise ValueError(f"expected timesteps of shape [B], got {list(t.shape)}")
        angles = t.to(torch.float32)[:, None] * self.freqs[None, :]  # [B, dim/2]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)  # [B, dim]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}"
