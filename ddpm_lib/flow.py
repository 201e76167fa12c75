"""Flow matching on a straight path (Lipman et al. 2023; Liu et al. 2023, "rectified flow").

The path from data to noise is a straight line, x_tau = (1 - tau) x0 + tau eps for tau in [0, 1]
(tau = 1 is pure noise, as t = T is in the diffusion chapters). Along it x_tau moves with velocity
d x_tau / d tau = eps - x0, and a network trained to regress that target on x_tau learns the
velocity field v(x, tau) = E[eps - x0 | x_tau = x], whose ODE carries noise at tau = 1 onto the
data at tau = 0. Like DDPM's, this path is Gaussian given x0; it differs in its scales (1 - tau
and tau instead of sqrt(alpha_bar) and sqrt(1 - alpha_bar)) and in the target (the velocity, a
fixed linear combination of eps and x0, instead of eps). :class:`ReflowLoss` straightens a trained
flow by training again on the pairs of noise and image that its own ODE makes.

The network is the same U-Net: its time input takes tau scaled to the diffusion timesteps' range,
``TIME_SCALE * tau``, so the sinusoidal embedding sees numbers of the size it was designed for.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from .distributed import unwrap
from .sampling import count_call

TIME_SCALE = 1000.0  # tau in [0, 1] -> the network's time input in [0, 1000]


def flow_path(x0: torch.Tensor, eps: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """x_tau = (1 - tau) x0 + tau eps, with ``tau`` [B] broadcast over each image."""
    tau = tau.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))  # [B, 1, 1, 1]
    return (1 - tau) * x0 + tau * eps


def flow_matching_loss(model, batch, generator: torch.Generator | None = None) -> torch.Tensor:
    """Conditional flow matching as an objective for :func:`ddpm_lib.train`.

    Draw tau ~ U(0, 1) and eps ~ N(0, I), form x_tau on the straight path and regress the network's
    output onto the path's velocity eps - x0 with a mean squared error (per pixel, like L_simple).
    """
    if getattr(unwrap(model), "num_classes", None) is not None:
        raise ValueError("flow_matching_loss trains unconditional models; this one is class-conditional")
    tau = batch.rand(generator)  # [B]; drawn through the batch, like every objective's random numbers
    return straight_line_loss(model, batch.images, batch.randn(generator=generator), tau)


def straight_line_loss(model, x0: torch.Tensor, x1: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The mean squared error between the network's velocity at x_tau and the straight line's, x1 - x0."""
    v_hat = model(flow_path(x0, x1, tau), TIME_SCALE * tau)
    if v_hat.shape != x0.shape:
        raise ValueError(f"the model returned shape {list(v_hat.shape)} for images {list(x0.shape)}")
    return F.mse_loss(v_hat.float(), (x1 - x0).float())


class ReflowLoss:
    """One reflow step of rectified flow (Liu et al. 2023) as an objective for :func:`ddpm_lib.train`.

    Flow matching pairs each image with *independent* noise, so straight lines between pairs cross,
    and the learned velocity (their average where they cross) bends. Reflow trains on pairs that
    the model itself made: noise ``x1`` and the image ``x0`` its ODE carries that noise to. Those
    lines do not cross (an ODE's paths never do), so the new field is straighter and Euler's method
    needs fewer steps. Train with ``images`` = the generated x0 [N, C, H, W] and ``labels`` =
    ``torch.arange(N)``: a batch's labels say which rows of ``noise`` [N, C, H, W] started them.
    """

    def __init__(self, noise: torch.Tensor):
        if not isinstance(noise, torch.Tensor) or not noise.dtype.is_floating_point or noise.ndim != 4:
            raise ValueError("noise must be the float tensor [N, C, H, W] of the pairs' starting noises")
        self.noise = noise

    def to(self, device) -> "ReflowLoss":
        return ReflowLoss(self.noise.to(device))

    def __call__(self, model, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        if batch.labels is None:
            raise ValueError("ReflowLoss pairs each image with its noise by index: pass train(..., labels=torch.arange(N))")
        if int(batch.labels.max()) >= len(self.noise) or batch.images.shape[1:] != self.noise.shape[1:]:
            raise ValueError(f"the pairs do not match: {len(self.noise)} noises of shape {list(self.noise.shape[1:])}, "
                             f"an image of shape {list(batch.images.shape[1:])} with index {int(batch.labels.max())}")
        tau = batch.rand(generator)  # [B]
        return straight_line_loss(model, batch.images, self.noise[batch.labels], tau)

    def __repr__(self) -> str:  # what a checkpoint records: the pairs' identity, not their values
        digest = hashlib.sha256(self.noise.detach().float().cpu().numpy().tobytes()).hexdigest()[:12]
        return f"ReflowLoss(noise={list(self.noise.shape)}, sha256={digest!r})"


def flow_velocity(model):
    """A trained network as the velocity field ``v(x, tau)`` that :func:`flow_sample` integrates."""
    return lambda x, tau: model(x, TIME_SCALE * tau)


@torch.no_grad()
def flow_sample(velocity_fn, x_1: torch.Tensor, *, num_steps: int = 50, method: str = "euler",
                callback=None) -> torch.Tensor:
    """Integrate dx / dtau = v(x, tau) from noise ``x_1`` at tau = 1 down to tau = 0, on a uniform grid.

    ``velocity_fn(x [B, C, H, W], tau float [B]) -> v [B, C, H, W]``. ``method="euler"`` takes one
    evaluation a step, ``"heun"`` two (Euler's step, then the average of the slopes at both ends:
    second order). Evaluations are counted by :func:`ddpm_lib.count_nfe`. Like the diffusion
    samplers' callbacks, ``callback(tau, x_next, x0_hat)`` is called after every step with the time
    just evaluated, the new sample and the clean image the velocity points to, x0_hat = x - tau v
    (on the straight path x = (1 - tau) x0 + tau eps and v = eps - x0).
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not isinstance(x_1, torch.Tensor) or not x_1.dtype.is_floating_point or x_1.ndim < 2:
        raise TypeError("x_1 must be a batch of Gaussian noise, a float tensor [B, C, H, W]")

    def v(x, tau):
        count_call()
        out = velocity_fn(x, torch.full((x.shape[0],), tau, device=x.device, dtype=x.dtype))
        if out.shape != x.shape:
            raise ValueError(f"the velocity has shape {list(out.shape)} for x of shape {list(x.shape)}")
        return out.to(x.dtype)

    taus = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64).tolist()
    x = x_1
    for tau, tau_next in zip(taus[:-1], taus[1:]):
        h = tau_next - tau  # negative: we integrate towards the data
        slope = v(x, tau)
        x0_hat = x - tau * slope
        if method == "euler":
            x = x + h * slope
        else:
            x_euler = x + h * slope
            x = x + h * 0.5 * (slope + v(x_euler, tau_next))
        if callback is not None:
            callback(tau, x, x0_hat)
    return x
