"""Editing images with a trained diffusion model and no retraining: inpainting and SDEdit.

Both reuse the samplers' machinery (:func:`~ddpm_lib.sampling.denoise` and the DDIM update,
:func:`~ddpm_lib.sampling.ddim_update`) and differ only in what they impose on the way down:

- :func:`inpaint` fills in unknown pixels. At every step the known pixels are replaced by the
  known image noised to that step's level, so the network keeps denoising a sample whose known part
  is right (RePaint, Lugmayr et al. 2022). Optional resampling jumps back up one step and denoises
  again, which lets the generated part settle into agreement with the known part.
- :func:`sdedit` turns a rough input (a sketch, a corrupted digit) into a realistic one: noise it
  part of the way, then denoise (SDEdit, Meng et al. 2022). The noise level trades faithfulness to
  the input against realism.

Both are stochastic by default (``eta = 1``, ancestral steps), as in the papers, and take
``generator`` for reproducible draws and the samplers' shared options (:mod:`ddpm_lib.sampling`:
``clip_x0``, ``y`` and ``guidance_scale`` for a class-conditional model, ``amp``).
"""

from __future__ import annotations

import math

import torch

from .diffusion import q_sample
from .sampling import ddim_update, denoise, run_sampler, sampler_options, scales
from .schedule import NoiseSchedule
from .timesteps import ddim_timesteps, timestep_grid


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _check_image(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.ndim != 4:
        raise ValueError(f"{name} must be a float tensor [B, C, H, W] in the model's range [-1, 1]")


@torch.no_grad()
def inpaint(model, schedule: NoiseSchedule, x0_known: torch.Tensor, mask: torch.Tensor, *, num_steps: int = 100,
            eta: float = 1.0, resample: int = 1, generator: torch.Generator | None = None,
            **options) -> torch.Tensor:
    """Complete ``x0_known`` [B, C, H, W] where ``mask`` is 0; keep it where ``mask`` is 1.

    ``mask`` holds 0s and 1s and broadcasts against ``x0_known`` ([1, 1, H, W] for one mask for
    all). Each of the ``num_steps`` steps (an evenly spaced grid) denoises the whole image, takes
    the DDIM step with ``eta`` (1: ancestral, as RePaint), and replaces the known pixels by
    ``x0_known`` noised to the new step's level with eq. 4: x = m * known + (1 - m) * generated.
    The last step imposes ``x0_known`` itself, so the known pixels come back exactly.

    ``resample = r > 1`` (RePaint's resampling, jump length 1): after a step from t to s, noise the
    result back up to t with q(x_t | x_s) and take the step again, r times in all. That costs r
    network evaluations per step and lets the unknown part catch up with what the known part
    implies.
    """
    _check_image(x0_known, "x0_known")
    mask = torch.as_tensor(mask, device=x0_known.device, dtype=x0_known.dtype)
    try:
        torch.broadcast_shapes(mask.shape, x0_known.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {list(mask.shape)} does not broadcast against x0_known "
                         f"{list(x0_known.shape)}") from None
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 (to fill in) and 1 (known)")
    if not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be a positive integer, got {resample!r}")
    options = sampler_options(options)
    update = ddim_update(schedule, eta=eta, generator=generator)
    grid = timestep_grid(schedule, num_steps)
    x = _noise_like(x0_known, generator)  # x_T: pure noise everywhere
    for k, i in enumerate(grid):
        i_prev = grid[k + 1] if k + 1 < len(grid) else -1
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        for r in range(resample):
            generated = update(x, denoise(model, schedule, x, t, **options), t, i, i_prev)
            known = x0_known if i_prev < 0 else q_sample(schedule, x0_known, i_prev, _noise_like(x, generator))[0]
            x_prev = mask * known + (1 - mask) * generated
            if r + 1 < resample and i_prev >= 0:  # back up from i_prev to i: q(x_i | x_i_prev)
                (a, _), (a_prev, _) = scales(schedule, i), scales(schedule, i_prev)
                ratio = (a / a_prev) ** 2  # alpha_bar_i / alpha_bar_prev
                x = math.sqrt(ratio) * x_prev + math.sqrt(1 - ratio) * _noise_like(x, generator)
            else:
                break
        x = x_prev
    return x


@torch.no_grad()
def sdedit(model, schedule: NoiseSchedule, x_guide: torch.Tensor, *, strength: float = 0.5, num_steps: int = 50,
           eta: float = 1.0, generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """Make a realistic image out of ``x_guide`` [B, C, H, W]: noise it, then denoise (SDEdit).

    ``strength`` in [0, 1] is the share of the diffusion to run again: the guide is noised with
    eq. 4 to index t0 = round(strength (T - 1)) and denoised from there over up to ``num_steps``
    evenly spaced steps (DDIM update with ``eta``; 1 is the paper's stochastic reverse process).
    Near 0 the output stays close to the guide (and keeps its flaws); at 1 the guide is all but
    forgotten (sqrt(alpha_bar_T) of it survives) and the output is a fresh sample.
    """
    _check_image(x_guide, "x_guide")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must lie in [0, 1], got {strength}")
    t0 = round(strength * (schedule.T - 1))
    grid = ddim_timesteps(t0 + 1, min(num_steps, t0 + 1))  # evenly spaced from t0 down to 0
    x_t0, _ = q_sample(schedule, x_guide, t0, _noise_like(x_guide, generator))  # eq. 4
    return run_sampler(model, schedule, x_t0, grid, ddim_update(schedule, eta=eta, generator=generator), **options)
