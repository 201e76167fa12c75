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

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .ema import make_ema, update_ema
from .loop import BatchSampler, Recorder, TrainResult, check_run, prepare_images, resolve_device


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
def gan_sample(G: Generator, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` images ``[n, C, 28, 28]`` in [-1, 1] from z ~ N(0, I) drawn with ``generator``, G in eval mode."""
    device = next(G.parameters()).device
    was_training = G.training
    G.eval()
    z = torch.randn(n, G.latent_dim, generator=generator, device=device)
    images = G(z)
    G.train(was_training)
    return images


def train_gan(G: Generator, D: Discriminator, images: torch.Tensor, *, steps: int, batch_size: int = 128,
              lr: float = 2e-4, betas=(0.5, 0.999), ema_decay: float = 0.999, device=None, seed: int = 0,
              log_every: int = 100, progress: bool = True) -> TrainResult:
    """Alternate one D step and one G step per iteration, on batches drawn with replacement.

    Returns a :class:`~ddpm_lib.loop.TrainResult` whose ``ema`` is the averaged generator and
    whose ``history`` holds per-step ``d_loss``, ``g_loss`` and the mean probabilities
    ``d_real`` = D(x) and ``d_fake`` = D(G(z)) that D assigns to real and generated batches.
    """
    check_run(steps=steps, batch_size=batch_size, log_every=log_every, ema_decay=ema_decay)
    device = resolve_device(device)
    data = prepare_images(images, G.config["out_channels"]).to(device)
    G.to(device).train()
    D.to(device).train()
    ema = make_ema(G)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    generator = torch.Generator(device=device).manual_seed(seed)
    batches = BatchSampler(data, None, batch_size, sampling="replacement", seed=seed, generator=generator)
    recorder = Recorder(steps=steps, desc="training the GAN", progress=progress, shown=("d_loss", "g_loss"))
    clock = time.perf_counter()
    for step in range(steps):
        real = batches(step, device).images
        z = torch.randn(len(real), G.latent_dim, device=device, generator=generator)
        fake = G(z)

        real_logits, fake_logits = D(real), D(fake.detach())  # D step: G held fixed
        d_loss = discriminator_loss(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        g_loss = generator_loss(D(fake))  # G step: gradients flow through D into G
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

        update_ema(ema, G, step, ema_decay)
        recorder.add({"d_loss": d_loss, "g_loss": g_loss, "d_real": torch.sigmoid(real_logits).mean(),
                      "d_fake": torch.sigmoid(fake_logits).mean()})
        if (step + 1) % log_every == 0:
            recorder.flush()
    recorder.close()
    return TrainResult(recorder.history, ema, time.perf_counter() - clock)
