"""Latent diffusion: the autoencoder, the latent scale and LatentDiffusion, against what theory says."""

import pytest
import torch
from torch import nn

import ddpm_lib as dl
from ddpm_lib.loop import Batch
from toy_data import squares


def small_ldm(num_classes=10, scale=0.5, eps_model=False):
    torch.manual_seed(0)
    ae = dl.Autoencoder(latent_channels=4, width=8)
    net = dl.UNet(in_channels=4, base_dim=8, dim_mults=(1, 2), num_classes=num_classes)
    return dl.LatentDiffusion(ae, net if eps_model else dl.EDMDenoiser(net, sigma_data=1.0), scale=scale).eval()


def digits(n=6):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_shapes_and_the_padding_is_cropped_again():
    ae = dl.Autoencoder(latent_channels=4, width=8)
    mean, logvar = ae.encode(digits())
    assert mean.shape == logvar.shape == (6, 4, 8, 8)  # 28 padded to 32, halved twice
    assert ae.decode(mean).shape == (6, 1, 28, 28) and ae(digits()).shape == (6, 1, 28, 28)


def test_the_scale_gives_the_latents_unit_variance():
    # std(c z) = c std(z), so with c = 1 / std(z) the scaled latents have std 1 exactly.
    z = 3.7 * torch.randn(500, 4, 8, 8, generator=torch.Generator().manual_seed(0)) + 1.0
    c = dl.latent_scale(z)
    assert abs(c - 1 / z.std().item()) < 1e-6
    assert abs((c * z).std().item() - 1.0) < 1e-5
    with pytest.raises(ValueError, match="finite"):
        dl.latent_scale(torch.tensor([1.0, float("nan")]))


def test_encode_then_decode_is_the_autoencoder_round_trip_whatever_the_scale():
    # decode(encode(x)) = D(c mean(x) / c) = D(mean(x)): the scale cancels.
    x = digits()
    for scale in (0.2, 5.0):
        ldm = small_ldm(scale=scale)
        torch.testing.assert_close(ldm.decode(ldm.encode(x)), ldm.autoencoder(x).clamp(-1, 1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ldm.encode(x), scale * ldm.autoencoder.encode(x)[0])


def test_encode_images_takes_uint8_digits_in_batches():
    ae = dl.Autoencoder(latent_channels=4, width=8).eval()
    images = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)
    z = dl.encode_images(ae, images, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(z, ae.encode(dl.to_model_range(images))[0])


def test_the_kl_term_is_the_closed_form_gaussian_kl():
    # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - ln s^2) / 2 per number, summed over the latent.
    class Fixed(dl.Autoencoder):
        def encode(self, x):
            return torch.full((len(x), 4, 8, 8), 0.3), torch.full((len(x), 4, 8, 8), -1.0)

    ae = Fixed(latent_channels=4, width=8)
    batch = Batch(digits(4))
    out = dl.AutoencoderLoss(kl_weight=0.0)(ae, batch, torch.Generator().manual_seed(0))
    q = torch.distributions.Normal(0.3, torch.tensor(-1.0).mul(0.5).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).item() * 256
    assert abs(out["kl"].item() - expected) < 1e-3
    weighted = dl.AutoencoderLoss(kl_weight=0.5)(ae, batch, torch.Generator().manual_seed(0))
    assert abs(weighted["loss"].item() - out["loss"].item() - 0.5 * expected) < 1e-2


def test_training_the_autoencoder_lowers_its_reconstruction_error():
    ae = dl.Autoencoder(latent_channels=4, width=8)
    result = dl.train(ae, images=squares(64, size=28), loss_fn=dl.AutoencoderLoss(), steps=60, batch_size=32,
                      lr=3e-3, progress=False, amp="off")
    l1 = result.history["l1"]
    assert sum(l1[-5:]) / 5 < 0.5 * sum(l1[:5]) / 5


def test_a_sampler_runs_in_latent_space_and_decodes_to_images():
    ldm = small_ldm()
    noise = torch.randn(5, *ldm.latent_shape, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 9])
    z = dl.edm_sample(ldm, noise, num_steps=3, y=y, guidance_scale=2.0)
    x = ldm.decode(z)
    assert z.shape == (5, 4, 8, 8) and x.shape == (5, 1, 28, 28)
    assert x.min() >= -1 and x.max() <= 1
    eps_ldm = small_ldm(eps_model=True)  # an eps-predicting latent model runs the DDPM samplers
    z = dl.ddim_sample(eps_ldm, dl.cosine_schedule(100), noise, num_steps=4, y=y, guidance_scale=1.5)
    assert z.shape == (5, 4, 8, 8) and torch.isfinite(z).all()


def test_train_fits_latents_outside_minus_one_one_only_when_asked():
    ldm = small_ldm(num_classes=None)
    latents = 2.5 * torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        dl.train(ldm.denoiser, images=latents, loss_fn=dl.EDMLoss(), steps=1, batch_size=8, progress=False)
    result = dl.train(ldm.denoiser, images=latents, loss_fn=dl.EDMLoss(), steps=2, batch_size=8, progress=False,
                      data_range=None)
    assert len(result.losses) == 2


def test_clear_errors_for_latents_of_the_wrong_shape_and_models_that_do_not_fit():
    ldm = small_ldm()
    with pytest.raises(ValueError, match=r"latents \[B, 4, 8, 8\], got \[2, 4, 7, 7\]"):
        ldm(torch.randn(2, 4, 7, 7), torch.ones(2))
    with pytest.raises(ValueError, match=r"decodes latents \[B, 4, 8, 8\]"):
        ldm.decode(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"images \[B, 1, 28, 28\], got \[2, 1, 32, 32\]"):
        ldm.encode(torch.randn(2, 1, 32, 32))
    other = dl.Autoencoder(latent_channels=3, width=8)  # an autoencoder of another size
    with pytest.raises(ValueError, match="different models"):
        dl.LatentDiffusion(other, ldm.denoiser, scale=1.0)
    with pytest.raises(TypeError, match="Autoencoder"):
        dl.LatentDiffusion(nn.Identity(), ldm.denoiser, scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        dl.LatentDiffusion(ldm.autoencoder, ldm.denoiser, scale=0.0)
    with pytest.raises(ValueError, match="width"):
        dl.Autoencoder(width=12)
    with pytest.raises(TypeError, match="trains an Autoencoder"):
        dl.AutoencoderLoss()(ldm.denoiser, Batch(digits(2)))
