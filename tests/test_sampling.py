import pytest
import torch

from ddpm_lib import UNet, cosine_schedule, ddim_sample, ddim_timesteps, ddpm_sample, linear_schedule


def test_ddim_timesteps_cover_the_chain_evenly():
    for T, n in [(1000, 10), (1000, 50), (1000, 1000), (7, 3), (10, 1)]:
        steps = ddim_timesteps(T, n)
        assert len(steps) == n and len(set(steps)) == n
        assert steps == sorted(steps, reverse=True)
        assert steps[0] == T - 1 and (n == 1 or steps[-1] == 0)
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            ddim_timesteps(1000, bad)


@pytest.mark.parametrize("sampler,kwargs", [(ddpm_sample, {}), (ddim_sample, {"num_steps": 5, "eta": 0.5})])
def test_samplers_take_dtype_from_x_T_run_without_grad_and_report_every_step(sampler, kwargs):
    torch.manual_seed(0)
    model = UNet(in_channels=1, base_dim=8, dim_mults=(1, 2)).double()
    schedule = linear_schedule(T=20, beta_start=1e-3, beta_end=0.2)
    x_T = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    seen = []
    x = sampler(model, schedule, x_T, callback=lambda t, x, x0: seen.append((t, x.shape, x0.dtype)), **kwargs)
    assert x.dtype == torch.float64 and x.shape == x_T.shape and not x.requires_grad
    expected_t = list(range(19, -1, -1)) if sampler is ddpm_sample else ddim_timesteps(20, 5)
    assert [t for t, _, _ in seen] == expected_t  # every step, ending with index 0
    assert all(shape == x_T.shape and dtype == torch.float64 for _, shape, dtype in seen)
    assert x.abs().max() <= 1 + 1e-9  # the last step returns the clipped x0_hat


def test_samplers_are_reproducible_with_a_generator():
    torch.manual_seed(0)
    model = UNet(in_channels=1, base_dim=8, dim_mults=(1, 2))
    schedule = cosine_schedule(T=10)
    x_T = torch.randn(2, 1, 8, 8)
    run = lambda seed: ddpm_sample(model, schedule, x_T, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    torch.testing.assert_close(run(1), run(1), rtol=0, atol=0)
    assert not torch.allclose(run(1), run(2))


def test_samplers_name_a_shape_mismatch_between_x_T_and_the_model():
    model = UNet(in_channels=1, base_dim=8, dim_mults=(1, 2))
    schedule = linear_schedule(T=5)
    with pytest.raises(ValueError, match="built for 1 channel"):
        ddpm_sample(model, schedule, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="model returned shape"):
        ddim_sample(lambda x, t: x[:, :, :4], schedule, torch.randn(1, 1, 8, 8), num_steps=2)
    with pytest.raises(TypeError, match="floating-point"):
        ddpm_sample(model, schedule, torch.zeros(1, 1, 8, 8, dtype=torch.long))


def test_gaussian_denoiser_is_the_conditional_mean_of_the_noise():
    # E[eps | x_t] is the least-squares predictor of eps from x_t; for jointly Gaussian (eps, x_t)
    # it is the linear regression Cov(eps, x_t) / Var(x_t) (x_t - E x_t). Fit that regression on
    # samples and compare slopes and intercepts with GaussianDenoiser's. With n = 200,000 samples,
    # residual sd <= 1 and sd(x_t) >= s = 0.4, the fitted slope's standard error is at most
    # 1 / (0.4 sqrt(n)) = 0.0056: allow five of them.
    from ddpm_lib import GaussianDenoiser, q_sample

    schedule, mu, s = cosine_schedule(T=100), 0.3, 0.4
    model = GaussianDenoiser(schedule, mu, s)
    g = torch.Generator().manual_seed(0)
    x0 = mu + s * torch.randn(200_000, 1, 1, 1, generator=g, dtype=torch.float64)
    for t in (0, 50, 99):
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_t, _ = q_sample(schedule, x0, t, eps)
        design = torch.stack([x_t.flatten(), torch.ones(len(x0), dtype=torch.float64)], 1)
        fitted = torch.linalg.lstsq(design, eps.flatten()[:, None]).solution.flatten()
        probe = torch.tensor([0.0, 1.0], dtype=torch.float64).view(2, 1, 1, 1)
        pred = model(probe, torch.full((2,), t)).flatten()
        torch.testing.assert_close(torch.stack([pred[1] - pred[0], pred[0]]), fitted, rtol=0, atol=0.028)
