"""ddpm_lib: a small, tested implementation of denoising diffusion probabilistic models.

The public API, by concept:

- schedules:  NoiseSchedule, linear_schedule, cosine_schedule
- forward process and loss:  q_sample, predict_x0, q_posterior, ddpm_loss
- samplers:  ddpm_sample, ddim_sample, ddim_timesteps; GaussianDenoiser, the exact eps for Gaussian data
- network:  SinusoidalEmbedding, ConvNeXtBlock, Downsample, Upsample, UNet
- training:  train, TrainResult, save_checkpoint, load_checkpoint, load_model
- data:  load_mnist, load_fashion_mnist, to_model_range, from_model_range, DatasetError
- figures:  image_grid, show_images, animate_grids, animation_html
- utilities:  pick_device, seed_everything, device_name, smoke_mode, start_chapter

The other generative models and the metrics live in their own modules, imported by name:
``ddpm_lib.vae`` (VAE, vae_loss, vae_sample, train_vae), ``ddpm_lib.gan`` (Generator,
Discriminator, the non-saturating losses, gan_sample, train_gan) and ``ddpm_lib.metrics``
(the feature network, Frechet distance, KID, precision and recall, class coverage).
"""

from . import gan, metrics, vae
from .analytic import GaussianDenoiser
from .blocks import ConvNeXtBlock, Downsample, Upsample
from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .data import DatasetError, from_model_range, load_fashion_mnist, load_mnist, to_model_range
from .diffusion import ddpm_loss, predict_x0, q_posterior, q_sample
from .embedding import SinusoidalEmbedding
from .sampling import ddim_sample, ddim_timesteps, ddpm_sample
from .schedule import NoiseSchedule, cosine_schedule, linear_schedule
from .train import TrainResult, train
from .unet import UNet
from .plotting import animate_grids, animation_html, image_grid, show_images
from .utils import Chapter, device_name, pick_device, seed_everything, smoke_mode, start_chapter

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule", "linear_schedule", "cosine_schedule",
    "q_sample", "predict_x0", "q_posterior", "ddpm_loss",
    "ddpm_sample", "ddim_sample", "ddim_timesteps", "GaussianDenoiser",
    "SinusoidalEmbedding", "ConvNeXtBlock", "Downsample", "Upsample", "UNet",
    "train", "TrainResult", "save_checkpoint", "load_checkpoint", "load_model",
    "load_mnist", "load_fashion_mnist", "to_model_range", "from_model_range", "DatasetError",
    "image_grid", "show_images", "animate_grids", "animation_html",
    "pick_device", "seed_everything", "device_name", "smoke_mode", "start_chapter", "Chapter",
]
