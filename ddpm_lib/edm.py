"""EDM: the design space of Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based
Generative Models"), around any of the book's networks.

Everything is written in the noise level sigma alone: a noisy image is x = x0 + sigma n, n ~ N(0, I)
(the x-tilde of the sampler chapter, where DDPM's x_t = sqrt(alpha_bar) x-tilde). The model is a
denoiser D(x; sigma) ~ E[x0 | x], from which the score is (D - x) / sigma^2 (Tweedie) and the
probability-flow ODE is dx / dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, eq. 3 with
s(t) = 1, sigma(t) = t).

- :class:`EDMDenoiser` wraps a network F with the preconditioning of Table 1:
  D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), each coefficient chosen so that the network's
  input and its training target have unit variance at every sigma.
- :class:`EDMLoss` is the objective for :func:`ddpm_lib.train`: lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2
  with sigma drawn log-normally (eq. 8 and Sec. 5).
- :func:`edm_sample` is Algorithm 2: Heun's method on the ODE over the rho-spaced sigma grid
  (eq. 5), with optional "churn", fresh noise that raises sigma a little before each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import as_model, model_record
from .diffusion import drop_labels
from .distributed import unwrap
from .sampling import conditioned
from .schedule import cosine_schedule
from .steps import check_noise, counted, heun_step, sigma_levels

# c_noise = ln(sigma) / 4 spans about [-1.6, 1.1] over the sampler's sigmas; the book's U-Nets embed
# a time in 0..999, so their time input is TIME_SCALE * c_noise, a span of the same size.
TIME_SCALE = 250.0
PARAMETRIZATIONS = ("edm", "eps", "x0")


def coefficients(sigma: torch.Tensor, sigma_data: float, parametrization: str = "edm"):
    """(c_skip, c_out, c_in, c_noise) at ``sigma`` (Karras et al. 2022, Table 1 and Appendix B.6).

    With x = x0 + sigma n and E[x0^2] = sigma_data^2 (the derivation needs the second moment):
    - c_in = 1 / sqrt(sigma^2 + sigma_data^2) gives the network an input of unit variance;
    - "edm": c_skip = sigma_data^2 / (sigma^2 + sigma_data^2) minimises the variance of the target
      F = (x0 - c_skip x) / c_out, and c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
      makes it one. Small sigma: D ~ x, the network adds a small correction; large sigma: D ~ F,
      the network predicts the image;
    - "eps": c_skip = 1, c_out = -sigma, the network predicts the noise n (DDPM's choice);
    - "x0": c_skip = 0, c_out = 1, the network predicts the clean image.
    """
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
    s2, d2 = sigma**2, sigma_data**2
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    if parametrization == "edm":
        c_skip, c_out = d2 / (s2 + d2), sigma * sigma_data / (s2 + d2).sqrt()
    elif parametrization == "eps":
        c_skip, c_out = torch.ones_like(sigma), -sigma
    else:
        c_skip, c_out = torch.zeros_like(sigma), torch.ones_like(sigma)
    return c_skip, c_out, c_in, c_noise


def check_sigma(sigma: torch.Tensor, batch: int) -> torch.Tensor:
    """``sigma`` as a float tensor [B] of positive noise levels, or a clear error."""
    if not isinstance(sigma, torch.Tensor) or sigma.shape != (batch,):
        shape = list(sigma.shape) if isinstance(sigma, torch.Tensor) else type(sigma).__name__
        raise ValueError(f"sigma must be a tensor of noise levels [B] = [{batch}], got {shape}")
    if not bool((sigma > 0).all()):  # also refuses NaN
        raise ValueError(f"sigma must be positive (sigma = 0 is the data itself), got min {sigma.min().item():g}")
    return sigma


class EDMDenoiser(nn.Module):
    """``EDMDenoiser(net, sigma_data=0.5)(x [B, C, H, W], sigma [B], y=None) -> D(x; sigma) [B, C, H, W]``.

    ``net`` is any network with the book's contract ``net(x, t, y=None)`` (a :class:`~ddpm_lib.UNet`);
    it receives ``c_in x`` and the time ``TIME_SCALE * c_noise``. ``parametrization`` picks what the
    network predicts (:func:`coefficients`); "edm" is the paper's. The denoiser records the network's
    class and configuration, so a saved one rebuilds itself (``net`` may be that record).
    """

    def __init__(self, net, sigma_data: float = 0.5, parametrization: str = "edm"):
        super().__init__()
        net = as_model(net)  # or rebuilt from a file's record
        if not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive number, got {sigma_data!r}")
        coefficients(torch.ones(1), sigma_data, parametrization)  # checks the name
        self.net, self.sigma_data, self.parametrization = net, float(sigma_data), parametrization
        self.config = {"net": model_record(net), "sigma_data": float(sigma_data), "parametrization": parametrization}
        self.in_channels = getattr(net, "in_channels", None)
        self.num_classes = getattr(net, "num_classes", None)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"EDMDenoiser expects images [B, C, H, W], got shape {list(x.shape)}")
        sigma = check_sigma(sigma, len(x)).to(torch.float32)
        c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1, 1) for c in
                                        coefficients(sigma, self.sigma_data, self.parametrization))
        args = (c_in * x, TIME_SCALE * c_noise.flatten()) + ((y,) if y is not None else ())
        F = self.net(*args)  # [B, C, H, W]
        return (c_skip * x + c_out * F.float()).to(x.dtype)  # eq. 7


NOISES = ("lognormal", "cosine")
WEIGHTINGS = ("edm", "eps", "x0")


@dataclass(frozen=True)
class EDMLoss:
    """EDM's objective for :func:`ddpm_lib.train`, whose model is an :class:`EDMDenoiser`.

    E_{sigma, x0, n} [ lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2 ]  (Karras et al. 2022, eq. 8).

    - ``noise``: how sigma is drawn. "lognormal": ln(sigma) ~ N(P_mean, P_std^2), which spends the
      training on the middle noise levels, where the loss can still fall (Sec. 5); "cosine": the
      sigmas DDPM trains on, sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) with t uniform over the
      cosine schedule's 1000 steps.
    - ``weighting``: lambda(sigma). "edm": (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2,
      which with the "edm" parametrization makes the loss the network's own error, of unit size at
      every sigma; "eps": 1 / sigma^2, DDPM's L_simple (the error in the noise); "x0": 1, the error
      in the image.
    - ``label_dropout``: for a class-conditional denoiser, the probability p of replacing a label by
      the null class, so that one network learns the conditional and the unconditional D that
      classifier-free guidance combines (as in :class:`~ddpm_lib.DDPMLoss`).
    """

    P_mean: float = -1.2
    P_std: float = 1.2
    noise: str = "lognormal"
    weighting: str = "edm"
    label_dropout: float | None = None

    def __post_init__(self):
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {self.noise!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not self.P_std > 0:
            raise ValueError(f"P_std must be positive, got {self.P_std}")
        if self.label_dropout is not None and not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be None or a probability in [0, 1], got {self.label_dropout}")

    def __repr__(self) -> str:  # recorded by checkpoints; unchanged for runs without labels
        dropout = f", label_dropout={self.label_dropout}" if self.label_dropout is not None else ""
        return (f"EDMLoss(P_mean={self.P_mean}, P_std={self.P_std}, noise={self.noise!r}, "
                f"weighting={self.weighting!r}{dropout})")

    def sigmas(self, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """The batch's noise levels [B]."""
        if self.noise == "lognormal":
            return (self.P_mean + self.P_std * batch.randn(1, generator=generator).flatten()).exp()
        alpha_bars = cosine_schedule(T=1000).alpha_bars.to(batch.images.device)
        t = batch.randint(len(alpha_bars), generator=generator)
        return ((1 - alpha_bars[t]) / alpha_bars[t]).sqrt().float()

    def weight(self, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
        if self.weighting == "edm":
            return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
        return sigma**-2 if self.weighting == "eps" else torch.ones_like(sigma)

    def __call__(self, model, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        denoiser = unwrap(model)  # under DistributedDataParallel or torch.compile
        if not isinstance(denoiser, EDMDenoiser):
            raise TypeError(f"EDMLoss trains an EDMDenoiser, got {type(denoiser).__name__}: wrap the "
                            "network, dl.EDMDenoiser(net, sigma_data=...)")
        x0 = batch.images  # [B, C, H, W]
        sigma = self.sigmas(batch, generator)  # [B]
        n = batch.randn(generator=generator)  # [B, C, H, W]
        y = batch.labels if denoiser.num_classes is not None else None
        if self.label_dropout is not None:
            if y is None:
                raise ValueError("label_dropout needs a class-conditional denoiser and train(..., labels=...)")
            y = drop_labels(y, denoiser.num_classes, self.label_dropout, batch.rand(generator))
        D = model(x0 + sigma.view(-1, 1, 1, 1) * n, sigma, *((y,) if y is not None else ()))
        per_image = ((D.float() - x0.float()) ** 2).flatten(1).mean(1)  # [B]
        return (self.weight(sigma, denoiser.sigma_data) * per_image).mean()


def check_grid(num_steps, sigma_min: float, sigma_max: float, rho: float) -> None:
    """A clear error unless these settings make a sigma grid (here and in :mod:`ddpm_lib.distill`)."""
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")


def sigma_grid(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
               rho: float = 7.0) -> list[float]:
    """sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i = 0..N-1, then 0 (eq. 5): uniform in sigma^(1/rho), so rho > 1 packs the steps at small sigma."""
    check_grid(num_steps, sigma_min, sigma_max, rho)
    if num_steps == 1:
        return [float(sigma_max), 0.0]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / (num_steps - 1) * (b - a)) ** rho for i in range(num_steps)] + [0.0]


@torch.no_grad()
def edm_sample(denoiser, noise: torch.Tensor, *, num_steps: int = 18, sigma_min: float = 0.002,
               sigma_max: float = 80.0, rho: float = 7.0, churn: float = 0.0, y: torch.Tensor | None = None,
               guidance_scale: float | None = None, generator: torch.Generator | None = None,
               callback=None) -> torch.Tensor:
    """Draw images with Karras et al. 2022, Algorithm 2: Heun's method from sigma_max to 0.

    ``noise`` is standard normal [B, C, H, W]; the sampler starts from ``sigma_max * noise``. Each
    step evaluates D at sigma_i and, unless the next sigma is 0, again at sigma_{i+1} (the
    trapezoid): 2 N - 1 evaluations. ``churn`` (S_churn) > 0 first raises sigma_i to
    sigma_hat = (1 + gamma) sigma_i with gamma = min(churn / N, sqrt(2) - 1), adding fresh noise of
    variance sigma_hat^2 - sigma_i^2 drawn from ``generator``: the stochastic sampler, whose noise
    corrects the errors of earlier steps. ``y`` and ``guidance_scale``: class labels and
    classifier-free guidance, D_u + w (D_c - D_u), as :func:`~ddpm_lib.conditioned` combines eps
    (the same combination: at one x and sigma, D is an affine function of eps).
    ``callback(sigma, x_next, x0_hat)`` after every step.
    """
    check_noise(noise)
    if not churn >= 0:
        raise ValueError(f"churn must be >= 0, got {churn}")
    sigmas = sigma_grid(num_steps, sigma_min, sigma_max, rho)
    gamma = min(churn / num_steps, math.sqrt(2) - 1)
    D = counted(conditioned(denoiser, y, guidance_scale))  # D(x, sigma [B])
    x = sigma_max * noise
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:  # Algorithm 2, lines 5-6: raise the noise level to sigma_hat
            fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * fresh
        # lines 7-11: Heun's step from sigma_hat (Euler where sigma_next = 0), ddpm_lib.steps
        x, x0_hat = heun_step(D, x, *sigma_levels(x, sigma_hat, sigma_next))
        if callback is not None:
            callback(sigma_hat, x, x0_hat)
    return x
