"""Every sampler, tested against the exact answer, without training anything.

Take data x0 ~ N(mu, s^2) per pixel. Then x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (ab = alpha_bar_t) is
Gaussian with mean sqrt(ab) mu and variance V = ab s^2 + 1 - ab, and (eps, x_t) are jointly
Gaussian with Cov(eps, x_t) = sqrt(1 - ab). The best possible noise prediction is therefore the
conditional mean
    eps*(x_t) = E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / V  =  A x_t + B.
eps* is linear in x_t, so x0_hat = (x_t - sqrt(1 - ab) eps*) / sqrt(ab) is linear too, and every
sampler step has the form x <- K x + c + sigma z with z ~ N(0, 1). Starting from x_T ~ N(0, 1), the
mean and variance of the samples follow m <- K m + c, v <- K^2 v + sigma^2 exactly. The recursion
below is written from the papers' equations in float64, independently of ``ddpm_lib``'s code.
"""

import math

import pytest
import torch
from torch import nn

from ddpm_lib import cosine_schedule, ddim_sample, ddim_timesteps, ddpm_sample, linear_schedule

MU, S = 0.5, 0.2  # data mean and standard deviation per pixel


class ExactEps(nn.Module):
    """eps*(x_t, t) for Gaussian data: the optimal noise predictor (see the module docstring)."""

    def __init__(self, schedule, mu, s):
        super().__init__()
        self.alpha_bars, self.mu, self.s = schedule.alpha_bars.double(), mu, s

    def forward(self, x_t, t):
        ab = self.alpha_bars[t].to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)


def alpha_bars64(schedule):
    """alpha_bar_t recomputed in float64 from the betas: prod_{s <= t} (1 - beta_s) (Ho et al. eq. 4)."""
    return torch.cumprod(1 - schedule.betas.double(), 0).tolist()


def step_coefficients(ab, mu, s):
    """eps* = A x + B and x0_hat = K0 x + c0 at a step with alpha_bar = ab."""
    V = ab * s * s + 1 - ab
    A, B = math.sqrt(1 - ab) / V, -math.sqrt(1 - ab) * math.sqrt(ab) * mu / V
    K0, c0 = (1 - math.sqrt(1 - ab) * A) / math.sqrt(ab), -math.sqrt(1 - ab) * B / math.sqrt(ab)
    return A, B, K0, c0, V


def ddpm_moments(schedule, mu, s, exact_variance=False):
    """Mean and std after ancestral sampling with sigma_t^2 = beta_tilde_t (Ho et al. Algorithm 2, eqs. 6-7).

    x_{t-1} = c1 x0_hat + c2 x_t + sqrt(beta_tilde) z. With ``exact_variance`` the step uses the true
    reverse conditional q(x_{t-1} | x_t) for Gaussian data instead, whose variance is
    beta_tilde + c1^2 Var(x0 | x_t) with Var(x0 | x_t) = s^2 (1 - ab) / V: the term DDPM drops.
    """
    ab, betas = alpha_bars64(schedule), schedule.betas.double().tolist()
    m, v = 0.0, 1.0
    for i in reversed(range(len(betas))):
        A, B, K0, c0, V = step_coefficients(ab[i], mu, s)
        ab_prev = ab[i - 1] if i > 0 else 1.0
        c1 = math.sqrt(ab_prev) * betas[i] / (1 - ab[i])  # eq. 7
        c2 = math.sqrt(1 - betas[i]) * (1 - ab_prev) / (1 - ab[i])
        var = betas[i] * (1 - ab_prev) / (1 - ab[i])
        if exact_variance:
            var += c1**2 * s * s * (1 - ab[i]) / V
        m, v = (c1 * K0 + c2) * m + c1 * c0, (c1 * K0 + c2) ** 2 * v + var
    return m, math.sqrt(v)


def ddim_moments(schedule, mu, s, num_steps, eta):
    """Mean and std after DDIM (Song et al. 2021, eqs. 12 and 16) over ddim_timesteps(T, num_steps)."""
    ab = alpha_bars64(schedule)
    seq = ddim_timesteps(len(ab), num_steps)
    m, v = 0.0, 1.0
    for k, i in enumerate(seq):
        A, B, K0, c0, _ = step_coefficients(ab[i], mu, s)
        ab_prev = ab[seq[k + 1]] if k + 1 < len(seq) else 1.0
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab[i]) * (1 - ab[i] / ab_prev))
        d = math.sqrt(1 - ab_prev - sigma**2)  # x_prev = sqrt(ab_prev) x0_hat + d eps* + sigma z
        K, c = math.sqrt(ab_prev) * K0 + d * A, math.sqrt(ab_prev) * c0 + d * B
        m, v = K * m + c, K * K * v + sigma**2
    return m, math.sqrt(v)


SCHEDULES = {"linear": linear_schedule(), "cosine": cosine_schedule()}


def run_sampler(sampler, schedule, n_images=4096, **kwargs):
    """Samples driven by eps*: 4096 x 8 x 8 = 262,144 independent pixels."""
    x_T = torch.randn(n_images, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    return sampler(ExactEps(schedule, MU, S), schedule, x_T, clip_x0=False, generator=gen, **kwargs)


def assert_moments(x, m, sd):
    # With n = 262,144 samples the standard error of the mean is sd / 512 and that of the std is
    # about sd / sqrt(2n) = sd / 724; allow 5 standard errors.
    n = x.numel()
    assert abs(x.mean().item() - m) < 5 * sd / math.sqrt(n)
    assert abs(x.std().item() - sd) < 5 * sd / math.sqrt(2 * n)


@pytest.mark.parametrize("name", SCHEDULES)
def test_ddpm_sample_matches_its_moment_recursion(name):
    schedule = SCHEDULES[name]
    x = run_sampler(ddpm_sample, schedule)
    assert_moments(x, *ddpm_moments(schedule, MU, S))


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("num_steps", [50, 1000])
def test_stochastic_ddim_matches_its_moment_recursion(name, num_steps):
    schedule = SCHEDULES[name]
    x = run_sampler(ddim_sample, schedule, num_steps=num_steps, eta=1.0)
    assert_moments(x, *ddim_moments(schedule, MU, S, num_steps, eta=1.0))


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("num_steps", [50, 1000])
def test_deterministic_ddim_is_the_exact_affine_map(name, num_steps):
    # With eta = 0 there is no noise: each sample must equal K_total x_T + c_total, which we get by
    # pushing two points (x_T = 0 and x_T = 1) through the recursion's mean update.
    schedule = SCHEDULES[name]
    x_T = torch.randn(64, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = ddim_sample(ExactEps(schedule, MU, S), schedule, x_T, num_steps=num_steps, eta=0.0, clip_x0=False)
    c_total = ddim_affine(schedule, num_steps, 0.0)
    K_total = ddim_affine(schedule, num_steps, 1.0) - c_total
    torch.testing.assert_close(x, K_total * x_T + c_total, rtol=1e-5, atol=1e-5)


def ddim_affine(schedule, num_steps, x_T):
    ab = alpha_bars64(schedule)
    seq = ddim_timesteps(len(ab), num_steps)
    x = x_T
    for k, i in enumerate(seq):
        A, B, K0, c0, _ = step_coefficients(ab[i], MU, S)
        ab_prev = ab[seq[k + 1]] if k + 1 < len(seq) else 1.0
        d = math.sqrt(1 - ab_prev)
        x = (math.sqrt(ab_prev) * K0 + d * A) * x + math.sqrt(ab_prev) * c0 + d * B
    return x


@pytest.mark.parametrize("name", SCHEDULES)
def test_the_recursions_land_where_theory_says(name):
    schedule = SCHEDULES[name]
    # DDIM with eta = 0 over all T steps discretises the probability-flow ODE finely enough to
    # reproduce the data distribution within 1%.
    m, sd = ddim_moments(schedule, MU, S, schedule.T, eta=0.0)
    assert abs(m - MU) < 0.01 * MU and abs(sd - S) < 0.01 * S

    # Ancestral DDPM with sigma_t^2 = beta_tilde_t under-disperses. beta_tilde is the variance of
    # q(x_{t-1} | x_t, x_0) for a *known* x_0; the true reverse step q(x_{t-1} | x_t) must also carry
    # the uncertainty about x_0 given x_t, an extra c1^2 Var(x0 | x_t) >= 0 per step. Dropping it
    # injects slightly too little noise at every step, so the samples come out a little too
    # narrow: by about 2% at s = 0.2 for the linear schedule and about 1% for the cosine one.
    # (Ho et al. note beta_tilde is the optimal choice only for a deterministic x_0.)
    m, sd = ddpm_moments(schedule, MU, S)
    assert abs(m - MU) < 1e-4
    assert 0.97 * S < sd < 0.995 * S
    # Put the dropped term back and the recursion recovers the data distribution exactly.
    m, sd = ddpm_moments(schedule, MU, S, exact_variance=True)
    assert abs(m - MU) < 1e-6 and abs(sd - S) < 1e-6


def test_ddim_with_eta_one_over_all_steps_is_ddpm():
    # With eta = 1, sigma^2 = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev) = beta_tilde and the
    # coefficients of eq. 12 reduce to those of the posterior mean (eq. 7), so over all T steps and
    # with the same noise draws DDIM *is* the ancestral sampler, clipping included.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 1, 3, padding=1))
    net = lambda x, t: model(x) * (1 + t.float().view(-1, 1, 1, 1) / 1000)  # noqa: E731
    schedule = linear_schedule(T=100, beta_start=1e-3, beta_end=0.2)
    x_T = torch.randn(4, 1, 8, 8)
    a = ddpm_sample(net, schedule, x_T, generator=torch.Generator().manual_seed(5))
    b = ddim_sample(net, schedule, x_T, num_steps=100, eta=1.0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
