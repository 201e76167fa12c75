"""Samplers: run the learned reverse process from pure noise x_T to an image x_0.

The model contract: ``model(x_t [B, C, H, W], t long [B]) -> eps_hat [B, C, H, W]``, a prediction of
the noise in x_t. Both samplers run under ``torch.no_grad()``, draw their noise on ``x_T``'s device in
``x_T``'s dtype (pass a ``torch.Generator`` on that device for reproducible draws), and leave the
model's train/eval mode alone (call ``model.eval()`` first if it has dropout or batch norm).

``callback(t, x, x0_hat)``, if given, is called after every step with the timestep index ``t`` just
denoised, the new sample (x_{t-1} in the papers' numbering) and the model's current guess of x_0.
"""

from __future__ import annotations

import math

import torch

from .diffusion import predict_x0, q_posterior
from .schedule import NoiseSchedule


def _predict_eps(model, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    eps = model(x_t, t)
    if eps.shape != x_t.shape:
        raise ValueError(f"the model returned shape {list(eps.shape)} for x_t of shape {list(x_t.shape)}; "
                         "check x_T's channels and size against the model")
    return eps.to(x_t.dtype)


def _check_x_T(x_T: torch.Tensor) -> None:
    if not isinstance(x_T, torch.Tensor) or not x_T.dtype.is_floating_point:
        raise TypeError("x_T must be a floating-point tensor of Gaussian noise, e.g. torch.randn(B, C, H, W)")
    if x_T.ndim < 2:
        raise ValueError(f"x_T must be batched, [B, C, H, W] for images; got shape {list(x_T.shape)}")


@torch.no_grad()
def ddpm_sample(model, schedule: NoiseSchedule, x_T: torch.Tensor, *, clip_x0: bool = True,
                generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """Ancestral sampling, Ho et al. 2020, Algorithm 2, with sigma_t^2 = beta_tilde_t.

    Each step predicts x0_hat from eps_hat (eq. 15), optionally clips it to the data range [-1, 1],
    and draws x_{t-1} from the posterior q(x_{t-1} | x_t, x0_hat) (eqs. 6-7). Without clipping this
    is Algorithm 2 exactly: mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t) is
    the same number written another way. The last step (index 0) has zero posterior variance, so it
    returns the mean and draws no noise.
    """
    _check_x_T(x_T)
    B = x_T.shape[0]
    x_t = x_T
    for i in reversed(range(schedule.T)):
        t = torch.full((B,), i, device=x_T.device, dtype=torch.long)
        eps_hat = _predict_eps(model, x_t, t)
        x0_hat = predict_x0(schedule, x_t, t, eps_hat)  # Ho et al. 2020, eq. 15
        if clip_x0:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        mean, variance = q_posterior(schedule, x0_hat, x_t, t)  # eqs. 6-7
        if i > 0:
            z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            x_t = mean + variance.sqrt() * z  # Algorithm 2, line 4
        else:
            x_t = mean  # beta_tilde_1 = 0: the final step is deterministic
        if callback is not None:
            callback(i, x_t, x0_hat)
    return x_t


def ddim_timesteps(T: int, num_steps: int) -> list[int]:
    """``num_steps`` timestep indices evenly spread over [0, T-1], in descending order.

    Both ends are included: sampling starts at the noisiest step T-1 and finishes at index 0.
    ``num_steps = T`` gives every step.
    """
    if not isinstance(num_steps, int) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an integer in [1, T={T}], got {num_steps!r}")
    if num_steps == 1:
        return [T - 1]
    # Spacing (T-1)/(num_steps-1) >= 1, so rounding never merges two steps.
    return [math.floor((T - 1) * k / (num_steps - 1) + 0.5) for k in reversed(range(num_steps))]


@torch.no_grad()
def ddim_sample(model, schedule: NoiseSchedule, x_T: torch.Tensor, *, num_steps: int = 50, eta: float = 0.0,
                clip_x0: bool = True, generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """DDIM sampling over a subsequence of timesteps (Song et al. 2021, eq. 12).

    x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma z, with
    sigma = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)
    (eq. 16). ``eta = 0`` is deterministic; ``eta = 1`` with ``num_steps = T`` is ancestral sampling
    with the posterior variance and gives the same samples as :func:`ddpm_sample` for the same
    generator. After the last step alpha_bar_prev = 1, so the result is x0_hat.
    """
    _check_x_T(x_T)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    B = x_T.shape[0]
    steps = ddim_timesteps(schedule.T, num_steps)
    alpha_bars = schedule.alpha_bars.double().tolist()  # scalars in float64, read once
    x_t = x_T
    for k, i in enumerate(steps):
        i_prev = steps[k + 1] if k + 1 < len(steps) else -1
        ab, ab_prev = alpha_bars[i], (alpha_bars[i_prev] if i_prev >= 0 else 1.0)
        t = torch.full((B,), i, device=x_T.device, dtype=torch.long)
        eps_hat = _predict_eps(model, x_t, t)
        x0_hat = predict_x0(schedule, x_t, t, eps_hat)  # Song et al. 2021, eq. 12, "predicted x_0"
        if clip_x0:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
            # Re-derive eps from the clipped x0_hat so that x0_hat and eps_hat describe the same x_t.
            eps_hat = (x_t - math.sqrt(ab) * x0_hat) / math.sqrt(1.0 - ab)
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))  # eq. 16
        direction = math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps_hat  # "direction pointing to x_t"
        x_t = math.sqrt(ab_prev) * x0_hat + direction
        if eta > 0 and i_prev >= 0:
            x_t = x_t + sigma * torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        if callback is not None:
            callback(i, x_t, x0_hat)
    return x_t
