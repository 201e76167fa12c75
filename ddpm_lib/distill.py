"""Progressive distillation (Salimans & Ho 2022): a student learns to take in one step what its
teacher takes in two; round after round, each student teaches the next, halving the steps.

Everything is written in EDM's noise level sigma (:mod:`ddpm_lib.edm`). The deterministic sampler
being distilled is Euler's method on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma,
which is DDIM:

    x' = D + (sigma' / sigma) (x - D),  D = D(x; sigma).                                    (1)

It steps along a *nested* grid: t = k / N for k = N, ..., 0, with
sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho for t > 0 and
sigma(0) = 0, so the grid of 2N steps holds every point of the grid of N (EDM's own grid does not).

The student's target (Salimans & Ho, Algorithm 2, in these units): from x at sigma the teacher takes
two steps of eq. (1), through sigma_mid to x'' at sigma''. For the student to reach x'' in one
step of eq. (1) its denoised estimate must be

    D~ = (x'' - r x) / (1 - r),  r = sigma'' / sigma,                                        (2)

so at sigma'' = 0 (r = 0) the target is the teacher's sample itself. Nothing in (2) asks how the
teacher took its two steps: the first round may distil Heun's method (EDM, Algorithm 1: two
evaluations a step, second order), and its student still samples with Euler's one. For the
teacher's own few-step rows the sampler also runs DPM-Solver++(2M), eq. (1) with an extrapolated D.
The steps themselves live in :mod:`ddpm_lib.steps`, shared with :func:`ddpm_lib.edm_sample`.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from .distributed import unwrap
from .edm import EDMLoss, check_grid
from .sampling import conditioned
from .steps import check_noise, counted, sigma_levels, solver_step


def step_grid(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> list[float]:
    """The ``num_steps + 1`` noise levels sigma(k / N), k = N..0, of the nested grid (module docstring)."""
    check_grid(num_steps, sigma_min, sigma_max, rho)
    a, b = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(a + k / num_steps * (b - a)) ** rho for k in range(num_steps, 0, -1)] + [0.0]


def distillation_target(teacher, x: torch.Tensor, sigma, sigma_mid, sigma_next, *,
                        solver: str = "euler") -> torch.Tensor:
    """The student's denoised target D~ at ``x`` (eq. 2): two teacher steps of ``solver``,
    sigma -> sigma_mid -> sigma_next, each a tensor [B]; ``teacher(x, sigma) -> D``."""
    step = solver_step(solver)
    with torch.no_grad():
        x_next = step(teacher, step(teacher, x, sigma, sigma_mid)[0], sigma_mid, sigma_next)[0]
    r = (sigma_next / sigma).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return (x_next - r * x) / (1 - r)


class DistillationLoss:
    """One round of progressive distillation as an objective for :func:`ddpm_lib.train`: the model,
    the student (an :class:`~ddpm_lib.EDMDenoiser`, usually started as a copy of the teacher),
    learns to take in ``student_steps`` steps of eq. (1) what ``teacher`` takes in twice as many.

    Each image gets a random step k of the student's grid; it is noised to that step's sigma
    (x = x0 + sigma n), the teacher takes its two steps, and the student's D(x; sigma) regresses on
    eq. (2) with EDM's weighting 1 / c_out^2 (:class:`~ddpm_lib.EDMLoss`), which keeps the error of
    every step of unit size. ``guidance_scale`` distils a guided conditional teacher: the student
    gets the labels and learns the guided D at that scale, so it samples with labels and no
    guidance. ``teacher_solver="heun"`` has the teacher take Heun steps (first round only: a
    student of Heun's steps still samples with Euler's).
    """

    def __init__(self, teacher: nn.Module, student_steps: int, *, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, rho: float = 7.0, guidance_scale: float | None = None,
                 teacher_solver: str = "euler"):
        solver_step(teacher_solver)  # a clear error for an unknown name
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a denoiser (an nn.Module), got {type(teacher).__name__}")
        if not isinstance(student_steps, int) or isinstance(student_steps, bool) or student_steps < 1:
            raise ValueError(f"student_steps must be a positive integer, got {student_steps!r}")
        self.sigmas = step_grid(2 * student_steps, sigma_min, sigma_max, rho)  # the teacher's grid
        self.teacher = teacher.eval().requires_grad_(False)
        self.student_steps, self.guidance_scale = student_steps, guidance_scale
        self.teacher_solver = teacher_solver
        self.grid = dict(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)

    def __call__(self, model, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        student = unwrap(model)  # under DistributedDataParallel or torch.compile
        sigma_data = getattr(student, "sigma_data", None)
        if sigma_data is None:
            raise TypeError(f"the student must be an EDMDenoiser, got {type(student).__name__}")
        x0 = batch.images  # [B, C, H, W]
        grid = torch.tensor(self.sigmas, device=x0.device)  # [2N + 1], from sigma_max to 0
        k = 2 * batch.randint(self.student_steps, generator)  # [B]: the student's step starts at grid[k]
        sigma, sigma_mid, sigma_next = grid[k], grid[k + 1], grid[k + 2]  # [B] each
        x = x0 + sigma.view(-1, 1, 1, 1) * batch.randn(generator=generator)
        y = batch.labels if getattr(student, "num_classes", None) is not None else None
        teacher = conditioned(self.teacher, y, self.guidance_scale)
        target = distillation_target(teacher, x, sigma, sigma_mid, sigma_next,
                                     solver=self.teacher_solver)
        D = model(x, sigma, *((y,) if y is not None else ()))
        weight = EDMLoss(weighting="edm").weight(sigma, sigma_data)  # 1 / c_out^2
        return (weight * ((D.float() - target.float()) ** 2).flatten(1).mean(1)).mean()

    def __repr__(self) -> str:  # recorded by checkpoints: a resumed run must have the same teacher
        digest = hashlib.sha256()
        for tensor in self.teacher.state_dict().values():
            digest.update(tensor.detach().cpu().float().numpy().tobytes())
        options = f", guidance_scale={self.guidance_scale}" if self.guidance_scale is not None else ""
        options += f", teacher_solver={self.teacher_solver!r}" if self.teacher_solver != "euler" else ""
        return (f"DistillationLoss(student_steps={self.student_steps}, {self.grid}, "
                f"teacher_sha256={digest.hexdigest()[:12]!r}{options})")


@torch.no_grad()
def distilled_sample(denoiser, noise: torch.Tensor, *, num_steps: int, sigma_min: float = 0.002,
                     sigma_max: float = 80.0, rho: float = 7.0, y: torch.Tensor | None = None,
                     guidance_scale: float | None = None, solver: str = "euler",
                     callback=None) -> torch.Tensor:
    """``num_steps`` steps of ``solver`` on the nested grid from ``sigma_max * noise``: Euler's
    eq. (1) takes one network evaluation a step (a distilled student, or its teacher at twice the
    steps), as does ``"dpm++2m"`` (:class:`MultistepStep`); Heun's two (one for the last step).
    ``callback(sigma, x_next, x0_hat)`` after every step."""
    check_noise(noise)
    step, sigmas = solver_step(solver), step_grid(num_steps, sigma_min, sigma_max, rho)
    D = counted(conditioned(denoiser, y, guidance_scale))  # D(x, sigma [B])
    x = sigma_max * noise
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        s, s_next = sigma_levels(x, sigma, sigma_next)  # [B] each
        x, x0_hat = step(D, x, s, s_next)
        if callback is not None:
            callback(sigma, x, x0_hat)
    return x
