"""One step of the probability-flow ODE in the noise level sigma, dx/dsigma = (x - D(x; sigma)) / sigma
(Karras et al. 2022, eq. 3), from a denoiser D: the steps that :func:`ddpm_lib.edm_sample` and
:func:`ddpm_lib.distilled_sample` take, and that :class:`ddpm_lib.DistillationLoss` asks a teacher for.

- Euler (DDIM in sigma): x' = D + (sigma' / sigma) (x - D), a straight move towards D.       (1)
- Heun (EDM, Algorithm 1): Euler, then the mean of the slopes at both ends (second order).
- DPM-Solver++(2M) (Lu et al. 2022): eq. (1) with D extrapolated from the previous step's D.

Every step takes ``(net, x, sigma, sigma_next)`` with per-image noise levels [B] and returns
``(x at sigma_next, D at the start)``; ``net(x, sigma) -> D``.
"""

from __future__ import annotations

import torch

from .sampling import count_call


def check_noise(noise) -> None:
    """A clear error unless ``noise`` is a float tensor [B, C, H, W], a sampler's starting noise."""
    if not isinstance(noise, torch.Tensor) or not noise.dtype.is_floating_point or noise.ndim != 4:
        got = f"{noise.dtype} {list(noise.shape)}" if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"noise must be a float tensor of standard normal images [B, C, H, W], got {got}")


def counted(net):
    """``net(x, sigma) -> D`` as the samplers call it: each call counted as one network evaluation
    (:func:`ddpm_lib.count_nfe`), its output checked against x's shape and returned in x's dtype."""
    def D(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        count_call()
        out = net(x, sigma)
        if out.shape != x.shape:
            raise ValueError(f"the denoiser returned shape {list(out.shape)} for x of shape {list(x.shape)}")
        return out.to(x.dtype)
    return D


def sigma_levels(x: torch.Tensor, *sigmas: float) -> tuple[torch.Tensor, ...]:
    """Each noise level as a tensor [B] for the images ``x`` [B, ...]: in float32, or in float64 for
    float64 images (so the exact Gaussian denoisers of the tests keep their precision)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return tuple(torch.full((len(x),), float(s), device=x.device, dtype=dtype) for s in sigmas)


def euler_update(x: torch.Tensor, D: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Eq. (1) from ``x`` and its denoised estimate ``D``; the noise levels are numbers or tensors [B]."""
    r = torch.as_tensor(sigma_next / sigma, dtype=x.dtype, device=x.device)
    return D + r.view(-1, *([1] * (x.ndim - 1))) * (x - D)  # r: [B, 1, 1, 1] or [1, 1, 1, 1]


def euler_step(net, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple:
    """Eq. (1) with per-image noise levels ``sigma``, ``sigma_next`` [B]; ``net(x, sigma) -> D``.
    Returns (x at sigma_next, D at the start)."""
    D = net(x, sigma).to(x.dtype)
    return euler_update(x, D, sigma, sigma_next), D


def heun_step(net, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple:
    """Heun's method (EDM, Algorithm 1): the Euler step, then the mean of the slopes
    dx/dsigma = (x - D) / sigma at both ends. Images whose step ends at sigma = 0 keep the Euler
    step (the slope there is undefined). Returns (x at sigma_next, D at the start)."""
    x_euler, D = euler_step(net, x, sigma, sigma_next)
    end = sigma_next > 0  # [B]
    if not bool(end.any()):
        return x_euler, D
    s_next = torch.where(end, sigma_next, sigma)  # never evaluate the network at sigma = 0
    view = (-1, *([1] * (x.ndim - 1)))
    d = (x - D) / sigma.view(view)  # [B, C, H, W]
    d_next = (x_euler - net(x_euler, s_next).to(x.dtype)) / s_next.view(view)
    x_heun = x + (sigma_next - sigma).view(view) * (d + d_next) / 2
    return torch.where(end.view(view), x_heun, x_euler), D


class MultistepStep:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in these units: eq. (1) with D replaced by
    D + (D - D_prev) / (2 r), r = h_prev / h, h = ln(sigma / sigma_next), an extrapolation from the
    previous step's D at no extra evaluation (second order). The first step, and a step that ends
    at sigma = 0 (h infinite), are eq. (1). One instance follows one trajectory: it keeps D_prev."""

    def __init__(self):
        self.previous = None  # (D, h) of the last step

    def __call__(self, net, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple:
        D = net(x, sigma).to(x.dtype)
        view = (-1, *([1] * (x.ndim - 1)))
        end = sigma_next > 0  # [B]
        h = torch.log(sigma / torch.where(end, sigma_next, sigma))  # [B]; unused where it ends at 0
        D_eff = D
        if self.previous is not None:
            D_prev, h_prev = self.previous
            D_eff = torch.where(end.view(view), D + (h / (2 * h_prev)).view(view) * (D - D_prev), D)
        self.previous = (D, h)
        return euler_update(x, D_eff, sigma, sigma_next), D


SOLVERS = {"euler": lambda: euler_step, "heun": lambda: heun_step, "dpm++2m": MultistepStep}


def solver_step(solver: str):
    """A fresh step function of ``solver`` for one trajectory: ``step(net, x, sigma, sigma_next)``."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; the solvers are {', '.join(SOLVERS)}")
    return SOLVERS[solver]()
