"""Noise schedules: the fixed variances beta_1..beta_T of the forward process and what follows from them.

Index convention used everywhere in ``ddpm_lib``: tensor index ``t = 0 .. T-1`` holds diffusion step
``t + 1`` of the papers. So ``alpha_bars[0]`` is alpha_bar_1 (a little noise) and ``alpha_bars[T-1]``
is alpha_bar_T (almost pure noise). ``alpha_bars_prev[0] = 1`` stands for alpha_bar_0 (clean data).

Every quantity is computed once, in float64 (cumulative products of numbers close to 1 lose digits
in float32), and stored in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """A precomputed noise schedule. Build one with :func:`linear_schedule` or :func:`cosine_schedule`.

    All tensors are 1-D float32 of length ``T`` (see the module docstring for the index convention).
    """

    name: str
    betas: torch.Tensor  # beta_t, Ho et al. 2020, eq. 2
    alphas: torch.Tensor  # alpha_t = 1 - beta_t
    alpha_bars: torch.Tensor  # alpha_bar_t = prod_{s<=t} alpha_s, Ho et al. 2020, eq. 4
    alpha_bars_prev: torch.Tensor  # alpha_bar_{t-1}, with alpha_bar_0 = 1
    sqrt_alpha_bars: torch.Tensor  # sqrt(alpha_bar_t): the signal scale of q(x_t | x_0)
    sqrt_one_minus_alpha_bars: torch.Tensor  # sqrt(1 - alpha_bar_t): the noise scale
    posterior_variance: torch.Tensor  # beta_tilde_t, Ho et al. 2020, eq. 7
    posterior_mean_coef1: torch.Tensor  # weight of x_0 in mu_tilde_t, eq. 7
    posterior_mean_coef2: torch.Tensor  # weight of x_t in mu_tilde_t, eq. 7

    def __post_init__(self):
        T = self.betas.shape[0]
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.shape != (T,):
                raise ValueError(f"NoiseSchedule.{f.name} has shape {tuple(value.shape)}, expected ({T},)")

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.betas.shape[0]

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) of q(x_t | x_0) (Kingma et al. 2021)."""
        return self.alpha_bars / (1.0 - self.alpha_bars)

    def to(self, device) -> NoiseSchedule:
        """A copy with every tensor on ``device`` (the schedule itself is immutable)."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    @classmethod
    def from_betas(cls, betas: torch.Tensor, name: str = "custom") -> NoiseSchedule:
        """Derive every schedule quantity from ``betas`` (any float dtype; computed in float64)."""
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie strictly between 0 and 1")

        alphas = 1.0 - betas
        alpha_bars = torch.cumprod(alphas, dim=0)  # Ho et al. 2020, eq. 4
        alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
        # The Gaussian posterior q(x_{t-1} | x_t, x_0), Ho et al. 2020, eqs. 6-7.
        posterior_variance = betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
        coef1 = alpha_bars_prev.sqrt() * betas / (1.0 - alpha_bars)
        coef2 = alphas.sqrt() * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)

        f32 = lambda x: x.to(torch.float32)  # noqa: E731
        return cls(
            name=name,
            betas=f32(betas),
            alphas=f32(alphas),
            alpha_bars=f32(alpha_bars),
            alpha_bars_prev=f32(alpha_bars_prev),
            sqrt_alpha_bars=f32(alpha_bars.sqrt()),
            sqrt_one_minus_alpha_bars=f32((1.0 - alpha_bars).sqrt()),
            posterior_variance=f32(posterior_variance),
            posterior_mean_coef1=f32(coef1),
            posterior_mean_coef2=f32(coef2),
        )


def _check_T(T) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """Betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4).

    The defaults are the paper's values for T = 1000; for much smaller T they destroy too little
    signal (alpha_bar_T stays far from 0), so scale them up if you shorten the chain.
    """
    _check_T(T)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return NoiseSchedule.from_betas(betas, name=f"linear(T={T}, beta_start={beta_start}, beta_end={beta_end})")


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """The cosine schedule of Nichol & Dhariwal 2021, eq. 17.

    alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), and
    beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped to ``max_beta`` so the last steps, where
    f(t) -> 0, do not become singular. The small offset ``s`` keeps beta_1 from being vanishingly small.
    """
    _check_T(T)
    if s < 0 or not 0 < max_beta < 1:
        raise ValueError(f"need s >= 0 and 0 < max_beta < 1, got s={s}, max_beta={max_beta}")
    steps = torch.arange(T + 1, dtype=torch.float64)  # t = 0, 1, ..., T
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2  # Nichol & Dhariwal 2021, eq. 17
    alpha_bar = f / f[0]
    betas = (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
    return NoiseSchedule.from_betas(betas, name=f"cosine(T={T}, s={s}, max_beta={max_beta})")
