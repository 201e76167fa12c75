"""The probability-flow ODE samplers against the exact answer for Gaussian data.

For pixels x0 ~ N(mu, s^2) the exact denoiser is known (GaussianDenoiser), and the ODE keeps
z = (x_t - sqrt(ab_t) mu) / sqrt(ab_t s^2 + 1 - ab_t) constant along each path: x_t is a fixed
affine function of ab_t, so its distribution stays Gaussian and each path keeps its quantile. The
exact state at index 0 is therefore sqrt(ab_0) mu + z sqrt(ab_0 s^2 + 1 - ab_0), and every sampler
ends with the same map from the state at index 0 to the clean image (x0_hat there). Comparing with
that map applied to the exact state isolates each solver's integration error.
"""

import math

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.timesteps import timestep_grid

MU, S = 0.3, 0.5


def exact_setup(T):
    schedule = dl.cosine_schedule(T)
    model = dl.GaussianDenoiser(schedule, MU, S).double()
    x_T = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ab = schedule.alpha_bars.double()
    z = (x_T - ab[-1].sqrt() * MU) / (ab[-1] * S**2 + 1 - ab[-1]).sqrt()
    at_0 = ab[0].sqrt() * MU + z * (ab[0] * S**2 + 1 - ab[0]).sqrt()
    exact = dl.denoise(model, schedule, at_0, torch.zeros(256, dtype=torch.long)).x0
    return schedule, model, x_T, exact


SAMPLERS = {
    "ddim": (lambda m, s, x, n: dl.ddim_sample(m, s, x, num_steps=n, clip_x0=False, spacing="karras"), 1.0),
    # The exact ODE is unclipped: every solver runs without clipping against it.
    "heun": (lambda m, s, x, n: dl.heun_sample(m, s, x, num_steps=n, spacing="karras", clip_x0=False), 2.0),
    "dpm_solver_2m": (lambda m, s, x, n: dl.dpm_solver_sample(m, s, x, num_steps=n, spacing="karras",
                                                              clip_x0=False), 2.0),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_ode_sampler_converges_at_its_order(name):
    # Error ~ C / N^p: doubling the steps divides it by 2^p. Karras et al.'s grid reaches the
    # asymptotic regime within a few hundred steps; T = 4001 leaves room to double them.
    sample, order = SAMPLERS[name]
    schedule, model, x_T, exact = exact_setup(4001)
    errors = [(sample(model, schedule, x_T, n) - exact).abs().max().item() for n in (81, 161, 321)]
    orders = [math.log2(errors[k] / errors[k + 1]) for k in range(2)]
    assert all(abs(p - order) < 0.15 for p in orders), (errors, orders)
    assert errors[-1] < 0.025


def test_dpm_solver_2m_takes_the_steps_of_algorithm_2_written_out():
    # On a uniform grid of 5 points the ratio r = h_prev / h swings from about 0.3 to about 10, so
    # a wrong r or a wrong coefficient shows. Lu et al. 2022 ("DPM-Solver++"), Algorithm 2, with
    # alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), lambda = log(alpha / sigma).
    schedule, model, x_T, _ = exact_setup(1000)
    grid = timestep_grid(schedule, 5, "uniform")
    a = [float(schedule.sqrt_alpha_bars[i]) for i in grid]
    s = [float(schedule.sqrt_one_minus_alpha_bars[i]) for i in grid]
    lam = [math.log(ai / si) for ai, si in zip(a, s)]
    x, x0_prev = x_T, None
    for k, i in enumerate(grid):
        x0 = dl.denoise(model, schedule, x, torch.full((len(x),), i)).x0
        if k == len(grid) - 1:
            x = x0  # the last step, to sigma = 0, is first order: x = D = x0_hat
            break
        h = lam[k + 1] - lam[k]
        if x0_prev is None:
            D = x0
        else:
            r = (lam[k] - lam[k - 1]) / h
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x = s[k + 1] / s[k] * x - a[k + 1] * (math.exp(-h) - 1) * D
        x0_prev = x0
    ratios = [(lam[k] - lam[k - 1]) / (lam[k + 1] - lam[k]) for k in range(1, len(grid) - 1)]
    assert min(ratios) < 0.5 and max(ratios) > 5
    torch.testing.assert_close(dl.dpm_solver_sample(model, schedule, x_T, num_steps=5, clip_x0=False), x,
                               rtol=1e-9, atol=1e-9)


def test_heun_stays_finite_in_float16():
    # x / alpha would reach |x_T| / 5e-5, beyond float16's largest number, 65504, at the first step.
    schedule = dl.cosine_schedule(1000)
    model = dl.GaussianDenoiser(schedule, MU, S).half()
    x_T = 4 * torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0)).half()
    assert torch.isfinite(dl.heun_sample(model, schedule, x_T, num_steps=10)).all()


def test_first_order_dpm_solver_is_ddim():
    schedule, model, x_T, _ = exact_setup(1000)
    for spacing in ("uniform", "karras"):
        ddim = dl.ddim_sample(model, schedule, x_T, num_steps=15, clip_x0=False, spacing=spacing)
        dpm1 = dl.dpm_solver_sample(model, schedule, x_T, num_steps=15, order=1, spacing=spacing, clip_x0=False)
        # Equal up to float32 rounding: the schedule stores its coefficients in float32, and the two
        # update rules combine them differently.
        torch.testing.assert_close(dpm1, ddim, rtol=1e-6, atol=1e-6)


def test_every_sampler_reports_its_network_evaluations():
    schedule = dl.cosine_schedule(50)
    model = dl.GaussianDenoiser(schedule, MU, S)
    x_T = torch.randn(2, 1, 2, 2)
    runs = {"ddpm": (lambda: dl.ddpm_sample(model, schedule, x_T), 50),
            "ddim": (lambda: dl.ddim_sample(model, schedule, x_T, num_steps=10), 10),
            "heun": (lambda: dl.heun_sample(model, schedule, x_T, num_steps=10), 18),  # 2N - 2
            "dpm": (lambda: dl.dpm_solver_sample(model, schedule, x_T, num_steps=10), 10)}
    for name, (run, nfe) in runs.items():
        with dl.count_nfe() as counter:
            run()
        assert counter.nfe == nfe, name
    run()  # outside the block: nothing counted any more
    assert counter.nfe == 10


def test_target_conversions_invert_each_other_and_match_tweedie():
    schedule = dl.cosine_schedule(100)
    x0 = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    t = torch.tensor([0, 20, 60, 99])
    x_t, eps = dl.q_sample(schedule, x0, t)
    v = dl.v_from_eps(schedule, x_t, t, eps)
    a = schedule.sqrt_alpha_bars.double()[t].view(-1, 1, 1, 1)
    b = schedule.sqrt_one_minus_alpha_bars.double()[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(v, a * eps - b * x0)  # Salimans & Ho 2022
    torch.testing.assert_close(dl.eps_from_v(schedule, x_t, t, v), eps, rtol=1e-6, atol=1e-6)
    # Gaussian data: the exact score of N(sqrt(ab) mu, ab s^2 + 1 - ab) is -(x_t - sqrt(ab) mu) / Var.
    model = dl.GaussianDenoiser(schedule, MU, S).double()
    score = dl.score_from_eps(schedule, t, model(x_t, t))
    ab = schedule.alpha_bars.double()[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(score, -(x_t - ab.sqrt() * MU) / (ab * S**2 + 1 - ab), rtol=1e-5, atol=1e-6)


def test_timestep_grids_are_distinct_descending_and_spaced_as_named():
    schedule = dl.cosine_schedule(1000)
    for spacing in ("uniform", "logsnr", "karras"):
        for n in (2, 10, 50, 500, 1000):
            grid = timestep_grid(schedule, n, spacing)
            assert len(grid) == n and grid[0] == 999 and grid[-1] == 0
            assert all(a > b for a, b in zip(grid, grid[1:])), (spacing, n)
    # log-SNR spacing: 50 steps are, up to rounding to integer indices, equal steps in lambda. (On
    # the cosine schedule lambda falls so fast over its last indices that the first grid points
    # are forced onto neighbouring indices; the linear schedule shows the spacing itself.)
    linear = dl.linear_schedule(1000)
    ab = linear.alpha_bars.double()
    lam = 0.5 * torch.log(ab / (1 - ab))
    gaps = lam[timestep_grid(linear, 50, "logsnr")].diff()[1:-12]  # the last few: indices 1 apart
    assert gaps.std() < 0.05 * gaps.mean().abs()
    # Karras spacing: even steps in sigma^(1/7), from sigma_max = 80 down (after the first point, T-1).
    root = ((1 - ab) / ab).sqrt() ** (1 / 7)
    grid = timestep_grid(linear, 50, "karras")
    assert root[grid[0]] > 80 ** (1 / 7) and abs(root[grid[1]] - 80 ** (1 / 7)) < 0.02
    gaps = root[grid].diff()[1:-12]
    assert gaps.std() < 0.05 * gaps.mean().abs()
    # The cosine schedule's sigma_T is about 2e4: the grid leaves that stretch in one step.
    assert 900 < timestep_grid(schedule, 10, "karras")[1] < 999
    with pytest.raises(ValueError, match="spacing"):
        timestep_grid(schedule, 10, "quadratic")
    with pytest.raises(ValueError, match="num_steps"):
        timestep_grid(schedule, 1001, "karras")


def test_leading_and_trailing_grids_miss_one_end_each():
    # Lin et al. 2024, table 2, for T = 1000 and 10 steps: leading 900, 800, ..., 0 (never T-1);
    # trailing 999, 899, ..., 99 (never 0). Both step by exactly T / n when n divides T.
    schedule = dl.cosine_schedule(1000)
    assert timestep_grid(schedule, 10, "leading") == list(range(900, -1, -100))
    assert timestep_grid(schedule, 10, "trailing") == list(range(999, 98, -100))
    for spacing in ("leading", "trailing"):
        for n in (1, 3, 7, 50, 999, 1000):
            grid = timestep_grid(schedule, n, spacing)
            assert len(grid) == n and 0 <= grid[-1] and grid[0] <= 999, (spacing, n)
            assert all(a > b for a, b in zip(grid, grid[1:])), (spacing, n)
            assert max(grid[k] - grid[k + 1] for k in range(n - 1)) <= -(-1000 // n) if n > 1 else True
        assert timestep_grid(schedule, 1000, spacing) == list(range(999, -1, -1))
    # Every sampler runs on them and still ends at the clean image's scale.
    model = dl.GaussianDenoiser(schedule, MU, S)
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for spacing in ("leading", "trailing"):
        x0 = dl.dpm_solver_sample(model, schedule, x_T, num_steps=20, spacing=spacing, clip_x0=False)
        assert abs(x0.mean().item() - MU) < 0.15 and abs(x0.std().item() - S) < 0.15
