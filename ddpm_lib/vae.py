"""A convolutional variational autoencoder for 28x28 images (Kingma & Welling 2014).

Encoder q_phi(z | x) = N(mu(x), diag(exp(logvar(x)))), decoder p_theta(x | z) with one Bernoulli
per pixel (pixel intensities in [0, 1] as probabilities), prior p(z) = N(0, I). Training
maximises the evidence lower bound (ELBO)
    log p(x) >= E_q[log p_theta(x | z)] - KL(q_phi(z | x) || p(z)),
with the KL in closed form and the expectation estimated with one reparameterised sample.
Images enter and leave in the model range [-1, 1], like everywhere else in ddpm_lib.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import unwrap
from .loop import TrainResult
from .train import train


class VAE(nn.Module):
    """``VAE(latent_dim)``: ``[B, C, 28, 28]`` in [-1, 1] <-> latent codes ``[B, latent_dim]``."""

    def __init__(self, in_channels: int = 1, latent_dim: int = 16, width: int = 32):
        super().__init__()
        self.config = {"in_channels": in_channels, "latent_dim": latent_dim, "width": width}
        self.in_channels, self.latent_dim = in_channels, latent_dim
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, w, 4, stride=2, padding=1), nn.GELU(),  # [B, w, 14, 14]
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.GELU(),  # [B, 2w, 7, 7]
            nn.Flatten(),  # [B, 2w * 49]
            nn.Linear(2 * w * 49, 256), nn.GELU(),
            nn.Linear(256, 2 * latent_dim),  # mu and logvar side by side
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 256), nn.GELU(),
            nn.Linear(256, 2 * w * 49), nn.GELU(),
            nn.Unflatten(1, (2 * w, 7, 7)),  # [B, 2w, 7, 7]
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.GELU(),  # [B, w, 14, 14]
            nn.ConvTranspose2d(w, in_channels, 4, stride=2, padding=1),  # [B, C, 28, 28] logits
        )

    def encode(self, x: torch.Tensor):
        """``x [B, C, 28, 28]`` -> ``(mu, logvar)``, each ``[B, latent_dim]``."""
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, 28, 28):
            raise ValueError(f"VAE expects images [B, {self.in_channels}, 28, 28], got {list(x.shape)}")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-20.0, 10.0)  # keeps exp(logvar) finite early in training

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits ``[B, C, 28, 28]`` of p_theta(x | z)."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image, mapped to [-1, 1]."""
        return 2.0 * torch.sigmoid(self.decode_logits(z)) - 1.0

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, eps: torch.Tensor | None = None):
        """Encode, draw z = mu + sigma * eps (the reparameterisation trick), decode: ``(logits, mu, logvar)``.

        ``eps`` [B, latent_dim]: the standard normal draw, if given; else drawn from ``generator``.
        """
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + (0.5 * logvar).exp() * eps
        return self.decode_logits(z), mu, logvar


def vae_loss(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float = 1.0):
    """Negative ELBO per image, in nats: ``(loss, reconstruction, kl)``, each averaged over the batch.

    reconstruction = -log p(x | z) = binary cross-entropy of the pixels, mapped to [0, 1];
    kl = KL(N(mu, sigma^2) || N(0, 1)) = 1/2 sum(mu^2 + sigma^2 - log sigma^2 - 1)  (Kingma & Welling, App. B).
    """
    target = (x + 1.0) / 2.0  # [-1, 1] -> [0, 1]
    reconstruction = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(1)
    return (reconstruction + beta * kl).mean(), reconstruction.mean(), kl.mean()


@torch.no_grad()
def vae_sample(vae: VAE, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw z ~ N(0, I) and decode: ``n`` images ``[n, C, 28, 28]`` in [-1, 1] (the decoder's mean)."""
    device = next(vae.parameters()).device
    z = torch.randn(n, vae.latent_dim, generator=generator, device=device)
    return vae.decode(z)


@dataclass(frozen=True)
class VAELoss:
    """The negative ELBO as an objective for :func:`ddpm_lib.train`: ``loss_fn(model, batch, generator)``.

    Optimises ``loss`` and logs its two terms, ``reconstruction`` and ``kl``; ``generator`` draws
    the reparameterisation noise. ``beta`` weights the KL term (beta = 1: the ELBO).
    """

    beta: float = 1.0

    def __call__(self, model: VAE, batch, generator: torch.Generator | None = None) -> dict:
        eps = batch.randn(unwrap(model).latent_dim, generator=generator)  # [B, latent_dim]
        logits, mu, logvar = model(batch.images, eps=eps)
        loss, reconstruction, kl = vae_loss(logits, batch.images, mu, logvar, self.beta)
        return {"loss": loss, "reconstruction": reconstruction, "kl": kl}


def train_vae(vae: VAE, images: torch.Tensor, *, steps: int, batch_size: int = 128, lr: float = 1e-3,
              beta: float = 1.0, device=None, seed: int = 0, log_every: int = 100,
              progress: bool = True) -> TrainResult:
    """The VAE's settings on the shared loop: ``train(vae, images=images, loss_fn=VAELoss(beta), ...)``
    with plain Adam (no gradient clipping) and batches drawn with replacement.

    Returns the :class:`~ddpm_lib.loop.TrainResult`: ``history`` holds the per-step ``loss``,
    ``reconstruction`` and ``kl``; ``ema`` the averaged VAE.
    """
    result = train(vae, images=images, loss_fn=VAELoss(beta), steps=steps, batch_size=batch_size, lr=lr,
                   grad_clip=None, amp="off", device=device, seed=seed, sampling="replacement",
                   log_every=log_every, progress=progress, channels_last=False)
    return result
