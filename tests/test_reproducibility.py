"""Short DDPM, VAE and GAN runs must reproduce committed reference numbers.

`data/training_reference.json` holds the per-step losses and a fingerprint of every weight tensor
of three short CPU runs with fixed seeds, recorded before the trainers were merged into one loop.
The runs below go through today's code paths: the DDPM loss and the VAE's objective through
`ddpm_lib.train`, the GAN through its own loop. On the platform the numbers were recorded on (the
same PyTorch version and CPU instruction set), they must match bit for bit; elsewhere convolutions
may round differently, and they must agree to float32 rounding accumulated over the run.
"""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from toy_data import bars, squares

import ddpm_lib as dl
from ddpm_lib.gan import Discriminator, Generator, train_gan
from ddpm_lib.vae import VAE, VAELoss

REFERENCE = json.loads((Path(__file__).parent / "data" / "training_reference.json").read_text())
SAME_PLATFORM = (REFERENCE["torch"] == torch.__version__.split("+")[0]
                 and REFERENCE["cpu_capability"] == torch.backends.cpu.get_cpu_capability())


@pytest.fixture(autouse=True)
def one_thread():
    # Some CPU kernels split reductions by thread; one thread makes the summation order fixed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fingerprint(module):
    digest, sums = hashlib.sha256(), {}
    for name, value in module.state_dict().items():
        array = value.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(array.numpy().tobytes())
        sums[name] = float(array.double().sum())
    return {"sha256": digest.hexdigest(), "sums": sums}


def assert_same(values, reference, what):
    if SAME_PLATFORM:
        assert values == reference, f"{what} differs from the reference run"
    else:
        assert values == pytest.approx(reference, rel=1e-4, abs=1e-5), what


def assert_same_weights(module, reference, what):
    found = fingerprint(module)
    assert list(found["sums"]) == list(reference["sums"]), f"{what}: other tensors than the reference"
    if SAME_PLATFORM:
        assert found["sha256"] == reference["sha256"], f"{what}: weights differ from the reference run"
    else:
        for name, total in found["sums"].items():
            assert total == pytest.approx(reference["sums"][name], rel=1e-3, abs=1e-4), f"{what}: {name}"


def test_ddpm_training_reproduces_the_reference_run():
    torch.manual_seed(0)
    unet = dl.UNet(1, 8, (1, 2))
    result = dl.train(unet, dl.cosine_schedule(T=100), squares(), steps=12, batch_size=8, lr=1e-3,
                      device="cpu", seed=3, progress=False, log_every=5)
    ref = REFERENCE["ddpm"]
    assert_same(result.losses, ref["losses"], "DDPM losses")
    assert_same_weights(unet, ref["model"], "DDPM model")
    assert_same_weights(result.ema, ref["ema"], "DDPM EMA")


def test_vae_training_through_the_shared_loop_reproduces_the_reference_run():
    torch.manual_seed(0)
    vae = VAE(latent_dim=4, width=8)
    result = dl.train(vae, images=bars(), loss_fn=VAELoss(), steps=10, batch_size=16, lr=3e-3, grad_clip=None,
                      sampling="replacement", channels_last=False, device="cpu", seed=1, progress=False,
                      log_every=4)
    ref = REFERENCE["vae"]
    for key in ("reconstruction", "kl"):
        assert_same(result.history[key], ref[key], f"VAE {key}")
    assert_same(result.losses, ref["losses"], "VAE losses")
    assert_same_weights(vae, ref["model"], "VAE")


def test_gan_training_reproduces_the_reference_run():
    torch.manual_seed(0)
    G, D = Generator(latent_dim=16, width=8), Discriminator(width=8)
    result = train_gan(G, D, bars(), steps=10, batch_size=16, device="cpu", seed=2, progress=False, log_every=4)
    ref = REFERENCE["gan"]
    for key in ("d_loss", "g_loss", "d_real", "d_fake"):
        assert_same(result.history[key], ref[key], f"GAN {key}")
    assert_same_weights(G, ref["generator"], "generator")
    assert_same_weights(D, ref["discriminator"], "discriminator")
    assert_same_weights(result.ema, ref["ema"], "EMA generator")
