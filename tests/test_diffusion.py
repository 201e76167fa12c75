import math

import pytest
import torch

from ddpm_lib import cosine_schedule, ddpm_loss, linear_schedule, predict_x0, q_posterior, q_sample

X0 = torch.linspace(-1, 1, 8, dtype=torch.float64)  # eight "pixels" spanning the data range


@pytest.mark.parametrize("make", [linear_schedule, cosine_schedule])
@pytest.mark.parametrize("t", [1, 10, 250, 1000])
def test_running_the_one_step_chain_matches_q_sample(make, t):
    # q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t) (Ho et al. eq. 2). Applying it t times to
    # x_0 must give the closed form q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t) (eq. 4),
    # which q_sample draws from in one step.
    sched = make(T=1000)
    n = 5_000  # the bounds below scale with 1 / sqrt(n)
    gen = torch.Generator().manual_seed(t)
    x = X0.expand(n, 8).clone()
    for beta in sched.betas[:t].double():
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    x_t, _ = q_sample(sched, X0.expand(n, 8), t - 1)  # index t-1 is step t

    ab = sched.alpha_bars[t - 1].double()
    mean, var = ab.sqrt() * X0, 1 - ab
    # Standard errors: sqrt(var / n) for a mean, var * sqrt(2 / n) for a variance; allow 5.
    for sample in (x, x_t):
        assert (sample.mean(0) - mean).abs().max() < 5 * (var / n).sqrt()
        assert (sample.var(0) - var).abs().max() < 5 * var * math.sqrt(2 / n)


def test_q_sample_uses_the_given_noise_and_predict_x0_inverts_it():
    sched = cosine_schedule(T=100)
    # float64: at t = T, 1/sqrt(alpha_bar) ~ 1e3 would amplify float32 rounding in the inversion.
    x0 = torch.rand(6, 3, 4, 4, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 1, 20, 50, 98, 99])
    noise = torch.randn_like(x0)
    x_t, returned = q_sample(sched, x0, t, noise)
    assert returned is noise
    ab = sched.alpha_bars.double()[t].view(-1, 1, 1, 1)
    # eq. 4, up to the float32 rounding of the stored coefficients
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(predict_x0(sched, x_t, t, noise), x0)


def test_q_posterior_matches_the_product_of_gaussians():
    # Bayes: q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0)
    #   = N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(alpha_bar_{t-1}) x_0, 1 - alpha_bar_{t-1}).
    # Completing the square: precision = alpha_t / beta_t + 1 / (1 - alpha_bar_{t-1}) and
    # mean = variance * (sqrt(alpha_t) x_t / beta_t + sqrt(alpha_bar_{t-1}) x_0 / (1 - alpha_bar_{t-1})).
    # These must equal Ho et al.'s eqs. 6-7 as implemented.
    sched = linear_schedule(T=1000)
    t = torch.tensor([1, 2, 10, 500, 999])
    x0, x_t = torch.randn(5, 1, 3, 3, dtype=torch.float64), torch.randn(5, 1, 3, 3, dtype=torch.float64)
    mean, var = q_posterior(sched, x0, x_t, t)

    ab = torch.cumprod(1 - sched.betas.double(), 0)
    beta, ab_prev = sched.betas.double()[t], ab[t - 1]
    precision = (1 - beta) / beta + 1 / (1 - ab_prev)
    expected_var = (1 / precision).view(-1, 1, 1, 1)
    expected_mean = expected_var * ((1 - beta).sqrt().view(-1, 1, 1, 1) * x_t / beta.view(-1, 1, 1, 1)
                                    + ab_prev.sqrt().view(-1, 1, 1, 1) * x0 / (1 - ab_prev).view(-1, 1, 1, 1))
    torch.testing.assert_close(var, expected_var, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-5, atol=1e-6)


def test_q_posterior_at_the_first_step_is_the_point_mass_at_x0():
    # alpha_bar_0 = 1, so q(x_0 | x_1, x_0) puts all its mass on x_0: variance 0, mean x_0.
    sched = cosine_schedule(T=1000)
    x0, x_t = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    mean, var = q_posterior(sched, x0, x_t, 0)
    assert (var == 0).all()
    torch.testing.assert_close(mean, x0, rtol=1e-5, atol=1e-5)


class ExactEps(torch.nn.Module):
    """The optimal eps predictor for Gaussian data N(mu, s^2): E[eps | x_t] (see test_exact_denoiser.py)."""

    def __init__(self, sched, mu, s):
        super().__init__()
        self.ab, self.mu, self.s = sched.alpha_bars, mu, s

    def forward(self, x_t, t):
        ab = self.ab[t].view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)


def test_ddpm_loss_of_the_optimal_predictor_is_the_mean_posterior_variance_of_eps():
    # For the exact predictor the expected squared error at step t is Var(eps | x_t)
    # = 1 - (1 - ab) / (ab s^2 + 1 - ab) = ab s^2 / (ab s^2 + 1 - ab). With t uniform over the T
    # steps, the expected loss is the average of that over t.
    sched, mu, s = cosine_schedule(T=1000), 0.3, 0.5
    x0 = mu + s * torch.randn(20_000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    loss = ddpm_loss(ExactEps(sched, mu, s), sched, x0, generator=torch.Generator().manual_seed(1))
    ab = sched.alpha_bars.double()
    expected = (ab * s * s / (ab * s * s + 1 - ab)).mean().item()
    # Per-sample squared errors are bounded by a few times their mean; 80,000 of them average to
    # within ~1% of it. The loss of a model that predicts 0 would be E[eps^2] = 1 instead.
    assert loss.item() == pytest.approx(expected, rel=0.03)
    zero = ddpm_loss(lambda x, t: torch.zeros_like(x), sched, x0, generator=torch.Generator().manual_seed(1))
    assert zero.item() == pytest.approx(1.0, rel=0.03)


def test_ddpm_loss_is_reproducible_with_a_generator_and_checks_the_model_output():
    sched = linear_schedule(T=100)
    x0 = torch.randn(8, 1, 4, 4)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    net = lambda x, t: model(x)  # noqa: E731
    a = ddpm_loss(net, sched, x0, generator=torch.Generator().manual_seed(7))
    b = ddpm_loss(net, sched, x0, generator=torch.Generator().manual_seed(7))
    assert a.item() == b.item() and a.ndim == 0
    with pytest.raises(ValueError, match="must return its input's shape"):
        ddpm_loss(lambda x, t: x[:, :, :2], sched, x0)


def test_timestep_errors_are_clear():
    sched = linear_schedule(T=100)
    x0 = torch.zeros(4, 1, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 99\]"):
        q_sample(sched, x0, torch.tensor([0, 1, 2, 100]))
    with pytest.raises(ValueError, match=r"shape \[B\] = \[4\]"):
        q_sample(sched, x0, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        q_sample(sched, x0, torch.tensor([0.5, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="noise has shape"):
        q_sample(sched, x0, 3, noise=torch.zeros(4, 1, 3, 3))


def test_min_snr_weighting_scales_each_image_by_min_snr_over_snr():
    from ddpm_lib import DDPMLoss, ddpm_loss

    schedule = cosine_schedule(T=100)
    torch.manual_seed(0)
    x0, eps = torch.rand(4, 1, 4, 4) * 2 - 1, torch.randn(4, 1, 4, 4)
    t = torch.tensor([0, 30, 70, 99])  # alpha_bar falls from ~1 (SNR huge) to ~0 (SNR tiny)
    model = lambda x_t, t: 0.5 * x_t  # noqa: E731  any predictor will do: the weights are what is tested
    x_t, _ = q_sample(schedule, x0, t, eps)
    per_image = (0.5 * x_t - eps).square().flatten(1).mean(1)  # [4]
    a = schedule.alpha_bars[t].double()
    snr = a / (1 - a)  # SNR_t = alpha_bar / (1 - alpha_bar)
    gamma = 5.0
    weight = torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) / snr
    assert weight[0] < 0.01 and weight[-1] == 1.0  # the low-noise image is down-weighted, the noisy one kept
    expected = (weight.float() * per_image).mean()
    assert ddpm_loss(model, schedule, x0, t=t, eps=eps, min_snr=gamma) == pytest.approx(float(expected), rel=1e-5)
    # gamma above every SNR: every weight is 1 and the loss is L_simple itself.
    plain = ddpm_loss(model, schedule, x0, t=t, eps=eps)
    assert ddpm_loss(model, schedule, x0, t=t, eps=eps, min_snr=float(snr.max()) * 2) == pytest.approx(float(plain))
    assert "min_snr=5.0" in repr(DDPMLoss(schedule, min_snr=5.0))  # a checkpoint tells the objectives apart
    with pytest.raises(ValueError, match="min_snr"):
        DDPMLoss(schedule, min_snr=0.0)
