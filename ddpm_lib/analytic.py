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


class GaussianVelocity(nn.Module):
    """The exact flow-matching velocity for Gaussian data, v*(x, tau) = E[eps - x0 | x_tau = x].

    On the straight path x_tau = (1 - tau) x0 + tau eps with x0 ~ N(mu, s^2) per pixel:
    E[x_tau] = (1 - tau) mu, V = Var(x_tau) = (1 - tau)^2 s^2 + tau^2,
    E[eps - x0] = -mu and Cov(eps - x0, x_tau) = tau - (1 - tau) s^2. Both are jointly Gaussian, so
    the conditional mean is linear:
        v*(x, tau) = -mu + (tau - (1 - tau) s^2) / V * (x - (1 - tau) mu).
    Its ODE keeps z = (x - (1 - tau) mu) / sqrt(V) constant (dV/dtau / 2 = tau - (1 - tau) s^2), so
    noise x_1 = z at tau = 1 arrives at mu + s z at tau = 0: exactly N(mu, s^2).
    Follows the contract of :func:`ddpm_lib.flow.flow_sample`: ``(x, tau [B]) -> v``.
    """

    def __init__(self, mu, s):
        super().__init__()
        if not bool((torch.as_tensor(s) > 0).all()):
            raise ValueError("s must be positive: with s = 0 the data is a point and V vanishes at tau = 0")
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32), persistent=False)
        self.register_buffer("s", torch.as_tensor(s, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        tau = tau.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))  # [B, 1, 1, 1]
        mu, s2 = self.mu.to(x.dtype), self.s.to(x.dtype) ** 2
        variance = (1 - tau) ** 2 * s2 + tau**2
        return -mu + (tau - (1 - tau) * s2) / variance * (x - (1 - tau) * mu)


class GaussianEDMDenoiser(nn.Module):
    """The exact denoiser for Gaussian data in EDM's units, D*(x; sigma) = E[x0 | x0 + sigma n = x].

    With x0 ~ N(mu, s^2) per pixel and x = x0 + sigma n, x0 and x are jointly Gaussian with
    Cov(x0, x) = s^2 and Var(x) = s^2 + sigma^2, so D*(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu).
    Its probability-flow ODE dx/dsigma = (x - D*) / sigma keeps (x - mu) / sqrt(s^2 + sigma^2)
    constant. Follows the contract of :func:`ddpm_lib.edm_sample`: ``(x, sigma [B]) -> D``.
    """

    def __init__(self, mu, s):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32), persistent=False)
        self.register_buffer("s", torch.as_tensor(s, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))  # [B, 1, 1, 1]
        mu, s2 = self.mu.to(x.dtype), self.s.to(x.dtype) ** 2
        return mu + s2 / (s2 + sigma**2) * (x - mu)
