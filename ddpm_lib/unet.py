"""The noise-prediction network: a U-Net (Ronneberger et al. 2015) built from ConvNeXt blocks.

"Dual residual": every block has its own residual path, and the U-Net adds long skip connections
that carry each encoder activation across to the decoder stage of the same resolution.

With ``dims = [base, base*m_1, ..., base*m_L]`` the encoder has L levels; level k runs two blocks at
``dims[k]`` channels (storing both outputs as skips) and then changes to ``dims[k+1]`` channels,
halving H and W on every level but the last. The decoder mirrors it: each of its blocks takes the
running activation (``dims[k+1]`` channels) concatenated with a stored skip (``dims[k]`` channels),
so it sees ``dims[k+1] + dims[k]`` input channels. H and W must therefore be divisible by
``2 ** (L - 1)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvNeXtBlock, Downsample, Upsample
from .embedding import SinusoidalEmbedding


class UNet(nn.Module):
    """``UNet(in_channels, base_dim, dim_mults)(x [B, C, H, W], t long [B]) -> eps_hat [B, C, H, W]``.

    With ``num_classes=K`` the network is class-conditional, ``model(x, t, y)``: ``y`` long ``[B]``
    holds a class in 0..K-1, or K, the null class ("no label"), which classifier-free guidance
    needs (Ho & Salimans 2022); a learned embedding of y joins the time embedding. Without ``y``
    every image gets the null class.
    """

    def __init__(self, in_channels: int = 1, base_dim: int = 32, dim_mults=(1, 2, 4), num_classes: int | None = None):
        super().__init__()
        dim_mults = tuple(dim_mults)
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        if not isinstance(base_dim, int) or base_dim < 2 or base_dim % 2:
            raise ValueError(f"base_dim must be an even integer >= 2 (it sizes the time embedding), got {base_dim!r}")
        if not dim_mults or not all(isinstance(m, int) and m >= 1 for m in dim_mults):
            raise ValueError(f"dim_mults must be a non-empty sequence of positive integers, got {dim_mults!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
        # Plain constructor arguments, kept so a checkpoint can rebuild the same network.
        self.config = {"in_channels": in_channels, "base_dim": base_dim, "dim_mults": dim_mults}
        if num_classes is not None:
            self.config["num_classes"] = num_classes
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.divisor = 2 ** (len(dim_mults) - 1)  # total downsampling factor

        dims = [base_dim] + [base_dim * m for m in dim_mults]
        levels = list(zip(dims[:-1], dims[1:]))  # (channels in, channels out) per level
        time_dim = 4 * base_dim
        self.time_mlp = nn.Sequential(
            SinusoidalEmbedding(base_dim),
            nn.Linear(base_dim, time_dim),
            nn.GELU(),
            nn.Linear(time_dim, time_dim),
        )
        # One vector per class and one for the null class K, added to the time embedding.
        self.label_emb = nn.Embedding(num_classes + 1, time_dim) if num_classes is not None else None
        self.stem = nn.Conv2d(in_channels, base_dim, kernel_size=7, padding=3)

        self.down = nn.ModuleList()
        for k, (c_in, c_out) in enumerate(levels):
            last = k == len(levels) - 1
            self.down.append(nn.ModuleList([
                ConvNeXtBlock(c_in, c_in, time_dim),
                ConvNeXtBlock(c_in, c_in, time_dim),
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1) if last else Downsample(c_in, c_out),
            ]))

        mid = dims[-1]
        self.mid = nn.ModuleList([ConvNeXtBlock(mid, mid, time_dim), ConvNeXtBlock(mid, mid, time_dim)])

        self.up = nn.ModuleList()
        for k, (c_in, c_out) in enumerate(reversed(levels)):
            last = k == len(levels) - 1
            self.up.append(nn.ModuleList([
                ConvNeXtBlock(c_out + c_in, c_out, time_dim),  # running activation + skip from the encoder
                ConvNeXtBlock(c_out + c_in, c_out, time_dim),
                nn.Conv2d(c_out, c_in, kernel_size=3, padding=1) if last else Upsample(c_out, c_in),
            ]))

        self.out_block = ConvNeXtBlock(2 * base_dim, base_dim, time_dim)  # + the stem's output
        self.out_conv = nn.Conv2d(base_dim, in_channels, kernel_size=1)

    # Inference on a CPU runs fastest on batches of at most about 128 images: on 2 cores, one pass of
    # the book's U-Net (base_dim 16, channels-last) over 500 images took 1.3 times as long as the
    # same images in slices of at most 128 (bench/sampling_batch.py), likely because the larger
    # activations (25 MB a feature map) fall out of the faster caches. No layer mixes images, so
    # slicing changes results only by rounding; forward hooks on the layers fire once per slice.
    # A positive int, or None to evaluate any batch in one pass.
    cpu_inference_batch: int | None = 128

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"UNet expects images [B, C, H, W], got shape {list(x.shape)}")
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"this UNet was built for {self.in_channels} channel(s), got {C}")
        if H % self.divisor or W % self.divisor:
            raise ValueError(
                f"image size {H}x{W} is not divisible by {self.divisor} = 2**(len(dim_mults) - 1) for "
                f"dim_mults={self.config['dim_mults']}; pad the images or use fewer levels")
        if t.shape != (B,):
            raise ValueError(f"t must have shape [B] = [{B}], got {list(t.shape)}")
        if self.label_emb is not None:
            y = self._labels(y, B, x.device)  # [B]
        elif y is not None:
            raise ValueError("this UNet was built without num_classes, so it takes no labels y")
        n = self.cpu_inference_batch
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"cpu_inference_batch must be a positive integer or None, got {n!r}")
        if n is not None and B > n and x.device.type == "cpu" and not torch.is_grad_enabled():
            k = -(-B // n)  # ceil(B / n) slices of equal size (within one), each at most n
            ys = [None] * k if y is None else y.tensor_split(k)
            return torch.cat([self._forward(*part) for part in zip(x.tensor_split(k), t.tensor_split(k), ys)])
        return self._forward(x, t, y)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The network on checked inputs; ``y`` long [B] for a class-conditional model, else None."""
        emb = self.time_mlp(t)  # [B, 4 * base]
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)  # [B, 4 * base]
        h = self.stem(x)  # [B, base, H, W]
        skips = [h]
        for block1, block2, resample in self.down:
            h = block1(h, emb)
            skips.append(h)
            h = block2(h, emb)
            skips.append(h)
            h = resample(h)  # [B, dims[k+1], H/2, W/2] (same size on the last level)
        for block in self.mid:
            h = block(h, emb)
        for block1, block2, resample in self.up:
            h = block1(torch.cat([h, skips.pop()], dim=1), emb)  # [B, c_out + c_in, ...] -> [B, c_out, ...]
            h = block2(torch.cat([h, skips.pop()], dim=1), emb)
            h = resample(h)  # [B, c_in, 2H, 2W] (same size on the last level)
        h = self.out_block(torch.cat([h, skips.pop()], dim=1), emb)  # [B, 2 * base, H, W] -> [B, base, H, W]
        return self.out_conv(h)  # [B, C, H, W]

    def _labels(self, y, B: int, device) -> torch.Tensor:
        """``y`` checked as long [B] in 0..K; None means the null class K for every image."""
        K = self.num_classes
        if y is None:
            return torch.full((B,), K, dtype=torch.long, device=device)
        if y.shape != (B,) or y.dtype.is_floating_point:
            raise ValueError(f"y must hold integer class labels of shape [B] = [{B}], got {y.dtype} {list(y.shape)}")
        if y.device.type == "cpu" and B and (int(y.min()) < 0 or int(y.max()) > K):
            raise ValueError(f"class labels must lie in [0, {K}] ({K} is the null class), got "
                             f"[{int(y.min())}, {int(y.max())}]")
        return y.to(device=device, dtype=torch.long)
