"""Samplers: run the learned reverse process from pure noise x_T to an image x_0.

The model contract: ``model(x_t [B, C, H, W], t long [B]) -> eps_hat [B, C, H, W]``, a prediction of
the noise in x_t. Both samplers run under ``torch.no_grad()``, draw their noise on ``x_T``'s device in
``x_T``'s dtype (pass a ``torch.Generator`` on that device for reproducible draws), and leave the
model's train/eval mode alone (call ``model.eval()`` first if it has dropout or batch norm).

Every sampler is the same loop (:func:`run_sampler`) around the same denoising step
(:func:`denoise`: eps_hat -> x0_hat -> optional clipping -> the eps that goes with it); samplers
differ only in the timesteps they visit and in their update rule, a function
``update(x_t, prediction, t, i, i_prev) -> x_prev``.

The options every sampler shares are applied in one place, :func:`denoise`, and each sampler
passes them on as ``**options`` (:func:`sampler_options` checks them and sets their defaults):

- ``clip_x0`` (True): clip x0_hat to the data range [-1, 1] and re-derive eps from it;
- ``y``, ``guidance_scale`` (None): class labels, and classifier-free guidance (:func:`conditioned`);
- ``amp`` ("off": float32, reproducible to the last digit): "auto" runs the network in the
  precision :func:`ddpm_lib.train` would train it in on this device.

``callback(t, x, x0_hat)``, if given, is called after every step with the timestep index ``t`` just
denoised, the new sample (x_{t-1} in the papers' numbering) and the model's current guess of x_0.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import NamedTuple

import torch

from .diffusion import predict_eps, predict_x0, q_posterior
from .precision import autocast
from .schedule import NoiseSchedule
from .timesteps import timestep_grid


class NFECount:
    """The number of network evaluations (NFE) counted by :func:`count_nfe`."""

    def __init__(self):
        self.nfe = 0


_counters: list[NFECount] = []


@contextmanager
def count_nfe():
    """Count the network evaluations of every sampler run inside: ``with count_nfe() as c: ...; c.nfe``.

    Every sampler calls the network through :func:`denoise`, which is where the counting happens,
    so a new sampler is counted without doing anything. One call on a batch is one evaluation; a
    guided call (:func:`conditioned`) is one evaluation of a batch twice as large.
    """
    counter = NFECount()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


def conditioned(model, y: torch.Tensor | None = None, guidance_scale: float | None = None):
    """``model`` as a function ``(x_t, t) -> eps_hat`` for class labels ``y`` [B], guided or not.

    Without ``guidance_scale`` it is ``model(x_t, t, y)``. With a scale w it is classifier-free
    guidance (Ho & Salimans 2022): eps_u + w (eps_c - eps_u), from the conditional prediction
    eps_c = model(x_t, t, y) and the unconditional eps_u = model(x_t, t, K) with the null class K,
    both from one forward pass on the doubled batch. w = 0 is unconditional, w = 1 plainly
    conditional, w > 1 pushes the sample towards what makes y likely. (Ho & Salimans write the
    same combination as (1 + w') eps_c - w' eps_u, with w' = w - 1.)
    """
    if y is None:
        if guidance_scale is not None:
            raise ValueError("guidance_scale needs class labels y to guide towards")
        return model
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        raise ValueError("class labels y need a class-conditional model, e.g. UNet(num_classes=K)")
    if guidance_scale is None:
        return lambda x_t, t: model(x_t, t, y)
    null = torch.full_like(y, num_classes)

    def guided(x_t, t):
        both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))  # [2B, C, H, W]
        eps_c, eps_u = both.chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    return guided


def scales(schedule: NoiseSchedule, i: int) -> tuple[float, float]:
    """(sqrt(alpha_bar), sqrt(1 - alpha_bar)) at index i (the papers' alpha_t and sigma_t; the noise level
    sigma of the notation page is their ratio); (1, 0) for i = -1, the data.

    Read from the schedule's square-root tables, computed in float64: 1 - alpha_bar formed from the
    float32 alpha_bar can round to 0 at small t.
    """
    if i < 0:
        return 1.0, 0.0
    return float(schedule.sqrt_alpha_bars[i]), float(schedule.sqrt_one_minus_alpha_bars[i])


def count_call() -> None:
    """Record one network evaluation in every open :func:`count_nfe` block (samplers call this)."""
    for counter in _counters:
        counter.nfe += 1


class Prediction(NamedTuple):
    """The network's reading of x_t: the noise in it and the clean image, consistent with each other."""

    eps: torch.Tensor  # eps_hat [B, C, H, W]
    x0: torch.Tensor  # x0_hat [B, C, H, W]


SHARED_OPTIONS = {"clip_x0": True, "y": None, "guidance_scale": None, "amp": "off"}  # with the samplers' defaults


def sampler_options(options: dict) -> dict:
    """``options`` completed with the defaults of :data:`SHARED_OPTIONS`; an unknown name is an error."""
    unknown = sorted(set(options) - set(SHARED_OPTIONS))
    if unknown:
        raise TypeError(f"unknown sampler option(s) {unknown}; the options every sampler shares are "
                        f"{', '.join(SHARED_OPTIONS)}")
    return {**SHARED_OPTIONS, **options}


def denoise(model, schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, *, clip_x0: bool = False,
            y=None, guidance_scale=None, amp: str = "off") -> Prediction:
    """One network evaluation turned into ``Prediction(eps, x0)``: the step every sampler shares.

    x0_hat comes from eps_hat by eq. 15 of Ho et al. 2020. With ``clip_x0`` it is clipped to the data
    range [-1, 1], and eps is re-derived from the clipped x0_hat (eq. 4 solved for eps), so that the
    pair still describes the same x_t. ``y``, ``guidance_scale``: see :func:`conditioned`. ``amp``
    ("off", "auto", "bf16", "fp16"): the precision of the network call alone, as in
    :func:`ddpm_lib.train` ("auto": what the device runs fast); the sampler's own arithmetic stays
    in x_T's dtype.
    """
    with autocast(x_t.device, amp):
        eps = conditioned(model, y, guidance_scale)(x_t, t)
    count_call()
    if eps.shape != x_t.shape:
        raise ValueError(f"the model returned shape {list(eps.shape)} for x_t of shape {list(x_t.shape)}; "
                         "check x_T's channels and size against the model")
    eps = eps.to(x_t.dtype)
    x0 = predict_x0(schedule, x_t, t, eps)  # Ho et al. 2020, eq. 15
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = predict_eps(schedule, x_t, t, x0)
    return Prediction(eps, x0)


@torch.no_grad()
def run_sampler(model, schedule: NoiseSchedule, x_T: torch.Tensor, timesteps: list[int], update, *,
                callback=None, **options) -> torch.Tensor:
    """Walk ``timesteps`` (descending indices) from x_T: denoise, then ``update`` to the next index.

    ``update(x_t, prediction, t, i, i_prev)`` returns the sample at index ``i_prev``; ``t`` is ``i``
    as a long tensor [B], and ``i_prev = -1`` after the last index (the clean image). ``options``:
    the samplers' shared options (module docstring), passed to :func:`denoise`.
    """
    options = sampler_options(options)
    if not isinstance(x_T, torch.Tensor) or not x_T.dtype.is_floating_point:
        raise TypeError("x_T must be a floating-point tensor of Gaussian noise, e.g. torch.randn(B, C, H, W)")
    if x_T.ndim < 2:
        raise ValueError(f"x_T must be batched, [B, C, H, W] for images; got shape {list(x_T.shape)}")
    x = x_T
    for k, i in enumerate(timesteps):
        i_prev = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        prediction = denoise(model, schedule, x, t, **options)
        x = update(x, prediction, t, i, i_prev)
        if callback is not None:
            callback(i, x, prediction.x0)
    return x


@torch.no_grad()
def ddpm_sample(model, schedule: NoiseSchedule, x_T: torch.Tensor, *, generator: torch.Generator | None = None,
                callback=None, **options) -> torch.Tensor:
    """Ancestral sampling, Ho et al. 2020, Algorithm 2, with step noise kappa_t^2 = beta_tilde_t
    (the paper's sigma_t^2).

    Each step predicts x0_hat (eq. 15), optionally clips it to the data range [-1, 1], and draws
    x_{t-1} from the posterior q(x_{t-1} | x_t, x0_hat) (eqs. 6-7). Without clipping this is
    Algorithm 2 exactly: mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t) is the
    same number written another way. The last step (index 0) has zero posterior variance, so it
    returns the mean and draws no noise. ``options``: the samplers' shared options (module docstring).
    """

    def update(x_t, prediction, t, i, i_prev):
        mean, variance = q_posterior(schedule, prediction.x0, x_t, t)  # eqs. 6-7
        if i == 0:
            return mean  # beta_tilde_1 = 0: the final step is deterministic
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + variance.sqrt() * z  # Algorithm 2, line 4

    return run_sampler(model, schedule, x_T, list(reversed(range(schedule.T))), update, callback=callback,
                       **options)


@torch.no_grad()
def ddim_sample(model, schedule: NoiseSchedule, x_T: torch.Tensor, *, num_steps: int = 50, eta: float = 0.0,
                spacing: str = "uniform", generator: torch.Generator | None = None, callback=None,
                **options) -> torch.Tensor:
    """DDIM sampling over a subsequence of timesteps (Song et al. 2021, eq. 12).

    x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - kappa^2) eps_hat + kappa z, with
    kappa = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)
    (eq. 16, where the paper writes sigma). ``eta = 0`` is deterministic; ``eta = 1`` with
    ``num_steps = T`` is ancestral sampling with the posterior variance and gives the same samples
    as :func:`ddpm_sample` for the same generator. After the last step alpha_bar_prev = 1, so the result is x0_hat. ``spacing`` chooses
    the timestep grid (:func:`~ddpm_lib.timesteps.timestep_grid`); ``options``: the samplers'
    shared options (module docstring).
    """
    return run_sampler(model, schedule, x_T, timestep_grid(schedule, num_steps, spacing),
                       ddim_update(schedule, eta=eta, generator=generator), callback=callback, **options)


def ddim_update(schedule: NoiseSchedule, *, eta: float = 0.0, generator: torch.Generator | None = None):
    """The DDIM step (Song et al. 2021, eq. 12) as an ``update`` for :func:`run_sampler`.

    From index i to any earlier index i_prev (-1: the clean image). ``eta = 1`` draws from the
    posterior of the chain that jumps from i_prev to i, which is ancestral sampling on a strided
    grid; ``eta = 0`` adds no noise. Editing (:mod:`ddpm_lib.editing`) steps with it too.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")

    def update(x_t, prediction, t, i, i_prev):
        (a, s), (a_prev, s_prev) = scales(schedule, i), scales(schedule, i_prev)  # sqrt(alpha_bar), sqrt(1 - ...)
        kappa = eta * s_prev / s * math.sqrt(max(1.0 - (a / a_prev) ** 2, 0.0))  # eq. 16
        direction = math.sqrt(max(s_prev**2 - kappa**2, 0.0)) * prediction.eps  # "direction pointing to x_t"
        x_prev = a_prev * prediction.x0 + direction  # eq. 12
        if eta > 0 and i_prev >= 0:
            x_prev = x_prev + kappa * torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return x_prev

    return update
