"""ddpm_lib: a small, tested implementation of denoising diffusion probabilistic models.

The public API, by concept:

- schedules:  NoiseSchedule, linear_schedule, cosine_schedule
- forward process and loss:  q_sample, predict_x0, predict_eps, q_posterior, ddpm_loss, DDPMLoss
- samplers:  ddpm_sample, ddim_sample, heun_sample, dpm_solver_sample; timestep grids (ddim_timesteps,
  timestep_grid); what they share: denoise, Prediction, run_sampler, count_nfe; labels and
  classifier-free guidance (conditioned); GaussianDenoiser, the exact eps for Gaussian data
- the network's targets:  score_from_eps, v_from_eps, eps_from_v
- flow matching:  flow_matching_loss, flow_sample, flow_velocity, ReflowLoss, GaussianVelocity (the exact velocity)
- EDM (Karras et al. 2022):  EDMDenoiser (the preconditioning around any network), EDMLoss,
  edm_sample (Heun on the rho-spaced sigma grid, with churn), sigma_grid; GaussianEDMDenoiser, the
  exact denoiser for Gaussian data
- distillation (Salimans & Ho 2022):  DistillationLoss (one round of progressive distillation),
  distilled_sample (one network evaluation a step on the nested grid)
- latent diffusion (Rombach et al. 2022):  Autoencoder (images <-> [B, 4, 8, 8] latents),
  AutoencoderLoss, latent_scale, encode_images, LatentDiffusion (a denoiser of scaled latents that
  the samplers run unchanged, with decode back to images)
- network:  SinusoidalEmbedding, ConvNeXtBlock, Downsample, Upsample, UNet
- training:  train (any objective), TrainResult, Batch, autocast_dtype, make_ema, update_ema
- checkpoints and published weights:  save_checkpoint, load_checkpoint, save_model, load_model,
  pretrained (a chapter's published model by name), save_weights, load_weights (safetensors)
- data:  load_mnist, load_fashion_mnist, held_out_split, to_model_range, from_model_range, DatasetError
- figures:  image_grid, show_images, animate_grids, animation_html (an animation that plays offline)
- scoring:  Scorer (every measure of a set of digits, under the book's one interval rule), Score,
  Comparison, ClassScorer (class by class, for conditional models)
- utilities:  pick_device, seed_everything, device_name

The other generative models and the metrics live in their own modules, imported by name:
``ddpm_lib.vae`` (VAE, VAELoss, vae_loss, vae_sample, train_vae), ``ddpm_lib.gan`` (Generator,
Discriminator, the non-saturating losses, gan_sample, train_gan), ``ddpm_lib.metrics`` (the feature
network, Frechet distance, KID, precision and recall, class coverage), ``ddpm_lib.evidence``
(the interval rule, nearest-neighbour distances to the training set, blur) and
``ddpm_lib.editing`` (inpainting after RePaint, and SDEdit); ``ddpm_lib.files`` says where the
library keeps its files and checks each against its SHA-256. ``ddpm_lib.book`` holds what the
chapters need around them (start-up, smoke mode, data, timing, trained models, animations); its
``start_chapter``, ``smoke_mode`` and ``Chapter`` are also re-exported here.
"""

from . import book, editing, evidence, files, gan, metrics, vae
from .analytic import GaussianDenoiser, GaussianEDMDenoiser, GaussianVelocity
from .blocks import ConvNeXtBlock, Downsample, Upsample
from .book import Chapter, smoke_mode, start_chapter
from .checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from .data import DatasetError, from_model_range, held_out_split, load_fashion_mnist, load_mnist, to_model_range
from .diffusion import (DDPMLoss, ddpm_loss, eps_from_v, predict_eps, predict_x0, q_posterior, q_sample,
                        score_from_eps, v_from_eps)
from .ema import make_ema, update_ema
from .distill import DistillationLoss, distilled_sample
from .edm import EDMDenoiser, EDMLoss, edm_sample, sigma_grid
from .flow import ReflowLoss, flow_matching_loss, flow_sample, flow_velocity
from .hub import load_weights, pretrained, save_weights
from .latent import Autoencoder, AutoencoderLoss, LatentDiffusion, encode_images, latent_scale
from .embedding import SinusoidalEmbedding
from .loop import Batch, TrainResult
from .precision import autocast_dtype
from .plotting import animate_grids, animation_html, image_grid, show_images
from .ode import dpm_solver_sample, heun_sample
from .sampling import Prediction, conditioned, count_nfe, ddim_sample, ddpm_sample, denoise, run_sampler
from .scoring import ClassScorer, Comparison, Score, Scorer
from .schedule import NoiseSchedule, cosine_schedule, linear_schedule
from .timesteps import ddim_timesteps, timestep_grid
from .train import train
from .unet import UNet
from .utils import device_name, pick_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "book", "editing", "evidence", "files", "gan", "metrics", "vae",
    "NoiseSchedule", "linear_schedule", "cosine_schedule",
    "q_sample", "predict_x0", "predict_eps", "q_posterior", "ddpm_loss", "DDPMLoss",
    "ddpm_sample", "ddim_sample", "heun_sample", "dpm_solver_sample", "ddim_timesteps", "timestep_grid",
    "denoise", "Prediction", "run_sampler", "count_nfe", "conditioned", "GaussianDenoiser",
    "score_from_eps", "v_from_eps", "eps_from_v",
    "flow_matching_loss", "flow_sample", "flow_velocity", "ReflowLoss", "GaussianVelocity",
    "EDMDenoiser", "EDMLoss", "edm_sample", "sigma_grid", "GaussianEDMDenoiser",
    "DistillationLoss", "distilled_sample",
    "Autoencoder", "AutoencoderLoss", "LatentDiffusion", "encode_images", "latent_scale",
    "SinusoidalEmbedding", "ConvNeXtBlock", "Downsample", "Upsample", "UNet",
    "train", "TrainResult", "Batch", "autocast_dtype", "make_ema", "update_ema",
    "save_checkpoint", "load_checkpoint", "save_model", "load_model", "pretrained", "save_weights", "load_weights",
    "load_mnist", "load_fashion_mnist", "held_out_split", "to_model_range", "from_model_range", "DatasetError",
    "image_grid", "show_images", "animate_grids", "animation_html", "Scorer", "Score", "Comparison", "ClassScorer",
    "pick_device", "seed_everything", "device_name", "smoke_mode", "start_chapter", "Chapter",
]
