"""Short DDPM, VAE and GAN runs must reproduce committed reference numbers.

`data/training_reference.json` holds the per-step losses and a fingerprint of every weight tensor
of three short CPU runs with fixed seeds, recorded before the trainers were merged into one loop.
The runs below go through today's code paths: the DDPM loss and the VAE's objective through
`ddpm_lib.train`, the GAN through its own loop. All in float32 (`amp="off"`), as recorded: on a CPU
where bf16 pays, "auto" would train in bf16, whose rounding no float32 reference can match.

They are compared with a tolerance, never bit for bit: oneDNN and ATen choose their kernels by the
CPU's instruction sets (AVX2, AVX512, AVX512-BF16, AMX), and each rounds in its own order, so even
two machines that report the same `get_cpu_capability()` differ in the 7th digit. The tolerance is
set from the spread measured between kernel choices: the same runs under ATEN_CPU_CAPABILITY =
default, avx2 and avx512, each with oneDNN on and off, on a CPU with AVX512-BF16, against the
reference recorded on an AVX512 CPU, differed by at most 3.4e-6 (relative) in any loss and 3.1e-4
(relative; 1.7e-4 absolute) in any weight tensor's sum. The bounds below are 10 to 30 times that:
loose enough for any CPU, yet a change to the algorithm (another EMA rule, another draw order, a
different clipping) moves these numbers by far more.
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
LOSS_RTOL = 1e-4  # 30x the largest relative spread measured in a loss (see above)
WEIGHT_RTOL, WEIGHT_ATOL = 3e-3, 2e-3  # 10x the spread measured in a weight tensor's sum


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
    assert len(values) == len(reference), f"{what}: {len(values)} values, the reference has {len(reference)}"
    assert values == pytest.approx(reference, rel=LOSS_RTOL), f"{what} differs from the reference run"


def assert_same_weights(module, reference, what):
    found = fingerprint(module)
    assert list(found["sums"]) == list(reference["sums"]), f"{what}: other tensors than the reference"
    for name, total in found["sums"].items():
        assert total == pytest.approx(reference["sums"][name], rel=WEIGHT_RTOL, abs=WEIGHT_ATOL), f"{what}: {name}"


def test_ddpm_training_reproduces_the_reference_run():
    torch.manual_seed(0)
    unet = dl.UNet(1, 8, (1, 2))
    result = dl.train(unet, dl.cosine_schedule(T=100), squares(), steps=12, batch_size=8, lr=1e-3,
                      device="cpu", seed=3, progress=False, log_every=5, amp="off")
    ref = REFERENCE["ddpm"]
    assert_same(result.losses, ref["losses"], "DDPM losses")
    assert_same_weights(unet, ref["model"], "DDPM model")
    assert_same_weights(result.ema, ref["ema"], "DDPM EMA")


def test_vae_training_through_the_shared_loop_reproduces_the_reference_run():
    torch.manual_seed(0)
    vae = VAE(latent_dim=4, width=8)
    result = dl.train(vae, images=bars(), loss_fn=VAELoss(), steps=10, batch_size=16, lr=3e-3, grad_clip=None,
                      sampling="replacement", channels_last=False, device="cpu", seed=1, progress=False,
                      log_every=4, amp="off")
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
