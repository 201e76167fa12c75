"""The training loop: Ho et al. 2020, Algorithm 1, with the practical parts a real run needs.

Adam(W) on L_simple, gradient clipping, an exponential moving average (EMA) of the weights (the
EMA model is the one to sample from), bf16 autocast on CUDA GPUs, and checkpoints from which a run
resumes exactly where it stopped. Mixed precision lives here and only here: the model, the loss
and the samplers are ordinary float32 code.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from .data import to_model_range
from .diffusion import ddpm_loss
from .schedule import NoiseSchedule
from .utils import device_name, pick_device


class TrainResult(NamedTuple):
    losses: list  # the loss of every optimisation step, from step 1
    ema: nn.Module  # the EMA copy of the model, in eval mode


def _prepare_images(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 [N, H, W] / [N, C, H, W], or float [N, C, H, W] in [-1, 1] -> float32 [N, C, H, W]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        images = to_model_range(images)
    elif not images.dtype.is_floating_point or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W] or float [N, C, H, W], got {images.dtype} {list(images.shape)}")
    elif images.numel() and (images.min() < -1.001 or images.max() > 1.001):
        raise ValueError(f"float images must lie in [-1, 1], got [{images.min():.3g}, {images.max():.3g}]; "
                         "map uint8 images with ddpm_lib.to_model_range")
    expected = getattr(model, "in_channels", images.shape[1])
    if images.shape[1] != expected:
        raise ValueError(f"the model takes {expected} channel(s), the images have {images.shape[1]}")
    if len(images) == 0:
        raise ValueError("images is empty")
    return images.float()


def _amp_enabled(amp, device: torch.device) -> bool:
    if amp == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    if amp in ("bf16", True):
        return True
    if amp in ("off", False, None):
        return False
    raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {amp!r}")


@torch.no_grad()
@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    """ema <- d * ema + (1 - d) * model for all parameters at once (buffers are copied).

    d = min(decay, (1 + step) / (10 + step)): a warm-up, so that early on the average follows the
    trained weights instead of remembering the random initial ones. Also used by ``train_gan``.
    """
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - d)
    for e, m in zip(ema.buffers(), model.buffers()):  # e.g. batch-norm running statistics
        e.copy_(m)


def _fits_on(device: torch.device, nbytes: int) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < free // 4  # leave the rest for activations


def train(model: nn.Module, schedule: NoiseSchedule, images: torch.Tensor, *, steps: int, batch_size: int = 128,
          lr: float = 2e-4, ema_decay: float = 0.999, grad_clip: float | None = 1.0, amp="auto", device=None,
          seed: int = 0, checkpoint=None, checkpoint_every: int = 1000, log_every: int = 100, callback=None,
          progress: bool = True, channels_last: bool = True, compile: bool = False) -> TrainResult:
    """Train ``model`` to predict noise on ``images`` for ``steps`` optimisation steps.

    - Batches: each epoch visits the images in a fresh random order that depends only on
      ``(seed, epoch)``; t and eps come from a generator seeded with ``seed``.
    - EMA: ``decay_k = min(ema_decay, (1 + k) / (10 + k))``, so early in a run the average is not
      dominated by the random initial weights.
    - ``amp``: "auto" uses bf16 autocast on CUDA GPUs that support it and nothing elsewhere.
    - ``checkpoint``: a file path. If it exists, training resumes from it (the run's settings must
      match) and continues exactly as an uninterrupted run would; it is written every
      ``checkpoint_every`` steps and at the end.
    - ``callback(step, ema, losses)`` is called every ``log_every`` steps and after the last one.
    - ``channels_last``: store activations as [B, H, W, C] in memory (the tensors keep their
      [B, C, H, W] shape); convolutions run faster that way, 1.5-1.8x on a CPU for this U-Net.
    - ``compile``: run the model through ``torch.compile`` (faster steps on a GPU after a
      compilation that takes a minute or more; the weights and checkpoints are unchanged).

    Returns ``TrainResult(losses, ema)``.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if batch_size < 1 or log_every < 1 or checkpoint_every < 1:
        raise ValueError("batch_size, log_every and checkpoint_every must be positive")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
    device = torch.device(device) if device is not None else pick_device()
    data = _prepare_images(images, model)
    if _fits_on(device, data.numel() * data.element_size()):
        data = data.to(device)  # no per-step host-to-device copies
    N = len(data)
    batch_size = min(batch_size, N)
    batches_per_epoch = N // batch_size

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).train()
    data = data.contiguous(memory_format=memory_format)
    schedule = schedule.to(device)
    use_amp = _amp_enabled(amp, device)
    net = torch.compile(model) if compile else model  # shares its parameters with model
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=device.type == "cuda")
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    generator = torch.Generator(device=device).manual_seed(seed)
    run = {"batch_size": batch_size, "lr": lr, "ema_decay": ema_decay, "grad_clip": grad_clip, "seed": seed,
           "amp": use_amp, "schedule": schedule.name, "num_images": N}
    losses: list[float] = []
    start, seconds_before = 0, 0.0

    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        check_state_dict(model, state["model"], str(checkpoint))
        changed = {k: (state["run"].get(k), v) for k, v in run.items() if state["run"].get(k) != v}
        if changed:
            raise ValueError(f"{checkpoint} was written by a run with other settings, so it cannot be resumed "
                             f"exactly: {changed} (saved, now); use another checkpoint path")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        losses, start, seconds_before = list(state["losses"]), state["step"], state.get("seconds", 0.0)
        if start > steps:
            raise ValueError(f"{checkpoint} is already {start} steps into training, more than steps={steps}")

    def save(step: int) -> None:
        save_checkpoint(checkpoint, {
            "step": step, "losses": losses, "run": run, "generator": generator.get_state(),
            "seconds": seconds_before + time.perf_counter() - clock, "device": device_name(device),
            "model_config": getattr(model, "config", None), "model": model.state_dict(),
            "ema": ema.state_dict(), "optimizer": optimizer.state_dict()})

    clock = time.perf_counter()  # wall time of training, kept in the checkpoint across resumptions
    epoch_cached, order = -1, None
    pending: list[torch.Tensor] = []  # losses still on the device: reading them every step would stall a GPU
    bar = tqdm(total=steps, initial=start, disable=not progress, desc="training", unit="step",
               mininterval=1.0, dynamic_ncols=True)
    for step in range(start, steps):
        epoch, k = divmod(step, batches_per_epoch)
        if epoch != epoch_cached:  # the order depends on (seed, epoch) only, so a resumed run matches
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order, epoch_cached = torch.randperm(N, generator=g).to(data.device), epoch
        # [B, C, H, W]; indexing keeps data's memory format, so batches are channels-last already
        x0 = data[order[k * batch_size:(k + 1) * batch_size]].to(device, non_blocking=True)

        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = ddpm_loss(net, schedule, x0, generator=generator)  # Ho et al. 2020, Algorithm 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        update_ema(ema, model, step, ema_decay)
        pending.append(loss.detach())

        done = step + 1
        logging = done % log_every == 0 or done == steps
        saving = checkpoint is not None and (done % checkpoint_every == 0 or done == steps)
        if logging or saving:
            new = torch.stack(pending).float().tolist()
            losses.extend(new)
            pending.clear()
            bar.update(len(new))
            bar.set_postfix(loss=f"{sum(new) / len(new):.4f}", refresh=False)
        if saving:
            save(done)
        if logging and callback is not None:
            callback(done, ema, losses)
    bar.close()
    return TrainResult(losses, ema)
