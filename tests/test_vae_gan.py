import math

import pytest
import torch
from toy_data import bars as toy_digits

from ddpm_lib.gan import Discriminator, Generator, discriminator_loss, gan_sample, generator_loss, train_gan
from ddpm_lib.vae import VAE, train_vae, vae_loss, vae_sample


def test_vae_shapes_and_input_check():
    vae = VAE(latent_dim=8)
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    logits, mu, logvar = vae(x)
    assert logits.shape == x.shape and mu.shape == logvar.shape == (5, 8)
    samples = vae_sample(vae, 3)
    assert samples.shape == (3, 1, 28, 28) and samples.min() >= -1 and samples.max() <= 1
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\]"):
        vae.encode(torch.zeros(2, 1, 32, 32))


def test_vae_kl_term_is_the_closed_form_gaussian_kl():
    # KL(N(mu, s^2) || N(0, 1)) = E_q[log q(z) - log p(z)]; estimate the expectation by Monte Carlo
    # and compare with the closed form the loss uses.
    mu, logvar = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64), torch.tensor([[0.0, -2.0, 1.0]], dtype=torch.float64)
    s = (0.5 * logvar).exp()
    z = mu + s * torch.randn(400_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_q = -0.5 * ((z - mu) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)
    log_p = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    mc = (log_q - log_p).sum(1).mean().item()
    x = torch.zeros(1, 1, 28, 28, dtype=torch.float64)
    _, _, kl = vae_loss(torch.zeros_like(x), x, mu, logvar)
    assert kl.item() == pytest.approx(mc, rel=0.01)


def test_vae_reconstruction_term_is_the_bernoulli_negative_log_likelihood():
    # -log p(x | z) = -sum[x log p + (1 - x) log(1 - p)] with p = sigmoid(logits), x mapped to [0, 1].
    logits = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    p, target = torch.sigmoid(logits), (x + 1) / 2
    nll = -(target * p.log() + (1 - target) * (1 - p).log()).flatten(1).sum(1).mean()
    zeros = torch.zeros(2, 4, dtype=torch.float64)
    loss, rec, kl = vae_loss(logits, x, zeros, zeros)
    assert rec.item() == pytest.approx(nll.item(), rel=1e-10) and kl.item() == 0.0 and loss.item() == rec.item()


def test_vae_training_lowers_the_negative_elbo():
    torch.manual_seed(0)
    result = train_vae(VAE(latent_dim=4, width=8), toy_digits(), steps=60, batch_size=32, lr=3e-3, device="cpu",
                       progress=False)
    history = result.history
    assert sorted(history) == ["kl", "loss", "reconstruction"] and len(history["loss"]) == 60
    assert result.losses is history["loss"] and not result.ema.training
    assert sum(history["loss"][-10:]) / 10 < 0.5 * sum(history["loss"][:5]) / 5


def test_gan_shapes_and_input_checks():
    G, D = Generator(latent_dim=16, width=8), Discriminator(width=8)
    images = G(torch.randn(4, 16))
    assert images.shape == (4, 1, 28, 28) and images.abs().max() <= 1
    assert D(images).shape == (4,)
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        G(torch.randn(4, 8))
    with pytest.raises(ValueError, match="28, 28"):
        D(torch.zeros(2, 1, 32, 32))


def test_gan_losses_at_an_undecided_discriminator_and_the_non_saturating_gradient():
    # D(x) = sigmoid(0) = 1/2 everywhere: D's loss is -log 1/2 - log 1/2 = 2 log 2, G's is log 2.
    zero = torch.zeros(8)
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert generator_loss(zero).item() == pytest.approx(math.log(2))
    # When D confidently rejects a fake (logit l = -10), the saturating loss log(1 - sigmoid(l)) has
    # gradient -sigmoid(l) ~ -5e-5 in l, while -log sigmoid(l) has gradient -(1 - sigmoid(l)) ~ -1:
    # the generator still gets a useful signal.
    logit = torch.tensor([-10.0], requires_grad=True)
    generator_loss(logit).backward()
    assert logit.grad.item() == pytest.approx(-(1 - torch.sigmoid(torch.tensor(-10.0)).item()), rel=1e-6)


def test_gan_training_runs_and_returns_an_ema_generator():
    torch.manual_seed(0)
    G, D = Generator(latent_dim=16, width=8), Discriminator(width=8)
    result = train_gan(G, D, toy_digits(), steps=20, batch_size=16, device="cpu", progress=False, log_every=7)
    history, ema = result.history, result.ema
    # Two losses and no single one: unpacking as (losses, ema) would hide which, so it is refused.
    with pytest.raises(AttributeError, match="several losses"):
        _, _ = result
    assert all(len(v) == 20 for v in history.values())
    assert all(0 <= p <= 1 for p in history["d_real"] + history["d_fake"])
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    assert gan_sample(ema, 5).shape == (5, 1, 28, 28)
    same = [gan_sample(ema, 3, generator=torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(*same)  # the generator fixes z
    with pytest.raises(TypeError):
        gan_sample(ema, 3, rng=torch.Generator())  # the former spelling is gone
    assert G.training  # gan_sample restores the mode it found
