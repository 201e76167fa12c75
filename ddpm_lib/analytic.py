"""Diffusion with a known answer: the exact noise predictor for Gaussian data.

If every pixel of x0 is an independent N(mu, s^2), then x_t = sqrt(ab) x0 + sqrt(1 - ab) eps is
Gaussian with variance V = ab s^2 + 1 - ab and Cov(eps, x_t) = sqrt(1 - ab), so the best possible
noise prediction, E[eps | x_t], is linear in x_t. It stands in for a perfectly trained network:
the chapters use it to watch samplers work before training anything, and as a baseline loss.
"""

from __future__ import annotations

import torch
from torch import nn

from .schedule import NoiseSchedule


class GaussianDenoiser(nn.Module):
    """eps*(x_t, t) = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab), with ab = alpha_bar_t.

    ``mu`` and ``s`` are numbers or tensors that broadcast against one image ``[C, H, W]`` (one
    Gaussian per pixel). Follows the model contract ``(x_t [B, C, H, W], t [B]) -> eps_hat``.
    """

    def __init__(self, schedule: NoiseSchedule, mu, s):
        super().__init__()
        self.register_buffer("alpha_bars", schedule.alpha_bars.clone(), persistent=False)
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32), persistent=False)
        self.register_buffer("s", torch.as_tensor(s, dtype=torch.float32), persistent=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bars[t].to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))  # [B, 1, 1, 1]
        mu, s = self.mu.to(x_t.dtype), self.s.to(x_t.dtype)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / (ab * s**2 + 1 - ab)
