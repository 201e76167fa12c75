"""The forward process q(x_t | x_0), its posterior q(x_{t-1} | x_t, x_0), and the training loss.

Functions take the schedule and tensors; they read device and dtype from the tensors, so the same
code runs on a CPU, a GPU, in float32 or float64. Timesteps ``t`` are long tensors of shape [B]
holding indices 0..T-1 (index t is diffusion step t + 1, see ``schedule.py``). A Python int is also
accepted and used for the whole batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributed import unwrap
from .schedule import NoiseSchedule


def timesteps_like(t, x: torch.Tensor, T: int) -> torch.Tensor:
    """Check ``t`` against the batch ``x`` and return it as a long tensor [B] on ``x.device``."""
    B = x.shape[0]
    if isinstance(t, int) or (isinstance(t, torch.Tensor) and t.ndim == 0):
        t = torch.full((B,), int(t), dtype=torch.long)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be an int or a tensor of timestep indices, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"t must hold integer timestep indices, got dtype {t.dtype}")
    if t.shape != (B,):
        raise ValueError(f"t must have shape [B] = [{B}] to match x, got {list(t.shape)}")
    # The range check reads values, which on a GPU would stall the host every call; there an
    # out-of-range index still fails, through CUDA's own device-side assert.
    if t.device.type == "cpu" and B and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"timestep indices must lie in [0, {T - 1}], got [{int(t.min())}, {int(t.max())}]")
    return t.to(device=x.device, dtype=torch.long)


def extract(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Pick ``values[t]`` per batch element and shape it [B, 1, 1, ...] to broadcast against ``x``."""
    out = values.to(x.device)[t].to(x.dtype)  # [B]
    return out.view(x.shape[0], *([1] * (x.ndim - 1)))  # [B, 1, 1, 1] for images


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t, noise: torch.Tensor | None = None):
    """Draw x_t ~ q(x_t | x_0) in one step; returns ``(x_t, noise)``.

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eps ~ N(0, I)  (Ho et al. 2020, eq. 4)
    """
    t = timesteps_like(t, x0, schedule.T)
    if noise is None:
        noise = torch.randn_like(x0)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise has shape {list(noise.shape)}, x0 has {list(x0.shape)}")
    x_t = extract(schedule.sqrt_alpha_bars, t, x0) * x0 + extract(schedule.sqrt_one_minus_alpha_bars, t, x0) * noise
    return x_t, noise


def predict_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """Invert eq. 4 for x_0 given a noise estimate: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).

    (Ho et al. 2020, eq. 15.) With the true noise this returns x_0 exactly; with a network's estimate
    it is the network's current guess of the clean image.
    """
    t = timesteps_like(t, x_t, schedule.T)
    return (x_t - extract(schedule.sqrt_one_minus_alpha_bars, t, x_t) * eps) / extract(schedule.sqrt_alpha_bars, t, x_t)


def predict_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
    """Eq. 4 solved for the noise: eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t).

    The inverse of :func:`predict_x0`: given an estimate of x_0 (a clipped one, say), the noise
    that, with it, makes up x_t.
    """
    t = timesteps_like(t, x_t, schedule.T)
    signal, noise = extract(schedule.sqrt_alpha_bars, t, x_t), extract(schedule.sqrt_one_minus_alpha_bars, t, x_t)
    return (x_t - signal * x0) / noise


def score_from_eps(schedule: NoiseSchedule, t, eps: torch.Tensor) -> torch.Tensor:
    """The score grad_x log q_t(x_t) from a noise prediction: -eps / sqrt(1 - alpha_bar_t).

    Tweedie's formula: E[x_0 | x_t] = (x_t + (1 - alpha_bar_t) score) / sqrt(alpha_bar_t), which
    with eq. 15 gives score = -E[eps | x_t] / sqrt(1 - alpha_bar_t) (Song et al. 2021b; Luo 2022).
    """
    t = timesteps_like(t, eps, schedule.T)
    return -eps / extract(schedule.sqrt_one_minus_alpha_bars, t, eps)


def v_from_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """The "velocity" target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022)."""
    x0 = predict_x0(schedule, x_t, t, eps)
    t = timesteps_like(t, x_t, schedule.T)
    return extract(schedule.sqrt_alpha_bars, t, x_t) * eps - extract(schedule.sqrt_one_minus_alpha_bars, t, x_t) * x0


def eps_from_v(schedule: NoiseSchedule, x_t: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`v_from_eps`: eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v.

    (With a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t), a^2 + b^2 = 1: b x_t + a v
    = b (a x0 + b eps) + a (a eps - b x0) = eps.)
    """
    t = timesteps_like(t, x_t, schedule.T)
    return extract(schedule.sqrt_one_minus_alpha_bars, t, x_t) * x_t + extract(schedule.sqrt_alpha_bars, t, x_t) * v


def q_posterior(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t):
    """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7).

    mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
    variance = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t, shaped [B, 1, 1, 1].
    At index t = 0 the variance is exactly 0 and the mean is x_0.
    """
    if x0.shape != x_t.shape:
        raise ValueError(f"x0 has shape {list(x0.shape)} but x_t has {list(x_t.shape)}")
    t = timesteps_like(t, x_t, schedule.T)
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    return mean, extract(schedule.posterior_variance, t, x_t)


def ddpm_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, *, y: torch.Tensor | None = None,
              t: torch.Tensor | None = None, eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
              min_snr: float | None = None):
    """The simplified DDPM objective, L_simple (Ho et al. 2020, eq. 14; Algorithm 1).

    Draw t uniformly and eps ~ N(0, I), form x_t with eq. 4 and regress the model's eps_hat onto eps
    with a mean squared error. ``generator`` (on ``x0.device``) makes the draws reproducible; ``t``
    and ``eps`` may be given instead. ``y``: class labels for a conditional model, ``model(x_t, t, y)``.

    ``min_snr=gamma`` weights each image's error by min(SNR_t, gamma) / SNR_t, with SNR_t =
    alpha_bar_t / (1 - alpha_bar_t) (Min-SNR-gamma, Hang et al. 2023, the eps-prediction form): the
    low-noise steps, whose eps is hard to read yet matters little to the image, stop dominating the
    gradient. Noisy steps (SNR_t <= gamma) keep weight 1.
    """
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.T, (B,), device=x0.device, generator=generator)
    if eps is None:
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t, _ = q_sample(schedule, x0, t, eps)
    eps_hat = model(x_t, t) if y is None else model(x_t, t, y)
    if eps_hat.shape != eps.shape:
        raise ValueError(f"the model returned shape {list(eps_hat.shape)} for input {list(x_t.shape)}; "
                         "an eps-prediction model must return its input's shape")
    if min_snr is None:
        return F.mse_loss(eps_hat.float(), eps.float())
    alpha_bar = schedule.alpha_bars.to(x0.device)[t].double()
    snr = alpha_bar / (1 - alpha_bar)
    weight = (snr.clamp(max=min_snr) / snr).float()  # [B], in (0, 1]
    per_image = (eps_hat.float() - eps.float()).square().flatten(1).mean(dim=1)  # [B]
    return (weight * per_image).mean()


@dataclass(frozen=True)
class DDPMLoss:
    """L_simple as a training objective for :func:`ddpm_lib.train`: ``loss_fn(model, batch, generator)``.

    An objective is any callable of that form returning a scalar (or a dict of scalars whose
    ``"loss"`` is optimised and the rest logged); this one calls :func:`ddpm_loss` on the batch's
    images. ``to(device)`` moves the schedule once, not every step.

    ``label_dropout``: None trains an unconditional model and ignores labels. A probability p
    trains a class-conditional one (``UNet(num_classes=K)``) on the batch's labels, each replaced by
    the null class K with probability p, so that one network learns both the conditional and the
    unconditional noise prediction that classifier-free guidance combines (Ho & Salimans 2022).
    """

    schedule: NoiseSchedule
    label_dropout: float | None = None
    min_snr: float | None = None  # Min-SNR-gamma loss weighting; see ddpm_loss

    def __post_init__(self):
        if self.label_dropout is not None and not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be None or a probability in [0, 1], got {self.label_dropout}")
        if self.min_snr is not None and not self.min_snr > 0:
            raise ValueError(f"min_snr must be None or a positive SNR, got {self.min_snr}")

    def to(self, device) -> "DDPMLoss":
        return DDPMLoss(self.schedule.to(device), self.label_dropout, self.min_snr)

    def __call__(self, model, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        y, num_classes = None, getattr(unwrap(model), "num_classes", None)
        if (self.label_dropout is None) != (num_classes is None):
            raise ValueError("a class-conditional model (num_classes set) trains with DDPMLoss(schedule, "
                             "label_dropout=p), an unconditional one without label_dropout")
        if self.label_dropout is not None:
            if batch.labels is None:
                raise ValueError("a conditional DDPMLoss (label_dropout set) needs labels: pass train(..., labels=...)")
            y = drop_labels(batch.labels, num_classes, self.label_dropout, batch.rand(generator))
        # t, then eps: drawn through the batch so that a process sharing it draws its own rows.
        t = batch.randint(self.schedule.T, generator)
        return ddpm_loss(model, self.schedule, batch.images, y=y, t=t, eps=batch.randn(generator=generator),
                         min_snr=self.min_snr)

    def __repr__(self) -> str:  # what a checkpoint records to refuse resuming with another objective
        betas = hashlib.sha256(self.schedule.betas.double().cpu().numpy().tobytes()).hexdigest()[:12]
        dropout = f", label_dropout={self.label_dropout}" if self.label_dropout is not None else ""
        weighting = f", min_snr={self.min_snr}" if self.min_snr is not None else ""
        return f"DDPMLoss(schedule={self.schedule.name!r}, betas_sha256={betas!r}{dropout}{weighting})"


def drop_labels(y: torch.Tensor, null: int, p: float, u: torch.Tensor) -> torch.Tensor:
    """``y`` [B] with each label replaced by the null class ``null`` with probability ``p``.

    ``u`` [B]: uniform numbers in [0, 1); label k is dropped when u[k] < p.
    """
    return torch.where(u < p, torch.full_like(y, null), y)
