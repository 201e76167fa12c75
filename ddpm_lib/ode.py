"""Samplers for the probability-flow ODE: Heun (Karras et al. 2022) and DPM-Solver++ (Lu et al. 2022).

Deterministic sampling solves an ODE whose solutions carry the noise distribution onto the data
distribution (Song et al. 2021b). In the variables of Karras et al. 2022 (the book's notation page),
x_tilde = x_t / sqrt(alpha_bar_t) and the noise level sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t),
the forward process reads x_tilde = x_0 + sigma eps, and the ODE is simply

    d x_tilde / d sigma = eps_hat(x_t, t)                               (Karras et al. 2022, eq. 4)

DDIM with eta = 0 is Euler's method for this ODE; Heun's method adds a corrector and is second
order. DPM-Solver++ instead integrates the linear part exactly in lambda = -log sigma (half the
log-SNR) and extrapolates the network's x0_hat from the last two steps (2M, second order).

Both run on a grid of the model's own discrete timesteps (:func:`~ddpm_lib.timesteps.timestep_grid`)
and call the network through :func:`~ddpm_lib.sampling.denoise`, like every sampler.
"""

from __future__ import annotations

import math

import torch

from .sampling import denoise, run_sampler, sampler_options, scales
from .schedule import NoiseSchedule
from .timesteps import timestep_grid


@torch.no_grad()
def heun_sample(model, schedule: NoiseSchedule, x_T: torch.Tensor, *, num_steps: int = 18, spacing: str = "uniform",
                callback=None, **options) -> torch.Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1).

    Between two grid points it takes an Euler step, evaluates the network at the end, and replaces
    the slope by the average of the two; the last step, down to sigma = 0, is a plain Euler step
    (Algorithm 1, line 7). So is the first, out of the noisiest timestep: there sigma can be huge
    (about 2e4 at T under the cosine schedule, against Karras et al.'s 80), and the trapezoid would
    multiply the difference of two slopes by it. That makes 2 * num_steps - 2 network evaluations
    (1 for a single step). ``options``: the samplers' shared options (:mod:`ddpm_lib.sampling`);
    on ``clip_x0`` see :func:`~ddpm_lib.ode.dpm_solver_sample`.
    """
    options = sampler_options(options)  # the second evaluation of a step takes them too
    grid = timestep_grid(schedule, num_steps, spacing)

    def update(x_t, prediction, t, i, i_prev):
        (a, s), (a_next, s_next) = scales(schedule, i), scales(schedule, i_prev)
        # In x_tilde = x / alpha the step is x_tilde + (sigma_next - sigma) eps (eq. 4), with
        # sigma = s / a. Multiplied out in x, it never forms x / alpha, which overflows float16
        # at the noisiest steps (alpha = 5e-5).
        if i_prev < 0:
            return prediction.x0  # Euler down to sigma = 0 lands on x0_hat: x / a - (s / a) eps
        scale = a_next / a
        h = s_next - scale * s  # a_next (sigma_next - sigma)
        euler = scale * x_t + h * prediction.eps  # [B, C, H, W]
        if i == grid[0]:
            return euler
        slope_next = denoise(model, schedule, euler, torch.full_like(t, i_prev), **options).eps
        return scale * x_t + h * 0.5 * (prediction.eps + slope_next)  # the trapezoid

    return run_sampler(model, schedule, x_T, grid, update, callback=callback, **options)


@torch.no_grad()
def dpm_solver_sample(model, schedule: NoiseSchedule, x_T: torch.Tensor, *, num_steps: int = 20, order: int = 2,
                      spacing: str = "uniform", callback=None, **options) -> torch.Tensor:
    """DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", Algorithm 2), multistep, order 1 or 2.

    With h = lambda_next - lambda and D the data prediction, one step is

        x_next = (sigma_next / sigma_t) x_t - alpha_next (exp(-h) - 1) D          (eq. 9 of the paper)

    Order 1 takes D = x0_hat, which is DDIM with eta = 0 written in other variables. Order 2 (2M)
    takes D = (1 + 1 / (2r)) x0_hat - 1 / (2r) x0_hat_prev, r = h_prev / h: a linear
    extrapolation of x0_hat in lambda, at no extra network evaluation. The first step has no
    previous x0_hat and the last one (to the data, h infinite) no use for one: both are first order.
    One network evaluation per grid point: num_steps in all. ``options``: the samplers' shared
    options (:mod:`ddpm_lib.sampling`).

    ``clip_x0`` (on by default, as in every sampler) clips x0_hat to the data range and re-derives
    eps from it (:func:`~ddpm_lib.sampling.denoise`), so the solver follows the clipped ODE. The
    exact ODE is unclipped (pass False to check a solver against it), but with a trained network
    its first step, out of t = T, divides the error of eps_hat by sqrt(alpha_bar_T) (4.9e-5 for
    the cosine schedule), and measured in the sampler chapter, the book's model then draws digits
    several times further from real ones by FD.
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    history = []  # (lambda, x0_hat) of the previous grid point

    def update(x_t, prediction, t, i, i_prev):
        (a, s), (a_next, s_next) = scales(schedule, i), scales(schedule, i_prev)
        lam = math.log(a / s)
        D = prediction.x0
        if i_prev < 0:
            return D  # sigma_next = 0: exp(-h) = 0 and x_next = D, the current x0_hat
        h = math.log(a_next / s_next) - lam
        if order == 2 and history:
            lam_prev, x0_prev = history[-1]
            r = (lam - lam_prev) / h
            D = (1 + 1 / (2 * r)) * prediction.x0 - 1 / (2 * r) * x0_prev
        history[:] = [(lam, prediction.x0)]
        return (s_next / s) * x_t - a_next * math.expm1(-h) * D

    return run_sampler(model, schedule, x_T, timestep_grid(schedule, num_steps, spacing), update, callback=callback,
                       **options)
