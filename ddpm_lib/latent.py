"""Latent diffusion (Rombach et al. 2022): diffuse in the latent space of an autoencoder.

An :class:`Autoencoder` compresses a 28x28 digit, padded to 32x32 with background, into a spatial
latent z [B, 4, 8, 8] and decodes it back ("perceptual compression"). It is trained once, with a
reconstruction loss and a very light KL term towards N(0, I) (:class:`AutoencoderLoss`), which keeps
the latents from drifting to large values without blurring them the way chapter 1's VAE is blurred.

A diffusion model then learns the distribution of the latents, scaled by one number to unit
variance (:func:`latent_scale`, the reason behind Stable Diffusion's 0.18215). :class:`LatentDiffusion`
joins the two: called like its denoiser on latents, so that the book's samplers run it unchanged,
with :meth:`LatentDiffusion.decode` to turn their output into images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import as_model, model_record
from .distributed import unwrap
from .loop import prepare_images

PAD = 2  # 28 + 2 * PAD = 32, which halves twice to 8


class ResBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))), at constant channels and size."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Autoencoder(nn.Module):
    """``Autoencoder(in_channels=1, latent_channels=4, width=32)``: images ``[B, C, 28, 28]`` in
    [-1, 1] <-> latents ``[B, latent_channels, 8, 8]``.

    ``encode(x) -> (mean, logvar)`` of q(z | x); ``decode(z)`` -> images; ``forward(x)`` decodes the
    mean, the deterministic reconstruction.
    """

    image_size = 28

    def __init__(self, in_channels: int = 1, latent_channels: int = 4, width: int = 32):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("latent_channels", latent_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(width, int) or width < 8 or width % 8:
            raise ValueError(f"width must be a positive multiple of 8 (GroupNorm's 8 groups), got {width!r}")
        self.config = {"in_channels": in_channels, "latent_channels": latent_channels, "width": width}
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.latent_shape = (latent_channels, 8, 8)
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), ResBlock(w),  # [B, w, 32, 32]
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), ResBlock(2 * w),  # [B, 2w, 16, 16]
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), ResBlock(2 * w),  # [B, 2w, 8, 8]
            nn.GroupNorm(8, 2 * w), nn.SiLU(), nn.Conv2d(2 * w, 2 * latent_channels, 3, padding=1))
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, 2 * w, 3, padding=1), ResBlock(2 * w),  # [B, 2w, 8, 8]
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * w, 2 * w, 3, padding=1), ResBlock(2 * w),  # 16x16
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * w, w, 3, padding=1), ResBlock(w),  # [B, w, 32, 32]
            nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, in_channels, 3, padding=1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, C, 28, 28]`` -> ``(mean, logvar)``, each ``[B, latent_channels, 8, 8]``."""
        size = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, size, size):
            raise ValueError(f"the autoencoder takes images [B, {self.in_channels}, {size}, {size}], "
                             f"got {list(x.shape)}")
        h = F.pad(x, (PAD,) * 4, value=-1.0)  # [B, C, 32, 32]: background all round
        mean, logvar = self.encoder(h).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z [B, latent_channels, 8, 8]`` -> images ``[B, C, 28, 28]`` (about [-1, 1], not clipped)."""
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"the autoencoder decodes latents [B, {', '.join(map(str, self.latent_shape))}], "
                             f"got {list(z.shape)}")
        return self.decoder(z)[..., PAD:-PAD, PAD:-PAD]

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        """The reconstruction of ``x`` from the mean of q(z | x); with ``noise`` [B, 4, 8, 8], from
        the sample z = mean + std noise, returned with ``(mean, logvar)`` for the loss."""
        mean, logvar = self.encode(x)
        if noise is None:
            return self.decode(mean)
        return self.decode(mean + (0.5 * logvar).exp() * noise), mean, logvar


@dataclass(frozen=True)
class AutoencoderLoss:
    """The autoencoder's objective for :func:`ddpm_lib.train`: per image, the L1 reconstruction
    error summed over pixels plus ``kl_weight`` times KL(q(z | x) || N(0, I)) summed over the
    latent, as in latent diffusion's "KL-reg" autoencoders (whose weight is 1e-6). The decoder sees a
    sample z = mean + std n, so it learns to tolerate the small noise the KL term keeps.
    Logs the mean absolute pixel error ("l1") and the KL per image ("kl")."""

    kl_weight: float = 1e-6

    def __post_init__(self):
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")

    def __call__(self, model, batch, generator: torch.Generator | None = None) -> dict:
        ae = unwrap(model)  # under DistributedDataParallel or torch.compile
        if not isinstance(ae, Autoencoder):
            raise TypeError(f"AutoencoderLoss trains an Autoencoder, got {type(ae).__name__}")
        n = batch.randn(*ae.latent_shape, generator=generator)  # [B, 4, 8, 8]
        x_hat, mean, logvar = model(batch.images, n)  # through the wrappers, for their hooks
        error = (x_hat.float() - batch.images).abs().flatten(1)  # [B, C * 28 * 28]
        kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).flatten(1).sum(1)  # [B]
        loss = (error.sum(1) + self.kl_weight * kl).mean()
        return {"loss": loss, "l1": error.mean().detach(), "kl": kl.mean().detach()}


@torch.no_grad()
def encode_images(autoencoder: Autoencoder, images: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
    """The posterior means of ``images`` (uint8 [N, 28, 28] or float [N, C, 28, 28] in [-1, 1]),
    in batches: the unscaled latents [N, 4, 8, 8]."""
    x = prepare_images(images, autoencoder.in_channels)
    device = next(autoencoder.parameters()).device
    return torch.cat([autoencoder.encode(part.to(device))[0].cpu() for part in x.split(batch_size)])


def latent_scale(latents: torch.Tensor) -> float:
    """1 / std of the latents: the factor that gives them unit variance (Rombach et al. 2022, Sec. 4.3.2,
    Stable Diffusion's 0.18215 for its own autoencoder)."""
    if not torch.isfinite(latents).all() or latents.numel() < 2:
        raise ValueError("latents must be finite and more than one number")
    return float(1.0 / latents.float().std())


class LatentDiffusion(nn.Module):
    """``LatentDiffusion(autoencoder, denoiser, scale)``: a diffusion model of ``scale * z``.

    Called as ``ldm(z, t_or_sigma, y=None)`` it is ``denoiser`` on scaled latents
    ``[B, 4, 8, 8]``, so every sampler of the book runs it as it runs a pixel model, from noise of
    the latents' shape (``ldm.latent_shape``). :meth:`encode` maps images to scaled latents and
    :meth:`decode` maps a sampler's output back to images.
    """

    def __init__(self, autoencoder, denoiser, scale: float):
        super().__init__()
        self.autoencoder, self.denoiser = as_model(autoencoder, "autoencoder"), as_model(denoiser, "denoiser")
        if not isinstance(self.autoencoder, Autoencoder):
            raise TypeError(f"autoencoder must be a ddpm_lib Autoencoder, got {type(self.autoencoder).__name__}")
        channels = getattr(self.denoiser, "in_channels", None)
        if channels != self.autoencoder.latent_channels:
            raise ValueError(f"the denoiser takes {channels} channel(s) but the autoencoder's latents have "
                             f"{self.autoencoder.latent_channels}: they belong to different models")
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.scale = float(scale)
        self.latent_shape = self.autoencoder.latent_shape
        self.in_channels = channels
        self.num_classes = getattr(self.denoiser, "num_classes", None)
        self.config = {"autoencoder": model_record(self.autoencoder), "denoiser": model_record(self.denoiser),
                       "scale": self.scale}

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"LatentDiffusion runs on latents [B, {', '.join(map(str, self.latent_shape))}], "
                             f"got {list(z.shape)}: draw the starting noise in the latents' shape")
        return self.denoiser(z, t, y) if y is not None else self.denoiser(z, t)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, 28, 28]`` in [-1, 1] -> scaled latents ``[B, 4, 8, 8]`` (posterior means)."""
        return self.scale * self.autoencoder.encode(x)[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, 4, 8, 8]`` -> images ``[B, C, 28, 28]``, clipped to [-1, 1]."""
        return self.autoencoder.decode(z / self.scale).clamp(-1, 1)
