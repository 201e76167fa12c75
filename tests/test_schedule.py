import dataclasses
import math

import pytest
import torch

from ddpm_lib import NoiseSchedule, cosine_schedule, linear_schedule


def cosine_alpha_bar(t, T, s=0.008):
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T) + s)/(1 + s) * pi/2)."""
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0)


@pytest.mark.parametrize("T", [10, 1000])
def test_cosine_schedule_follows_eq_17(T):
    sched = cosine_schedule(T=T)
    expected_betas = [min(1 - cosine_alpha_bar(t, T) / cosine_alpha_bar(t - 1, T), 0.999) for t in range(1, T + 1)]
    torch.testing.assert_close(sched.betas, torch.tensor(expected_betas, dtype=torch.float32), rtol=1e-5, atol=1e-7)
    # Until the first clipped beta, alpha_bar_t is the formula's f(t)/f(0) itself.
    unclipped = next(i for i, b in enumerate(expected_betas + [0.999]) if b >= 0.999)
    expected_ab = torch.tensor([cosine_alpha_bar(t, T) for t in range(1, unclipped + 1)], dtype=torch.float32)
    torch.testing.assert_close(sched.alpha_bars[:unclipped], expected_ab, rtol=1e-5, atol=1e-7)


def test_cosine_schedule_starts_gently():
    # Guards the betas being derived from ratios of alpha_bar: used as betas, the values f(t) would
    # start at f(0) ~ 1, and the first step would wipe out the image (beta_1 ~ 1). Eq. 17 gives beta_1 = 1 - f(1)/f(0), about
    # (a1^2 - a0^2) with a_t = (t/T + s)/(1 + s) * pi/2 for small angles: ~4e-5 for T = 1000.
    sched = cosine_schedule(T=1000)
    a0, a1 = 0.008 / 1.008 * math.pi / 2, (0.001 + 0.008) / 1.008 * math.pi / 2
    assert sched.betas[0].item() == pytest.approx(a1**2 - a0**2, rel=0.01)
    assert sched.alpha_bars[0].item() > 0.9999


@pytest.mark.parametrize("make", [linear_schedule, cosine_schedule])
@pytest.mark.parametrize("T", [1, 10, 1000])
def test_alpha_bar_decreases_strictly_inside_0_1_and_betas_respect_their_bound(make, T):
    sched = make(T=T)
    ab = sched.alpha_bars
    assert ab.dtype == torch.float32 and ab.shape == (T,)
    assert bool((ab > 0).all() and (ab < 1).all())
    assert bool((ab[1:] < ab[:-1]).all())
    assert bool((sched.betas > 0).all() and (sched.betas <= 0.999).all())


def test_cosine_betas_are_clipped_at_max_beta():
    # f(T) = cos^2(pi/2) = 0, so the unclipped last beta is 1: it must be clipped to max_beta.
    sched = cosine_schedule(T=1000, max_beta=0.99)
    assert sched.betas.max().item() == pytest.approx(0.99)
    assert bool((sched.betas <= 0.99 + 1e-7).all())


def test_linear_schedule_endpoints_and_alpha_bar():
    sched = linear_schedule(T=1000, beta_start=1e-4, beta_end=0.02)
    assert sched.betas[0].item() == pytest.approx(1e-4)
    assert sched.betas[-1].item() == pytest.approx(0.02)
    # alpha_bar_T = prod (1 - beta_t), computed here in float64 from the closed-form betas.
    betas = [1e-4 + (0.02 - 1e-4) * k / 999 for k in range(1000)]
    assert sched.alpha_bars[-1].item() == pytest.approx(math.prod(1 - b for b in betas), rel=1e-5)
    # ...which is close to exp(-sum beta) ~ exp(-10.05) ~ 4e-5: nearly pure noise at t = T.
    assert sched.alpha_bars[-1].item() < 1e-4


def test_derived_quantities_are_consistent():
    sched = cosine_schedule(T=50)
    torch.testing.assert_close(sched.alphas, 1 - sched.betas)
    assert sched.alpha_bars_prev[0].item() == 1.0  # alpha_bar_0 = 1: clean data
    torch.testing.assert_close(sched.alpha_bars_prev[1:], sched.alpha_bars[:-1])
    torch.testing.assert_close(sched.sqrt_alpha_bars**2, sched.alpha_bars)
    torch.testing.assert_close(sched.sqrt_one_minus_alpha_bars**2, 1 - sched.alpha_bars)
    # beta_tilde_1 = beta_1 (1 - alpha_bar_0) / (1 - alpha_bar_1) = 0: the last reverse step is deterministic.
    assert sched.posterior_variance[0].item() == 0.0
    assert bool((sched.posterior_variance[1:] > 0).all() and (sched.posterior_variance <= sched.betas).all())
    torch.testing.assert_close(sched.snr, sched.alpha_bars / (1 - sched.alpha_bars))


def test_schedule_is_frozen_and_to_returns_a_copy():
    sched = linear_schedule(T=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sched.betas = torch.zeros(10)
    moved = sched.to("cpu")
    assert isinstance(moved, NoiseSchedule) and moved is not sched and moved.T == 10
    moved64 = sched.to(torch.float64)  # .to forwards to every tensor
    assert moved64.betas.dtype == torch.float64 and sched.betas.dtype == torch.float32


def test_precomputation_in_float64_keeps_alpha_bar_accurate():
    # A float32 cumulative product of 1000 factors drifts; computing in float64 and rounding once
    # keeps the stored alpha_bar within one float32 rounding of the exact value.
    sched = linear_schedule(T=1000)
    exact = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    rel = ((sched.alpha_bars.double() - exact) / exact).abs().max().item()
    assert rel < 2 ** -23


@pytest.mark.parametrize("kwargs", [dict(T=0), dict(T=2.5), dict(beta_start=0.03, beta_end=0.02), dict(beta_end=1.0)])
def test_linear_schedule_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        linear_schedule(**kwargs)


def test_from_betas_rejects_betas_outside_0_1():
    with pytest.raises(ValueError, match="between 0 and 1"):
        NoiseSchedule.from_betas(torch.tensor([0.1, 1.0]))
