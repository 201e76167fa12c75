"""A DCGAN-style generative adversarial network for 28x28 images (Goodfellow et al. 2014; Radford et al. 2016).

The discriminator D outputs a logit, "real" meaning 1. Losses are the non-saturating ones:
    D:  -log D(x) - log(1 - D(G(z)))      G:  -log D(G(z))
(G maximises log D(G(z)) instead of minimising log(1 - D(G(z))), which saturates when D wins early).

Stabilisers, each a standard remedy for a known failure:
- spectral normalisation of D's layers (Miyato et al. 2018): bounds D's Lipschitz constant, so its
  gradients stay informative instead of exploding when it becomes confident;
- Adam with beta1 = 0.5 and lr 2e-4 (Radford et al. 2016): less momentum, since the target
  moves as the other player learns;
- batch normalisation in G only, with tanh output in [-1, 1] (Radford et al. 2016);
- an exponential moving average of G's weights (as for the diffusion model), which smooths the
  oscillation of the adversarial game; samples come from the average.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from tqdm.auto import tqdm

from .data import to_model_range
from .train import update_ema


class Generator(nn.Module):
    """``z [B, latent_dim] -> images [B, C, 28, 28]`` in [-1, 1]."""

    def __init__(self, latent_dim: int = 64, out_channels: int = 1, width: int = 64):
        super().__init__()
        self.config = {"latent_dim": latent_dim, "out_channels": out_channels, "width": width}
        self.latent_dim = latent_dim
        w = width
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 2 * w * 49, bias=False), nn.Unflatten(1, (2 * w, 7, 7)),  # [B, 2w, 7, 7]
            nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1, bias=False),  # [B, w, 14, 14]
            nn.BatchNorm2d(w), nn.ReLU(),
            nn.ConvTranspose2d(w, out_channels, 4, stride=2, padding=1),  # [B, C, 28, 28]
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator expects z of shape [B, {self.latent_dim}], got {list(z.shape)}")
        return self.net(z)


class Discriminator(nn.Module):
    """``images [B, C, 28, 28] -> logits [B]``, spectrally normalised."""

    def __init__(self, in_channels: int = 1, width: int = 64):
        super().__init__()
        self.config = {"in_channels": in_channels, "width": width}
        w = width
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(in_channels, w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # [B, w, 14, 14]
            spectral_norm(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # [B, 2w, 7, 7]
            nn.Flatten(),
            spectral_norm(nn.Linear(2 * w * 49, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[2:] != (28, 28):
            raise ValueError(f"Discriminator expects images [B, C, 28, 28], got {list(x.shape)}")
        return self.net(x).squeeze(1)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))), averaged: D's binary cross-entropy, real = 1, fake = 0."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss -log D(G(z)), averaged."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


@torch.no_grad()
def gan_sample(generator: Generator, n: int, rng: torch.Generator | None = None) -> torch.Tensor:
    """``n`` images ``[n, C, 28, 28]`` in [-1, 1] from z ~ N(0, I), with G in eval mode."""
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    z = torch.randn(n, generator.latent_dim, generator=rng, device=device)
    images = generator(z)
    generator.train(was_training)
    return images


def train_gan(generator: Generator, discriminator: Discriminator, images: torch.Tensor, *, steps: int,
              batch_size: int = 128, lr: float = 2e-4, betas=(0.5, 0.999), ema_decay: float = 0.999, device=None,
              seed: int = 0, log_every: int = 100, progress: bool = True):
    """Alternate one D step and one G step per iteration; returns ``(history, ema_generator)``.

    ``history`` holds per-step ``d_loss``, ``g_loss`` and the mean probabilities ``d_real`` = D(x)
    and ``d_fake`` = D(G(z)) that D assigns to real and generated batches.
    """
    device = torch.device(device) if device is not None else next(generator.parameters()).device
    data = to_model_range(images) if images.dtype == torch.uint8 else images.float()
    data = data.to(device)
    generator.to(device).train()
    discriminator.to(device).train()
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    rng = torch.Generator(device=device).manual_seed(seed)
    history = {"d_loss": [], "g_loss": [], "d_real": [], "d_fake": []}
    pending = []
    bar = tqdm(total=steps, disable=not progress, desc="training the GAN", unit="step", mininterval=1.0)
    B = min(batch_size, len(data))
    for step in range(steps):
        real = data[torch.randint(0, len(data), (B,), device=device, generator=rng)]
        z = torch.randn(B, generator.latent_dim, device=device, generator=rng)
        fake = generator(z)

        real_logits, fake_logits = discriminator(real), discriminator(fake.detach())  # D step: G held fixed
        d_loss = discriminator_loss(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        g_loss = generator_loss(discriminator(fake))  # G step: gradients flow through D into G
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

        update_ema(ema, generator, step, ema_decay)
        pending.append(torch.stack([d_loss.detach(), g_loss.detach(), torch.sigmoid(real_logits).mean().detach(),
                                    torch.sigmoid(fake_logits).mean().detach()]))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            for row in torch.stack(pending).tolist():
                for key, value in zip(history, row):
                    history[key].append(value)
            bar.update(len(pending))
            bar.set_postfix(d=f"{history['d_loss'][-1]:.2f}", g=f"{history['g_loss'][-1]:.2f}", refresh=False)
            pending.clear()
    bar.close()
    return history, ema
