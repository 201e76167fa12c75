"""Flow matching against exact answers for Gaussian data (derivations in ddpm_lib.analytic)."""

import math

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.flow import TIME_SCALE, flow_path
from toy_data import squares

MU, S = 0.3, 0.5


def test_the_path_runs_from_data_to_noise():
    x0, eps = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    torch.testing.assert_close(flow_path(x0, eps, torch.zeros(3)), x0)
    torch.testing.assert_close(flow_path(x0, eps, torch.ones(3)), eps)
    torch.testing.assert_close(flow_path(x0, eps, torch.full((3,), 0.25)), 0.75 * x0 + 0.25 * eps)


@pytest.mark.parametrize("method,order", [("euler", 1.0), ("heun", 2.0)])
def test_euler_and_heun_converge_to_the_exact_map_at_their_order(method, order):
    # The exact ODE maps x_1 = z to mu + s z. Error ~ C / N^p: doubling the steps divides it by 2^p.
    x_1 = torch.randn(512, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MU + S * x_1
    field = dl.GaussianVelocity(MU, S)
    errors = [(dl.flow_sample(field, x_1, num_steps=n, method=method) - exact).abs().max().item()
              for n in (16, 32, 64, 128)]
    orders = [math.log2(errors[k] / errors[k + 1]) for k in range(3)]
    assert all(abs(p - order) < 0.15 for p in orders[1:]), (errors, orders)
    # The exact field's samples have the data's moments (Heun at 128 steps: error below 1e-4).
    if method == "heun":
        sample = dl.flow_sample(field, x_1, num_steps=128, method="heun")
        assert errors[-1] < 1e-4 and abs(sample.std().item() / x_1.std().item() - S) < 1e-4


def test_the_exact_velocity_attains_the_smallest_flow_matching_loss():
    # Per pixel, E[(eps - x0 - v*)^2 | tau] = Var(eps - x0) - Cov^2 / V
    #   = 1 + s^2 - (tau - (1 - tau) s^2)^2 / ((1 - tau)^2 s^2 + tau^2); average it over tau ~ U(0, 1).
    tau = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    conditional = 1 + S**2 - (tau - (1 - tau) * S**2) ** 2 / ((1 - tau) ** 2 * S**2 + tau**2)
    theory = torch.trapezoid(conditional, tau).item()

    field = dl.GaussianVelocity(MU, S)
    exact_model = lambda x, t: field(x, t / TIME_SCALE)  # noqa: E731  the network's contract
    scaled_model = lambda x, t: 0.9 * field(x, t / TIME_SCALE)  # noqa: E731  any other field does worse
    x0 = MU + S * torch.randn(200_000, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    batch = dl.Batch(x0)
    loss = dl.flow_matching_loss(exact_model, batch, torch.Generator().manual_seed(2)).item()
    worse = dl.flow_matching_loss(scaled_model, batch, torch.Generator().manual_seed(2)).item()
    assert loss == pytest.approx(theory, rel=0.01)
    assert worse > loss * 1.005


def test_flow_matching_trains_a_unet_through_the_shared_loop_and_counts_its_evaluations():
    torch.manual_seed(0)
    net = dl.UNet(1, 8, (1, 2))
    result = dl.train(net, images=squares(32), loss_fn=dl.flow_matching_loss, steps=80, batch_size=32, lr=3e-3,
                      device="cpu", progress=False)
    assert sum(result.losses[-10:]) < 0.75 * sum(result.losses[:10])
    x_1 = torch.randn(2, 1, 8, 8)
    for method, nfe in (("euler", 6), ("heun", 12)):
        with dl.count_nfe() as counter:
            x = dl.flow_sample(dl.flow_velocity(result.ema), x_1, num_steps=6, method=method)
        assert counter.nfe == nfe and x.shape == x_1.shape


def test_the_callback_sees_each_step_and_the_clean_image_the_velocity_points_to():
    # With the exact field, x0_hat = x - tau v*(x, tau) is E[x0 | x_tau]; at tau = 1 (x = noise z),
    # Cov(x0, x_1) = 0, so it is the data mean mu.
    seen = []
    x_1 = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dl.flow_sample(dl.GaussianVelocity(MU, S), x_1, num_steps=4, callback=lambda tau, x, x0: seen.append((tau, x0)))
    assert [tau for tau, _ in seen] == [1.0, 0.75, 0.5, 0.25]
    torch.testing.assert_close(seen[0][1], torch.full_like(x_1, MU))
    with pytest.raises(ValueError, match="s must be positive"):
        dl.GaussianVelocity(MU, 0.0)
    with pytest.raises(ValueError, match="method"):
        dl.flow_sample(dl.GaussianVelocity(MU, S), x_1, method="rk4")


class LinearCouplingVelocity(torch.nn.Module):
    """The exact velocity of straight lines between x1 ~ N(0, 1) and x0 = m + s x1 (a coupling that
    a deterministic map makes, as an ODE does). On the line, x_tau = (1 - tau) m + c x1 with
    c = (1 - tau) s + tau, so x_tau alone fixes x1 = (x - (1 - tau) m) / c, and the velocity
    x1 - x0 = (1 - s) x1 - m is a function of x_tau: v(x, tau) = (1 - s)(x - (1 - tau) m) / c - m."""

    def __init__(self, m, s):
        super().__init__()
        self.m, self.s = m, s

    def forward(self, x, t):
        tau = (t / 1000.0).view(-1, 1, 1, 1)  # the flow objectives feed TIME_SCALE * tau
        c = (1 - tau) * self.s + tau
        return (1 - self.s) * (x - (1 - tau) * self.m) / c - self.m


def test_reflow_loss_pairs_each_image_with_its_own_noise():
    # With the right pairs the exact velocity above makes the straight-line loss zero; with the
    # pairs shuffled (independent noise, as in flow matching) no velocity field can, since lines
    # cross and x_tau no longer determines x1 - x0.
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(512, 1, 2, 2, generator=g, dtype=torch.float64)
    x0 = 0.3 + 0.5 * x1
    loss_fn, model = dl.ReflowLoss(x1), LinearCouplingVelocity(0.3, 0.5)
    paired = loss_fn(model, dl.Batch(x0, torch.arange(512)), generator=g)
    shuffled = loss_fn(model, dl.Batch(x0, torch.randperm(512, generator=g)), generator=g)
    assert paired.item() < 1e-10  # float32 rounding: errors of 1e-7, squared
    assert shuffled.item() > 0.1
    with pytest.raises(ValueError, match="labels=torch.arange"):
        loss_fn(model, dl.Batch(x0), generator=g)
    with pytest.raises(ValueError, match="do not match"):
        loss_fn(model, dl.Batch(x0, torch.arange(512) + 1), generator=g)
    assert "sha256" in repr(loss_fn) and repr(loss_fn) == repr(dl.ReflowLoss(x1.clone()))
