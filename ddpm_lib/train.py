"""The training loop: Ho et al. 2020, Algorithm 1, for any objective, with what a real run needs.

The objective is a function ``loss_fn(model, batch, generator) -> loss`` (NVlabs/edm passes its
loss object into its loop the same way): the DDPM loss by default, the VAE's negative ELBO, and the
objectives later chapters add all train here. Around it: AdamW, gradient clipping, an exponential
moving average (EMA) of the weights (the model to sample from), mixed precision where the hardware
runs it fast, and checkpoints from which a run resumes exactly where it stopped. Mixed precision
lives here and only here: models, losses and samplers are ordinary float32 code.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import torch
from torch import nn

from .checkpoint import check_state_dict, load_checkpoint, model_record, save_checkpoint
from .diffusion import DDPMLoss
from .ema import make_ema, update_ema
from .loop import (BatchSampler, Recorder, TrainResult, amp_dtype, fits_on, prepare_images, prepare_labels,
                   resolve_device)
from .schedule import NoiseSchedule
from .utils import device_name


def objective_name(loss_fn) -> str:
    """A stable description of an objective, recorded in checkpoints: its repr, or a function's name."""
    if inspect.isfunction(loss_fn) or inspect.ismethod(loss_fn):
        return f"{loss_fn.__module__}.{loss_fn.__qualname__}"
    return repr(loss_fn)


def train(model: nn.Module, schedule: NoiseSchedule | None = None, images: torch.Tensor | None = None, *,
          steps: int, labels=None, loss_fn=None, batch_size: int = 128, lr: float = 2e-4, betas=(0.9, 0.999),
          ema_decay: float = 0.999, grad_clip: float | None = 1.0, amp="auto", device=None, seed: int = 0,
          sampling: str = "epochs", checkpoint=None, checkpoint_every: int = 1000, log_every: int = 100,
          callback=None, progress: bool = True, channels_last: bool = True, compile: bool = False) -> TrainResult:
    """Optimise ``model`` on ``images`` (and ``labels``, if given) for ``steps`` steps.

    - Objective: ``loss_fn(model, batch, generator)``, where ``batch`` is a :class:`~ddpm_lib.loop.Batch`
      (``.images`` in [-1, 1], ``.labels`` or None) and ``generator`` the run's random generator,
      returning a scalar, or a dict of scalars whose ``"loss"`` is optimised and the rest logged.
      Default: ``DDPMLoss(schedule)``, L_simple. Pass a schedule or a loss_fn, not both.
    - Batches (``sampling``): "epochs" visits the images in a fresh order each epoch; "replacement"
      draws each batch uniformly (see :class:`~ddpm_lib.loop.BatchSampler`). Everything random
      comes from ``seed``.
    - EMA: decay ``min(ema_decay, (1 + k) / (10 + k))`` at step k (:mod:`ddpm_lib.ema`).
    - ``amp``: "auto" runs the autocast type of :func:`~ddpm_lib.loop.autocast_dtype` (bf16 on
      recent GPUs, fp16 with a gradient scaler on 7.x GPUs, none elsewhere); "bf16", "fp16" and
      "off" force a choice.
    - ``checkpoint``: a file path. If it exists, training resumes from it (the run's settings must
      match) and continues exactly as an uninterrupted run would; it is written every
      ``checkpoint_every`` steps and at the end.
    - ``callback(step, ema, losses)`` is called every ``log_every`` steps and after the last one.
    - ``channels_last``: store activations as [B, H, W, C] in memory (the tensors keep their
      [B, C, H, W] shape); convolutions run faster that way, 1.5-1.8x on a CPU for this U-Net.
    - ``compile``: run the model through ``torch.compile`` (the weights and checkpoints are unchanged).

    Returns a :class:`~ddpm_lib.loop.TrainResult`; ``losses, ema = train(...)`` unpacks it.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if batch_size < 1 or log_every < 1 or checkpoint_every < 1:
        raise ValueError("batch_size, log_every and checkpoint_every must be positive")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
    if (schedule is None) == (loss_fn is None):
        raise ValueError("pass a noise schedule (to train on the DDPM loss) or a loss_fn, not both and not neither")
    if images is None:
        raise ValueError("train needs images")
    loss_fn = DDPMLoss(schedule) if loss_fn is None else loss_fn
    device = resolve_device(device)
    data = prepare_images(images, getattr(model, "in_channels", None))
    labels = prepare_labels(labels, len(data))
    if fits_on(device, data.numel() * data.element_size()):
        data = data.to(device)  # no per-step host-to-device copies
        labels = labels.to(device) if labels is not None else None

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).train()
    data = data.contiguous(memory_format=memory_format)
    loss_fn = loss_fn.to(device) if hasattr(loss_fn, "to") else loss_fn
    dtype = amp_dtype(amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # fp16 gradients underflow
    net = torch.compile(model) if compile else model  # shares its parameters with model
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(betas), weight_decay=0.0,
                                  fused=device.type == "cuda")
    ema = make_ema(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    batches = BatchSampler(data, labels, batch_size, sampling=sampling, seed=seed, generator=generator)
    run = {"objective": objective_name(loss_fn), "batch_size": batches.batch_size, "lr": lr,
           "betas": list(betas), "ema_decay": ema_decay, "grad_clip": grad_clip, "seed": seed,
           "sampling": sampling, "amp": "off" if dtype is None else str(dtype).removeprefix("torch."),
           "num_images": len(data)}
    history, start, seconds_before = {}, 0, 0.0

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
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        history, start, seconds_before = state["history"], state["step"], state["seconds"]
        if start > steps:
            raise ValueError(f"{checkpoint} is already {start} steps into training, "
                             f"more than steps={steps}")

    recorder = Recorder(steps=steps, start=start, history=history, progress=progress)
    clock = time.perf_counter()  # wall time of training, kept in the checkpoint across resumptions
    for step in range(start, steps):
        batch = batches(step, device)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = loss_fn(net, batch, generator)
        values = out if isinstance(out, dict) else {"loss": out}
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(values["loss"]).backward()
        if grad_clip:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        update_ema(ema, model, step, ema_decay)
        recorder.add(values)

        done = step + 1
        logging = done % log_every == 0 or done == steps
        saving = checkpoint is not None and (done % checkpoint_every == 0 or done == steps)
        if logging or saving:
            recorder.flush()
        if saving:
            save_checkpoint(checkpoint, {
                "step": done, "history": recorder.history, "run": run, "generator": generator.get_state(),
                "seconds": seconds_before + time.perf_counter() - clock, "device": device_name(device),
                **model_record(model), "model": model.state_dict(), "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()})
        if logging and callback is not None:
            callback(done, ema, recorder.history.get("loss", []))
    recorder.close()
    return TrainResult(recorder.history, ema, seconds_before + time.perf_counter() - clock)
