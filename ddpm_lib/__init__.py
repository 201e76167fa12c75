"""ddpm_lib: a small, tested implementation of denoising diffusion probabilistic models.

The public API, by concept:

- schedules:  NoiseSchedule, linear_schedule, cosine_schedule
- forward process and loss:  q_sample, predict_x0, q_posterior, ddpm_loss
- samplers:  ddpm_sample, ddim_sample, ddim_timesteps
- network:  SinusoidalEmbedding, ConvNeXtBlock, Downsample, Upsample, UNet
- training:  train, TrainResult, save_checkpoint, load_checkpoint, load_model
- data:  load_mnist, load_fashion_mnist, to_model_range, from_model_range, DatasetError
- utilities:  pick_device, seed_everything, device_name, smoke_mode
"""

from .blocks import ConvNeXtBlock, Downsample, Upsample
from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .data import DatasetError, from_model_range, load_fashion_mnist, load_mnist, to_model_range
from .diffusion import ddpm_loss, predict_x0, q_posterior, q_sample
from .embedding import SinusoidalEmbedding
from .sampling import ddim_sample, ddim_timesteps, ddpm_sample
from .schedule import NoiseSchedule, cosine_schedule, linear_schedule
from .train import TrainResult, train
from .unet import UNet
from .utils import device_name, pick_device, seed_everything, smoke_mode

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule", "linear_schedule", "cosine_schedule",
    "q_sample", "predict_x0", "q_posterior", "ddpm_loss",
    "ddpm_sample", "ddim_sample", "ddim_timesteps",
    "SinusoidalEmbedding", "ConvNeXtBlock", "Downsample", "Upsample", "UNet",
    "train", "TrainResult", "save_checkpoint", "load_checkpoint", "load_model",
    "load_mnist", "load_fashion_mnist", "to_model_range", "from_model_range", "DatasetError",
    "pick_device", "seed_everything", "device_name", "smoke_mode",
]
