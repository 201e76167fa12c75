"""Which timesteps a sampler visits: the grid is a choice as consequential as the solver.

A grid is a descending list of timestep indices; every sampler takes one last step from its final
index to the clean image. The first three spacings start at the noisiest step T-1 and end at index
0:

- ``"uniform"``: evenly spaced indices (DDIM's choice, Song et al. 2021);
- ``"logsnr"``: evenly spaced in the half log signal-to-noise ratio lambda = log(alpha / sigma),
  the variable in which DPM-Solver takes its steps (Lu et al. 2022);
- ``"karras"``: noise levels sigma = sqrt((1 - alpha_bar) / alpha_bar) spaced evenly in
  sigma^(1/rho), rho = 7, which crowds the steps near the data (Karras et al. 2022, eq. 5).

For these two, steps above ``sigma_max = 80`` (Karras et al.'s largest noise level) are wasted: a
schedule whose alpha_bar_T is tiny (the cosine schedule's is 2e-9, sigma about 2e4) would otherwise
spend most of its grid where the image is pure noise. The grid then starts at T-1 and spaces the
other points from sigma_max down.

Two more, for the grids that other codebases use (the names of Lin et al. 2024, table 2), each
evenly spaced by T / num_steps and missing one end:

- ``"leading"``: indices k T / num_steps, k = 0, ..., num_steps - 1: it ends at index 0 but starts
  below T-1, from a noise level the network never sees paired with pure noise (DDIM's original
  code, and Stable Diffusion's default);
- ``"trailing"``: T-1 down to T / num_steps - 1: it starts at T-1 but leaves the last jump, to
  the clean image, from index T / num_steps - 1.

The network was trained on integer timesteps only, so each grid point is rounded to the nearest
index, and indices that rounding merged are pushed apart to keep every step distinct.
"""

from __future__ import annotations

import math

import numpy as np

from .schedule import NoiseSchedule

SPACINGS = ("uniform", "logsnr", "karras", "leading", "trailing")


def _check_num_steps(T: int, num_steps: int) -> None:
    if not isinstance(num_steps, int) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an integer in [1, T={T}], got {num_steps!r}")


def ddim_timesteps(T: int, num_steps: int) -> list[int]:
    """``num_steps`` timestep indices evenly spread over [0, T-1], in descending order.

    Both ends are included: sampling starts at the noisiest step T-1 and finishes at index 0.
    ``num_steps = T`` gives every step.
    """
    _check_num_steps(T, num_steps)
    if num_steps == 1:
        return [T - 1]
    # Spacing (T-1)/(num_steps-1) >= 1, so rounding never merges two steps.
    return [math.floor((T - 1) * k / (num_steps - 1) + 0.5) for k in reversed(range(num_steps))]


def _distinct(indices: np.ndarray, T: int) -> list[int]:
    """Round descending float indices to distinct integers from T-1 down to 0, moving as few as needed."""
    n = len(indices)
    ints = [int(v) for v in np.rint(indices)]
    ints[0], ints[-1] = T - 1, 0
    for k in range(n - 2, -1, -1):  # from the data end up: each at least one above the next
        ints[k] = max(ints[k], ints[k + 1] + 1)
    ints[0] = T - 1
    for k in range(1, n):  # from the noise end down: each at least one below the previous
        ints[k] = min(ints[k], ints[k - 1] - 1)
    return ints


def timestep_grid(schedule: NoiseSchedule, num_steps: int, spacing: str = "uniform", *, rho: float = 7.0,
                  sigma_max: float = 80.0) -> list[int]:
    """``num_steps`` distinct descending timestep indices in [0, T-1], spaced by ``spacing`` (see above)."""
    T = schedule.T
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    _check_num_steps(T, num_steps)
    if spacing == "leading":  # k T / n, noisiest first
        return [math.floor(k * T / num_steps) for k in reversed(range(num_steps))]
    if spacing == "trailing":  # T - k T / n, shifted down by one to an index
        return [math.floor(T - k * T / num_steps + 0.5) - 1 for k in range(num_steps)]
    if spacing == "uniform" or num_steps in (1, T):
        return ddim_timesteps(T, num_steps)
    sigma = (schedule.sqrt_one_minus_alpha_bars.detach().cpu().double()
             / schedule.sqrt_alpha_bars.detach().cpu().double()).numpy()  # increasing in t

    def level(s):  # a quantity decreasing in t, in which the grid is evenly spaced
        return -np.log(s) if spacing == "logsnr" else -(s ** (1 / rho))  # lambda = -log(sigma)

    levels = level(sigma)
    if sigma[-1] > sigma_max and num_steps > 2:  # T-1, then even steps from sigma_max down
        targets = np.concatenate([[levels[-1]], np.linspace(level(sigma_max), levels[0], num_steps - 1)])
    else:
        targets = np.linspace(levels[-1], levels[0], num_steps)  # noisiest first
    index = np.arange(T, dtype=np.float64)
    # Invert the monotone map index -> level by linear interpolation (np.interp wants it increasing).
    return _distinct(np.interp(targets, levels[::-1], index[::-1]), T)
