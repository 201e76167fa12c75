import pytest
import torch

from ddpm_lib import (
    UNet,
    cosine_schedule,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    denoise,
    linear_schedule,
    run_sampler,
)


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


def test_denoise_clips_x0_and_returns_the_noise_that_goes_with_it():
    # Whatever the clipping, x_t = sqrt(ab) x0_hat + sqrt(1 - ab) eps_hat must still hold (eq. 4).
    schedule = cosine_schedule(T=50)
    x_t = 3 * torch.randn(4, 1, 6, 6, dtype=torch.float64)
    t = torch.tensor([0, 10, 30, 49])
    wild = lambda x, t: 5 * torch.ones_like(x)  # noqa: E731  an eps that sends x0_hat far out of range
    raw, clipped = denoise(wild, schedule, x_t, t), denoise(wild, schedule, x_t, t, clip_x0=True)
    assert torch.equal(raw.eps, 5 * torch.ones_like(x_t)) and raw.x0.abs().max() > 1
    assert clipped.x0.abs().max() <= 1
    # The schedule's own (float32-stored) coefficients, the ones denoise uses, so float64 rounding only.
    a, b = (v.double()[t].view(-1, 1, 1, 1) for v in (schedule.sqrt_alpha_bars, schedule.sqrt_one_minus_alpha_bars))
    for p in (raw, clipped):
        torch.testing.assert_close(a * p.x0 + b * p.eps, x_t)
    with pytest.raises(ValueError, match="returned shape"):
        denoise(lambda x, t: x[:, :, :3], schedule, x_t, t)


def test_a_new_update_rule_plugs_into_the_shared_sampler_loop():
    # A sampler is a list of timesteps and an update rule; here "jump straight to x0_hat" visits
    # the given indices in order, and its result is the last x0_hat.
    schedule = cosine_schedule(T=30)
    visits = []

    def jump_to_x0(x_t, prediction, t, i, i_prev):
        visits.append((i, i_prev, t.tolist()))
        return prediction.x0

    model = lambda x, t: torch.zeros_like(x)  # noqa: E731  eps_hat = 0: x0_hat = x_t / sqrt(ab)
    x_T = torch.randn(2, 1, 4, 4)
    x = run_sampler(model, schedule, x_T, [29, 12, 0], jump_to_x0, clip_x0=False)
    assert visits == [(29, 12, [29, 29]), (12, 0, [12, 12]), (0, -1, [0, 0])]
    scale = schedule.sqrt_alpha_bars[[29, 12, 0]].prod()
    torch.testing.assert_close(x, x_T / scale)


@pytest.mark.parametrize("amp, autocast_on", [("off", False), ("bf16", True)])
def test_every_sampler_runs_the_network_in_the_precision_asked_for(amp, autocast_on):
    from ddpm_lib import dpm_solver_sample, heun_sample
    from ddpm_lib.precision import cpu_autocast_on

    schedule = cosine_schedule(T=50)
    torch.manual_seed(0)
    net = UNet(1, 8, (1, 2)).eval()
    seen = []

    def model(x_t, t):
        seen.append(cpu_autocast_on())
        return net(x_t, t)

    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    samplers = {"ddpm": lambda **kw: ddpm_sample(model, schedule, x_T, generator=g(), **kw),
                "ddim": lambda **kw: ddim_sample(model, schedule, x_T, num_steps=5, **kw),
                "heun": lambda **kw: heun_sample(model, schedule, x_T, num_steps=3, **kw),
                "dpm++": lambda **kw: dpm_solver_sample(model, schedule, x_T, num_steps=5, **kw)}
    for name, sample in samplers.items():
        seen.clear()
        x = sample(amp=amp, clip_x0=True)
        assert seen and set(seen) == {autocast_on}, name
        assert x.dtype == torch.float32, name  # the sampler's arithmetic stays in x_T's dtype
        # bf16 keeps 8 significant bits; a handful of steps of an untrained network stays close.
        assert torch.allclose(x, sample(amp="off", clip_x0=True), atol=0.1), name


def test_every_sampler_takes_the_shared_options_from_one_place_and_refuses_unknown_ones():
    # The shared options live in SHARED_OPTIONS alone; each sampler passes them on. A misspelt
    # option is refused by name rather than ignored, in every sampler and editor.
    from ddpm_lib import editing
    from ddpm_lib.ode import dpm_solver_sample, heun_sample
    from ddpm_lib.sampling import SHARED_OPTIONS, sampler_options

    assert sampler_options({}) == {"clip_x0": True, "y": None, "guidance_scale": None, "amp": "off"}
    assert sampler_options({"clip_x0": False})["clip_x0"] is False and SHARED_OPTIONS["clip_x0"] is True
    schedule = linear_schedule(T=20)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    samplers = [lambda **o: ddpm_sample(model, schedule, x, **o),
                lambda **o: ddim_sample(model, schedule, x, num_steps=4, **o),
                lambda **o: heun_sample(model, schedule, x, num_steps=3, **o),
                lambda **o: dpm_solver_sample(model, schedule, x, num_steps=4, **o),
                lambda **o: editing.sdedit(model, schedule, x.clamp(-1, 1), num_steps=4, **o),
                lambda **o: editing.inpaint(model, schedule, x.clamp(-1, 1), torch.ones(1, 1, 8, 8), num_steps=4, **o)]
    for sample in samplers:
        with pytest.raises(TypeError, match=r"unknown sampler option\(s\) \['clip'\]"):
            sample(clip=True)
        with pytest.raises(ValueError, match="guidance_scale needs class labels"):
            sample(guidance_scale=2.0)
        assert sample(clip_x0=True).abs().max() <= 1 + 1e-6  # x0_hat clipped: the data range
