"""Inpainting and SDEdit against data whose exact denoiser is known.

For Gaussian data x0 ~ N(mu, Sigma) the noisy x_t = a x0 + s eps (a = sqrt(alpha_bar_t),
s = sqrt(1 - alpha_bar_t)) is Gaussian with covariance Sigma_t = a^2 Sigma + s^2 I, and
Cov(eps, x_t) = s I, so the exact noise prediction is E[eps | x_t] = s Sigma_t^{-1} (x_t - a mu).
With two correlated pixels, inpainting one given the other has a closed-form answer: the
conditional N(mu_2 + rho s_2 / s_1 (x_1 - mu_1), s_2^2 (1 - rho^2)).
"""

import pytest
import torch
from torch import nn

import ddpm_lib as dl
from ddpm_lib.editing import inpaint, sdedit

MU, SIGMA = torch.tensor([0.2, -0.1]), torch.tensor([0.5, 0.4])
RHO = 0.9


class CorrelatedPair(nn.Module):
    """The exact eps for images [B, 1, 1, 2] whose two pixels are N(MU, Sigma) with correlation RHO."""

    def __init__(self, schedule):
        super().__init__()
        self.alpha_bars = schedule.alpha_bars.double()
        self.cov = torch.tensor([[SIGMA[0] ** 2, RHO * SIGMA[0] * SIGMA[1]],
                                 [RHO * SIGMA[0] * SIGMA[1], SIGMA[1] ** 2]], dtype=torch.float64)

    def forward(self, x_t, t):
        ab = self.alpha_bars[t].view(-1, 1, 1)  # [B, 1, 1]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        cov_t = ab * self.cov + (1 - ab) * torch.eye(2, dtype=torch.float64)  # [B, 2, 2]
        centred = x_t.double().flatten(1).unsqueeze(-1) - a * MU.double().view(1, 2, 1)  # [B, 2, 1]
        return (s * torch.linalg.solve(cov_t, centred)).view(x_t.shape).to(x_t.dtype)


def pairs(n, seed=0):
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x1 = z[:, 0]
    x2 = RHO * z[:, 0] + (1 - RHO**2) ** 0.5 * z[:, 1]
    return (MU.double() + SIGMA.double() * torch.stack([x1, x2], 1)).view(n, 1, 1, 2)


def test_inpainting_keeps_the_known_pixels_exactly_and_fills_in_the_conditional():
    schedule = dl.cosine_schedule(200)
    model = CorrelatedPair(schedule)
    x0 = pairs(4000)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 2)  # pixel 1 known
    g = torch.Generator().manual_seed(1)
    out = inpaint(model, schedule, x0, mask, num_steps=200, resample=5, clip_x0=False, generator=g)
    assert torch.equal(out[..., 0], x0[..., 0])
    # The filled-in pixel given the known one: E = mu_2 + rho s_2 / s_1 (x_1 - mu_1), so its
    # regression on x_1 has slope rho s_2 / s_1 = 0.72 and residual std s_2 sqrt(1 - rho^2) = 0.174.
    # RePaint only approximates this conditional; with every step and 5 resamplings it comes
    # within 0.05 of the slope (measured 0.69) and 15% of the spread (measured 0.165).
    x1, x2 = out[:, 0, 0, 0], out[:, 0, 0, 1]
    slope = ((x1 - x1.mean()) * (x2 - x2.mean())).mean() / x1.var()
    residual = x2 - (MU[1] + slope * (x1 - MU[0]))
    assert slope.item() == pytest.approx(float(RHO * SIGMA[1] / SIGMA[0]), abs=0.05)
    assert residual.std().item() == pytest.approx(float(SIGMA[1]) * (1 - RHO**2) ** 0.5, rel=0.15)
    assert residual.mean().item() == pytest.approx(0.0, abs=0.02)


def test_resampling_brings_the_unknown_part_into_agreement_with_the_known_part():
    # Without resampling the unknown pixel only sees the known one through noisy copies and follows
    # it less than the conditional says (slope below 0.72); resampling closes most of the gap.
    schedule = dl.cosine_schedule(200)
    model = CorrelatedPair(schedule)
    x0 = pairs(4000)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    target = (RHO * SIGMA[1] / SIGMA[0]).item()
    slopes = []
    for resample in (1, 5):
        out = inpaint(model, schedule, x0, mask, num_steps=50, resample=resample, clip_x0=False,
                      generator=torch.Generator().manual_seed(2))
        x1, x2 = out[:, 0, 0, 0], out[:, 0, 0, 1]
        slopes.append((((x1 - x1.mean()) * (x2 - x2.mean())).mean() / x1.var()).item())
    assert abs(slopes[1] - target) < abs(slopes[0] - target)


def test_inpainting_rejects_bad_masks_and_settings():
    schedule = dl.cosine_schedule(50)
    model = dl.GaussianDenoiser(schedule, 0.0, 0.5)
    x0 = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="only 0"):
        inpaint(model, schedule, x0, torch.full((1, 1, 4, 4), 0.5), num_steps=5)
    with pytest.raises(ValueError, match="broadcast"):
        inpaint(model, schedule, x0, torch.ones(1, 1, 3, 3), num_steps=5)
    with pytest.raises(ValueError, match="resample"):
        inpaint(model, schedule, x0, torch.ones(1, 1, 4, 4), num_steps=5, resample=0)
    with pytest.raises(ValueError, match="x0_known"):
        inpaint(model, schedule, torch.zeros(4, 4), torch.ones(4, 4), num_steps=5)


def test_sdedit_moves_from_the_guide_to_the_data_as_the_strength_grows():
    schedule = dl.cosine_schedule(200)
    mu, s = 0.3, 0.5
    model = dl.GaussianDenoiser(schedule, mu, s).double()
    guide = torch.full((2000, 1, 2, 2), 2.0, dtype=torch.float64)  # far from the data, N(0.3, 0.5^2)
    outputs = {strength: sdedit(model, schedule, guide, strength=strength, num_steps=200, clip_x0=False,
                                generator=torch.Generator().manual_seed(3))
               for strength in (0.0, 0.2, 0.5, 1.0)}
    # Strength 0 noises to index 0 only (std sqrt(1 - alpha_bar_1), about 0.01 here) and denoises:
    # the guide comes back almost untouched.
    assert (outputs[0.0] - guide).abs().max().item() < 0.1
    distance = [(outputs[k] - guide).pow(2).mean().sqrt().item() for k in (0.0, 0.2, 0.5, 1.0)]
    assert distance == sorted(distance)
    # Strength 1 keeps sqrt(alpha_bar_T) of the guide, about 1e-4 of it: a sample of the data (every
    # step is taken: strided ancestral steps narrow the samples, as in test_exact_denoiser).
    x = outputs[1.0]
    assert x.mean().item() == pytest.approx(mu, abs=0.05) and x.std().item() == pytest.approx(s, rel=0.06)
    with pytest.raises(ValueError, match="strength"):
        sdedit(model, schedule, guide, strength=1.5)
    with pytest.raises(ValueError, match="x_guide"):
        sdedit(model, schedule, guide[0], strength=0.5)
