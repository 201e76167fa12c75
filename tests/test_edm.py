"""EDM's preconditioning, objective and samplers against exact answers for Gaussian data."""

import math

import pytest
import torch
from torch import nn

import ddpm_lib as dl
from ddpm_lib.edm import coefficients
from ddpm_lib.loop import Batch
from toy_data import squares

MU, S = 0.3, 0.5


class Zero(nn.Module):
    """A network that always outputs zero, with the book's contract ``net(x, t)``."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.config = {}

    def forward(self, x, t):
        return self.w * x


def test_with_a_zero_network_the_preconditioning_is_the_ideal_denoiser_of_gaussian_data():
    # x0 ~ N(0, sd^2), x = x0 + sigma n: E[x0 | x] = Cov(x0, x) / Var(x) x = sd^2 / (sd^2 + sigma^2) x,
    # which is c_skip x: with F = 0 the denoiser is already optimal. Check the regression slope too.
    sd, g = 0.5, torch.Generator().manual_seed(0)
    denoiser = dl.EDMDenoiser(Zero(), sigma_data=sd).double()
    x0 = sd * torch.randn(200_000, 1, 1, 1, generator=g, dtype=torch.float64)
    for sigma in (0.1, 0.5, 2.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        D = denoiser(x, torch.full((len(x),), sigma, dtype=torch.float64))
        ideal = sd**2 / (sd**2 + sigma**2)
        torch.testing.assert_close(D, ideal * x)
        slope = (x * x0).mean() / (x * x).mean()  # least squares of x0 on x
        se = math.sqrt(ideal * (1 - ideal) / len(x))  # slope's standard error, Var(x0|x) / (n Var x)
        assert abs(slope.item() - ideal) < 5 * se
        torch.testing.assert_close(D, dl.GaussianEDMDenoiser(0.0, sd).double()(x, torch.full((len(x),), sigma)))


@pytest.mark.parametrize("sigma", [0.002, 0.3, 1.0, 80.0])
def test_the_coefficients_are_the_formulas_and_give_unit_variance(sigma):
    sd = 0.5
    c_skip, c_out, c_in, c_noise = coefficients(torch.tensor([sigma], dtype=torch.float64), sd)
    # Table 1: c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2)
    assert math.isclose(c_skip.item(), sd**2 / (sigma**2 + sd**2), rel_tol=1e-12)
    assert math.isclose(c_out.item(), sigma * sd / math.sqrt(sigma**2 + sd**2), rel_tol=1e-12)
    assert math.isclose(c_in.item(), 1 / math.sqrt(sigma**2 + sd**2), rel_tol=1e-12)
    assert math.isclose(c_noise.item(), math.log(sigma) / 4, rel_tol=1e-12)
    # With x0 ~ N(0, sd^2): Var(c_in x) = 1 and Var((x0 - c_skip x) / c_out) = 1, computed exactly:
    # Var(a x0 + b n) = a^2 sd^2 + b^2 for x = x0 + sigma n.
    assert math.isclose(c_in.item() ** 2 * (sd**2 + sigma**2), 1, rel_tol=1e-12)
    a, b = (1 - c_skip.item()) / c_out.item(), -c_skip.item() * sigma / c_out.item()
    assert math.isclose(a**2 * sd**2 + b**2, 1, rel_tol=1e-9)


def test_every_parametrization_recovers_x0_from_its_own_target():
    # D = c_skip x + c_out F equals x0 when F is the parametrization's target (x0 - c_skip x) / c_out:
    # the noise n for "eps" (x - sigma n = x0), the image itself for "x0".
    x0, n = torch.randn(4, 1, 3, 3, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.5, 3.0, 50.0], dtype=torch.float64).view(-1, 1, 1, 1)
    x = x0 + sigma * n
    for name, target in (("eps", n), ("x0", x0)):
        c_skip, c_out, _, _ = coefficients(sigma, 0.5, name)
        torch.testing.assert_close(c_skip * x + c_out * target, x0)


def test_the_ideal_denoiser_scores_one_under_edm_weighting():
    # Per pixel E[(D* - x0)^2] = Var(x0 | x) = sd^2 sigma^2 / (sd^2 + sigma^2) = c_out^2, and the
    # "edm" weight is 1 / c_out^2: the loss is 1 in expectation, whatever the noise levels drawn.
    sd = 0.5
    images = sd * torch.randn(4096, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    denoiser = dl.EDMDenoiser(Zero(), sigma_data=sd)
    for loss_fn in (dl.EDMLoss(), dl.EDMLoss(P_mean=0.5, P_std=2.0), dl.EDMLoss(noise="cosine")):
        loss = loss_fn(denoiser, Batch(images), torch.Generator().manual_seed(2)).item()
        assert abs(loss - 1) < 0.03, (loss_fn, loss)  # 65,536 pixels: standard error about 0.006


def test_the_deterministic_sampler_is_second_order_on_the_exact_gaussian():
    # The ODE keeps (x - mu) / sqrt(s^2 + sigma^2) constant. Every grid ends with one Euler step from
    # sigma_min to 0, which returns D*(x; sigma_min): compare against that map of the exact state.
    noise = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    D, smin, smax = dl.GaussianEDMDenoiser(MU, S).double(), 0.002, 80.0
    x_min = MU + (smax * noise - MU) * math.sqrt(S**2 + smin**2) / math.sqrt(S**2 + smax**2)
    exact = D(x_min, torch.full((256,), smin))
    errors = [(dl.edm_sample(D, noise, num_steps=n) - exact).abs().max().item() for n in (16, 32, 64, 128)]
    orders = [math.log2(errors[k] / errors[k + 1]) for k in range(3)]
    assert all(abs(p - 2) < 0.25 for p in orders[1:]), (errors, orders)
    with dl.count_nfe() as counter:
        dl.edm_sample(D, noise, num_steps=18)
    assert counter.nfe == 2 * 18 - 1


def test_the_stochastic_sampler_keeps_the_exact_marginals():
    # Churn adds noise and the ODE steps remove it; with the exact denoiser and many small steps the
    # samples are N(mu, s^2). Its error is first order in the step (churn's noise is added, then
    # removed by a deterministic step), so fix gamma = churn / N = 0.1 and take 256 steps.
    # n = 40,000 pixels: standard errors s / sqrt(n) = 0.0025 (mean) and s / sqrt(2 n) (std).
    noise = torch.randn(10_000, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    D = dl.GaussianEDMDenoiser(MU, S).double()
    x = dl.edm_sample(D, noise, num_steps=256, churn=25.6, generator=torch.Generator().manual_seed(4))
    n = x.numel()
    assert abs(x.mean().item() - MU) < 4 * S / math.sqrt(n)
    assert abs(x.std().item() - S) < 4 * S / math.sqrt(2 * n)
    # ... and the noise matters: the same start gives other samples with other fresh noise.
    other = dl.edm_sample(D, noise[:8], num_steps=256, churn=25.6, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(other, x[:8])


def test_sigma_grid_runs_from_sigma_max_to_zero_packed_at_small_sigma():
    grid = dl.sigma_grid(18, 0.002, 80.0, 7.0)
    assert len(grid) == 19 and math.isclose(grid[0], 80.0) and math.isclose(grid[-2], 0.002) and grid[-1] == 0
    assert all(a > b for a, b in zip(grid, grid[1:]))
    uniform = dl.sigma_grid(5, 1.0, 5.0, rho=1.0)
    assert [round(s, 12) for s in uniform] == [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]


def test_bad_input_gets_a_clear_error():
    denoiser = dl.EDMDenoiser(dl.UNet(base_dim=8, dim_mults=(1, 2)))
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="sigma must be positive"):
        denoiser(x, torch.tensor([0.5, -0.1]))
    with pytest.raises(ValueError, match=r"sigma must be a tensor of noise levels \[B\]"):
        denoiser(x, torch.tensor(0.5))
    with pytest.raises(ValueError, match="wrong|B, C, H, W"):
        dl.edm_sample(denoiser, torch.randn(2, 8, 8))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        dl.edm_sample(denoiser, x, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="churn"):
        dl.edm_sample(denoiser, x, churn=-1.0)
    with pytest.raises(ValueError, match="parametrization"):
        dl.EDMDenoiser(dl.UNet(base_dim=8), parametrization="v")
    with pytest.raises(ValueError, match="weighting"):
        dl.EDMLoss(weighting="snr")
    with pytest.raises(TypeError, match="EDMLoss trains an EDMDenoiser"):
        dl.EDMLoss()(dl.UNet(base_dim=8, dim_mults=(1, 2)), Batch(x))


def test_training_runs_resumes_and_the_denoiser_saves_and_rebuilds(tmp_path):
    images = squares(64, size=8)
    kw = dict(loss_fn=dl.EDMLoss(), steps=6, batch_size=16, seed=0, progress=False, amp="off", log_every=3)

    def make():
        torch.manual_seed(0)
        return dl.EDMDenoiser(dl.UNet(base_dim=8, dim_mults=(1, 2)), sigma_data=0.6)

    whole = dl.train(make(), images=images, **kw)
    dl.train(make(), images=images, **{**kw, "steps": 3}, checkpoint=tmp_path / "run.pt")
    resumed = dl.train(make(), images=images, **kw, checkpoint=tmp_path / "run.pt")
    assert whole.losses == resumed.losses
    sha = dl.save_weights(tmp_path / "edm.safetensors", whole.ema, dtype=torch.float32)
    assert len(sha) == 64
    back = dl.load_weights(tmp_path / "edm.safetensors", expected=dl.EDMDenoiser)
    assert back.sigma_data == 0.6 and isinstance(back.net, dl.UNet)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dl.edm_sample(back, noise, num_steps=4),
                               dl.edm_sample(whole.ema.eval(), noise, num_steps=4), atol=1e-4, rtol=1e-4)


def test_guidance_in_the_edm_sampler_is_the_combination_of_the_two_denoisers():
    # One step from sigma_max to 0 returns D at sigma_max, so the sampler's output is the guided D:
    # D_u + w (D_c - D_u); w = 1 is the conditional denoiser, w = 0 the unconditional one.
    torch.manual_seed(0)
    denoiser = dl.EDMDenoiser(dl.UNet(in_channels=1, base_dim=8, dim_mults=(1, 2), num_classes=3)).eval()
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y, null, sigma = torch.tensor([0, 1, 2, 1]), torch.full((4,), 3), torch.full((4,), 80.0)
    with torch.no_grad():
        D_c, D_u = denoiser(80 * noise, sigma, y), denoiser(80 * noise, sigma, null)
    for w in (0.0, 1.0, 2.5):
        out = dl.edm_sample(denoiser, noise, num_steps=1, y=y, guidance_scale=w)
        torch.testing.assert_close(out, D_u + w * (D_c - D_u), rtol=1e-4, atol=1e-4)


def test_label_dropout_trains_the_null_class():
    # With p = 1 every label becomes the null class, so the loss is that of the unconditional denoiser.
    torch.manual_seed(0)
    denoiser = dl.EDMDenoiser(dl.UNet(in_channels=1, base_dim=8, dim_mults=(1, 2), num_classes=3))
    images = dl.to_model_range(squares(8, size=8))  # [8, 1, 8, 8]
    batch = Batch(images, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    dropped = dl.EDMLoss(label_dropout=1.0)(denoiser, batch, torch.Generator().manual_seed(0))
    # sigma and the noise are drawn before the dropout, so the same seed gives the same ones
    expected = dl.EDMLoss()(denoiser, Batch(images, torch.full((8,), 3)), torch.Generator().manual_seed(0))
    assert abs(dropped.item() - expected.item()) < 1e-6
    with pytest.raises(ValueError, match="label_dropout needs a class-conditional"):
        dl.EDMLoss(label_dropout=0.1)(dl.EDMDenoiser(dl.UNet(1, 8, (1, 2))), Batch(images[:2]))
    with pytest.raises(ValueError, match="probability"):
        dl.EDMLoss(label_dropout=1.5)
    assert repr(dl.EDMLoss()) == "EDMLoss(P_mean=-1.2, P_std=1.2, noise='lognormal', weighting='edm')"
