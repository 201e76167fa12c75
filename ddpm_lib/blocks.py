"""Building blocks of the U-Net: a ConvNeXt-style residual block and the two resampling layers."""

from __future__ import annotations

import torch
from einops.layers.torch import Rearrange
from torch import nn

from .precision import float32_on_cpu


class ConvNeXtBlock(nn.Module):
    """A residual block in the spirit of ConvNeXt (Liu et al. 2022), with a timestep injection.

    x -> 7x7 depthwise conv (large receptive field, cheap) -> + time embedding, projected to one
    value per channel and broadcast over H and W -> GroupNorm -> 3x3 conv up to ``out_channels * mult``
    channels -> GELU -> GroupNorm -> 3x3 conv down to ``out_channels``; plus a residual path (a 1x1 conv
    when the channel count changes). ``[B, in_channels, H, W] -> [B, out_channels, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int | None = None, mult: int = 2):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("mult", mult)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size=7, padding=3, groups=in_channels)
        self.time_proj = nn.Sequential(nn.GELU(), nn.Linear(time_dim, in_channels)) if time_dim else None
        hidden = out_channels * mult
        self.body = nn.Sequential(
            nn.GroupNorm(1, in_channels),  # one group: normalise over (C, H, W); ConvNeXt normalises over C
            nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1),
            nn.GELU(),
            nn.GroupNorm(1, hidden),
            nn.Conv2d(hidden, out_channels, kernel_size=3, padding=1),
        )
        same = in_channels == out_channels
        self.residual = nn.Identity() if same else nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"ConvNeXtBlock expects {self.in_channels} input channels, got {C}")
        # Under CPU autocast this layer runs in float32: its bf16 backward is 2x slower there
        # (bench/cpu_layers.py). Elsewhere it runs like every other layer.
        h = float32_on_cpu(self.depthwise, x)  # [B, C_in, H, W]
        if self.time_proj is not None:
            if t_emb is None:
                raise ValueError("this block was built with time_dim, so it needs a time embedding")
            h = h + self.time_proj(t_emb)[:, :, None, None]  # [B, C_in, 1, 1] broadcast over H, W
        return self.body(h) + self.residual(x)  # [B, C_out, H, W]


class Downsample(nn.Module):
    """Halve H and W without throwing pixels away: space-to-depth, then a 1x1 conv.

    Each 2x2 patch is folded into the channel axis, ``[B, C, H, W] -> [B, 4C, H/2, W/2]``, and the
    1x1 conv mixes those 4C channels down to ``out_channels``. (The einops pattern must move p1, p2 *into*
    the channels; the reverse pattern is depth-to-space, which doubles H and W instead.)
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.space_to_depth = Rearrange("b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2)
        self.proj = nn.Conv2d(4 * in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"Downsample expects {self.in_channels} input channels, got {C}")
        if H % 2 or W % 2:
            raise ValueError(f"Downsample needs an even height and width, got {H}x{W}")
        return self.proj(self.space_to_depth(x))  # [B, 4C, H/2, W/2] -> [B, out_channels, H/2, W/2]


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv to smooth the blocky copy.

    ``[B, in_channels, H, W] -> [B, out_channels, 2H, 2W]``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"Upsample expects {self.in_channels} input channels, got {C}")
        return self.conv(self.up(x))  # [B, C, 2H, 2W] -> [B, out_channels, 2H, 2W]
