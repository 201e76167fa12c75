import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.checkpoint import model_class
from ddpm_lib.gan import Discriminator, Generator
from ddpm_lib.latent import Autoencoder
from ddpm_lib.vae import VAE

# Every model class the library has, each with non-default constructor arguments (a rebuild from
# the defaults would otherwise pass by luck), and an input it accepts.
MODELS = {
    "UNet": (lambda: dl.UNet(in_channels=3, base_dim=8, dim_mults=(1, 2)),
             lambda: (torch.randn(2, 3, 8, 8), torch.tensor([0, 5]))),
    "conditional UNet": (lambda: dl.UNet(in_channels=1, base_dim=8, dim_mults=(1, 2), num_classes=10),
                         lambda: (torch.randn(2, 1, 8, 8), torch.tensor([0, 5]), torch.tensor([3, 10]))),
    "VAE": (lambda: VAE(latent_dim=3, width=8), lambda: (torch.rand(2, 1, 28, 28) * 2 - 1,)),
    "Generator": (lambda: Generator(latent_dim=5, width=8), lambda: (torch.randn(2, 5),)),
    "Discriminator": (lambda: Discriminator(width=8), lambda: (torch.rand(2, 1, 28, 28) * 2 - 1,)),
    "EDMDenoiser": (lambda: dl.EDMDenoiser(dl.UNet(in_channels=1, base_dim=8, dim_mults=(1, 2), num_classes=3),
                                           sigma_data=0.7, parametrization="eps"),
                    lambda: (torch.randn(2, 1, 8, 8), torch.tensor([0.1, 20.0]), torch.tensor([2, 3]))),
    "Autoencoder": (lambda: Autoencoder(latent_channels=3, width=8), lambda: (torch.rand(2, 1, 28, 28) * 2 - 1,)),
    "LatentDiffusion": (lambda: dl.LatentDiffusion(
        Autoencoder(latent_channels=2, width=8),
        dl.EDMDenoiser(dl.UNet(in_channels=2, base_dim=8, dim_mults=(1, 2), num_classes=3), sigma_data=1.0),
        scale=0.7), lambda: (torch.randn(2, 2, 8, 8), torch.tensor([0.1, 20.0]), torch.tensor([2, 3]))),
}


def output(model, inputs):
    with torch.no_grad():
        out = model(*inputs) if not isinstance(model, (VAE, Autoencoder)) else model.encode(*inputs)
    return out if isinstance(out, torch.Tensor) else torch.cat([o.flatten() for o in out])


@pytest.mark.parametrize("name", MODELS)
def test_load_model_rebuilds_every_model_class(tmp_path, name):
    make, inputs = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():  # move the weights off their initial values, buffers included
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / f"{name}.pt"
    dl.save_model(path, model, seconds=1.5)
    restored = dl.load_model(path)
    assert type(restored) is type(model) and restored.config == model.config and not restored.training
    x = inputs()
    torch.testing.assert_close(output(restored, x), output(model, x), rtol=0, atol=0)
    assert dl.load_checkpoint(path)["seconds"] == 1.5


def test_a_training_checkpoint_loads_its_ema_or_its_raw_weights(tmp_path):
    images = torch.randint(0, 256, (8, 8, 8), dtype=torch.uint8)
    model = dl.UNet(1, 8, (1, 2))
    path = tmp_path / "run.pt"
    _, ema = dl.train(model, dl.cosine_schedule(10), images, steps=3, batch_size=4, lr=1e-2, device="cpu",
                      checkpoint=path, progress=False)
    for loaded, source in ((dl.load_model(path), ema), (dl.load_model(path, ema=False), model)):
        for a, b in zip(loaded.state_dict().values(), source.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_checkpoint_of_another_class_or_config_is_refused_naming_both(tmp_path):
    path = tmp_path / "vae.pt"
    dl.save_model(path, VAE(latent_dim=3, width=8))
    with pytest.raises(ValueError, match="holds a VAE, not a UNet"):
        dl.load_model(path, expected=dl.UNet)

    # Weights saved from one config, the config in the file then changed: the shapes disagree.
    state = dl.load_checkpoint(path)
    state["model_config"] = {**state["model_config"], "latent_dim": 4}
    state.pop("format")
    dl.save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"VAE with config \{.*'latent_dim': 4.*different model"):
        dl.load_model(path)

    state["model_config"] = {"latent_dim": 3, "depth": 7}  # an argument VAE does not take
    dl.save_checkpoint(path, state)
    with pytest.raises(ValueError, match="VAE cannot be built from the recorded config.*depth"):
        dl.load_model(path)


def test_unknown_or_foreign_classes_and_unrecorded_models_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="'ddpm_lib.unet.Transformer', a model class this version"):
        model_class("ddpm_lib.unet.Transformer")
    with pytest.raises(ValueError, match="'os.system', which is not a ddpm_lib model"):
        model_class("os.system")
    with pytest.raises(ValueError, match="not a model class"):
        model_class("ddpm_lib.unet.torch")
    path = tmp_path / "bare.pt"
    dl.save_checkpoint(path, {"model": dl.UNet(1, 8, (1,)).state_dict()})
    with pytest.raises(ValueError, match="does not record its model's class"):
        dl.load_model(path)
    with pytest.raises(ValueError, match="no .config dict"):
        dl.save_model(path, torch.nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError):
        dl.load_model(tmp_path / "missing.pt")
