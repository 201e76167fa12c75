"""The training loop: Ho et al. 2020, Algorithm 1, for any objective, with what a real run needs.

The objective is a function ``loss_fn(model, batch, generator) -> loss`` (NVlabs/edm passes its
loss object into its loop the same way): the DDPM loss by default, the VAE's negative ELBO, and the
objectives later chapters add all train here. Around it: AdamW, gradient clipping, an exponential
moving average (EMA) of the weights (the model to sample from), mixed precision where the hardware
runs it fast, and checkpoints from which a run resumes exactly where it stopped. The choice of
precision lives in :mod:`ddpm_lib.precision`; models, losses and samplers are ordinary float32 code
(but for the one layer the U-Net keeps in float32 under CPU autocast, and the samplers' ``amp``).
"""

from __future__ import annotations

import inspect
import math
import time
from pathlib import Path

import torch
from torch import nn

from .checkpoint import check_state_dict, load_checkpoint, model_record, save_checkpoint
from .diffusion import DDPMLoss
from .ema import make_ema, update_ema
from .distributed import barrier, world
from .loop import (BatchSampler, Recorder, TrainResult, check_run, fits_on, prepare_images, prepare_labels,
                   resolve_device)
from .precision import amp_dtype, autocast
from .schedule import NoiseSchedule
from .utils import device_name


def objective_name(loss_fn) -> str | None:
    """A description of an objective that is the same in every session, or None if it has none.

    A checkpoint records it, so that a run is never resumed with another objective: a named
    function gives its qualified name, an object its repr (a dataclass's lists its fields). A
    lambda or an object whose repr is its memory address cannot be told apart from another.
    """
    if inspect.isfunction(loss_fn) or inspect.ismethod(loss_fn):
        name = f"{loss_fn.__module__}.{loss_fn.__qualname__}"
        return None if "<lambda>" in name or "<locals>" in name else name
    name = repr(loss_fn)
    return None if " at 0x" in name else name


def learning_rate(step: int, *, lr: float, steps: int, warmup: int = 0, lr_decay: str | None = None) -> float:
    """The learning rate of optimisation step ``step`` (0, 1, ...): warm-up, then constant or cosine.

    Warm-up ``lr (step + 1) / warmup`` keeps Adam's first updates, made with poorly estimated second
    moments, small; the cosine decay (Loshchilov & Hutter 2017, without restarts) lets the weights
    settle at the end of a short run instead of jittering at full step size.
    """
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a number of steps >= 0, got {warmup!r}")
    if lr_decay not in (None, "cosine"):
        raise ValueError(f"lr_decay must be None or 'cosine', got {lr_decay!r}")
    if step < warmup:
        return lr * (step + 1) / warmup
    if lr_decay is None:
        return lr
    progress = (step - warmup) / max(steps - warmup, 1)  # 0 after the warm-up, 1 at the end
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


# How a run records its precision, and the amp setting that reproduces it without measuring.
RECORDED_AMP = {"off": "off", "bfloat16": "bf16", "float16": "fp16"}


def train(model: nn.Module, schedule: NoiseSchedule | None = None, images: torch.Tensor | None = None, *,
          steps: int, labels=None, loss_fn=None, batch_size: int = 128, lr: float = 2e-4, betas=(0.9, 0.999),
          warmup: int = 0, lr_decay: str | None = None,
          ema_decay: float = 0.999, grad_clip: float | None = 1.0, amp="auto", device=None, seed: int = 0,
          sampling: str = "epochs", checkpoint=None, checkpoint_every: int = 1000, log_every: int = 100,
          callback=None, progress: bool = True, channels_last: bool = True, compile: bool = False,
          data_range: float | None = 1.0) -> TrainResult:
    """Optimise ``model`` on ``images`` (and ``labels``, if given) for ``steps`` steps.

    - Objective: ``loss_fn(model, batch, generator)``, where ``batch`` is a :class:`~ddpm_lib.loop.Batch`
      (``.images`` in [-1, 1], ``.labels`` or None) and ``generator`` the run's random generator,
      returning a scalar, or a dict of scalars whose ``"loss"`` is optimised and the rest logged.
      Default: ``DDPMLoss(schedule)``, L_simple. Pass a schedule or a loss_fn, not both.
    - Batches (``sampling``): "epochs" visits the images in a fresh order each epoch; "replacement"
      draws each batch uniformly (see :class:`~ddpm_lib.loop.BatchSampler`). Everything random
      comes from ``seed``.
    - Learning rate: ``lr`` after a linear warm-up over the first ``warmup`` steps; with
      ``lr_decay="cosine"`` it then falls along a half cosine to 0 at ``steps`` (:func:`learning_rate`).
    - EMA: decay ``min(ema_decay, (1 + k) / (10 + k))`` at step k (:mod:`ddpm_lib.ema`).
    - ``amp``: "auto" runs the autocast type of :func:`~ddpm_lib.precision.autocast_dtype` (bf16 on
      recent GPUs and on CPUs whose bf16 units measure fast, fp16 with a gradient scaler on 7.x
      GPUs, float32 elsewhere), measured once and recorded, so a resumed run keeps the first
      run's choice; "bf16", "fp16" and "off" force a choice. Under CPU autocast the
      U-Net's depthwise convolutions stay in float32 (:func:`~ddpm_lib.precision.float32_on_cpu`).
    - ``checkpoint``: a file path. If it exists, training resumes from it (the run's settings must
      match) and continues exactly as an uninterrupted run would; it is written every
      ``checkpoint_every`` steps and at the end.
    - ``callback(step, ema, losses)`` is called every ``log_every`` steps and after the last one.
    - ``channels_last``: store activations as [B, H, W, C] in memory (the tensors keep their
      [B, C, H, W] shape); CPU convolutions run faster that way (the performance appendix measures
      by how much).
    - ``compile``: run the model through ``torch.compile`` (the weights and checkpoints are unchanged).
    - ``data_range``: float images must lie in [-data_range, data_range], which catches images left
      in [0, 255]; ``None`` trains on data of any size, such as the latents of :mod:`ddpm_lib.latent`.
    - Several processes: under ``torchrun`` each process trains on its share of every batch, and
      all of them take the same steps (:mod:`ddpm_lib.distributed`); process 0 logs, calls
      ``callback`` and writes the checkpoint.

    Returns a :class:`~ddpm_lib.loop.TrainResult`; ``losses, ema = train(...)`` unpacks it.
    """
    check_run(steps=steps, batch_size=batch_size, log_every=log_every, ema_decay=ema_decay)
    learning_rate(0, lr=lr, steps=steps, warmup=warmup, lr_decay=lr_decay)  # checks the schedule's settings
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}")
    if (schedule is None) == (loss_fn is None):
        raise ValueError("pass a noise schedule (to train on the DDPM loss) or a loss_fn, not both and not neither")
    if images is None:
        raise ValueError("train needs images")
    loss_fn = DDPMLoss(schedule) if loss_fn is None else loss_fn
    objective = objective_name(loss_fn)
    if checkpoint is not None and objective is None:
        raise ValueError(f"cannot checkpoint a run of {loss_fn!r}: a resumed run must be able to check that its "
                         "objective is the same, so pass a module-level function or an object with a stable repr "
                         "(a dataclass, for example)")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters (an EMA copy is frozen: call "
                         "model.requires_grad_(True) to train it further)")
    device = resolve_device(device)
    processes = world(device.type)  # one process, or one of several started by torchrun
    if processes.size > 1 and device.type == "cuda":
        device = torch.device("cuda", processes.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    data = prepare_images(images, getattr(model, "in_channels", None), data_range)
    labels = prepare_labels(labels, len(data))
    if fits_on(device, data.numel() * data.element_size()):
        data = data.to(device)  # no per-step host-to-device copies
        labels = labels.to(device) if labels is not None else None

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).train()
    data = data.contiguous(memory_format=memory_format)
    loss_fn = loss_fn.to(device) if hasattr(loss_fn, "to") else loss_fn
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    state = load_checkpoint(checkpoint) if checkpoint is not None and checkpoint.exists() else None
    # "auto" is resolved once, by measuring, and recorded; a resumed run takes the recorded choice,
    # so a busier machine whose probe now measures otherwise still resumes the same run exactly.
    recorded = state["run"].get("amp") if state is not None and amp == "auto" else None
    dtype = amp_dtype(RECORDED_AMP.get(recorded, amp), device)
    precision = autocast(device, RECORDED_AMP[str(dtype).removeprefix("torch.") if dtype else "off"])
    # fp16's small range lets small gradients round to zero: scale the loss up, the gradients back down.
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    net = model  # what the objective calls; it shares its parameters with model
    if processes.size > 1:  # averages the gradients of the processes' shares during backward
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net = torch.compile(net) if compile else net
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(betas), weight_decay=0.0,
                                  fused=device.type == "cuda")
    ema = make_ema(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    batches = BatchSampler(data, labels, batch_size, sampling=sampling, seed=seed, generator=generator,
                           world=processes)
    run = {"objective": objective, "device": device.type, "batch_size": batches.batch_size, "lr": lr,
           "betas": list(betas), "ema_decay": ema_decay, "grad_clip": grad_clip, "seed": seed,
           "sampling": sampling, "amp": "off" if dtype is None else str(dtype).removeprefix("torch."),
           "num_images": len(data)}
    if warmup or lr_decay:  # recorded only when used, so older checkpoints still resume
        run.update(warmup=warmup, lr_decay=lr_decay, steps=steps)
    history, start, seconds_before = {}, 0, 0.0

    if state is not None:
        check_state_dict(model, state["model"], str(checkpoint))
        changed = {k: (state["run"].get(k), v) for k, v in run.items() if state["run"].get(k) != v}
        if changed:
            raise ValueError(f"{checkpoint} was written by a run with other settings, so it cannot be resumed "
                             f"exactly: {changed} (saved, now); use another checkpoint path")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        history, start, seconds_before = state["history"], state["step"], state["seconds"]
        if start > steps:
            raise ValueError(f"{checkpoint} is already {start} steps into training, "
                             f"more than steps={steps}")

    recorder = Recorder(steps=steps, start=start, history=history, progress=progress, world=processes)
    clock = time.perf_counter()  # wall time of training, kept in the checkpoint across resumptions
    for step in range(start, steps):
        batch = batches(step, device)
        with precision:
            out = loss_fn(net, batch, generator)
        values = out if isinstance(out, dict) else {"loss": out}
        if "loss" not in values:
            raise ValueError(f"loss_fn returned the keys {sorted(values)}; the one to optimise must be 'loss'")
        optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:  # a function of the step alone: a resumed run gets the same
            group["lr"] = learning_rate(step, lr=lr, steps=steps, warmup=warmup, lr_decay=lr_decay)
        if scaler is None:
            values["loss"].backward()
        else:
            scaler.scale(values["loss"]).backward()
            scaler.unscale_(optimizer)  # clip and step on the true gradients, not the scaled ones
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)  # skipped if the gradients overflowed; the EMA then averages in a repeat
            scaler.update()
        update_ema(ema, model, step, ema_decay)
        recorder.add(values)

        done = step + 1
        logging = done % log_every == 0 or done == steps
        saving = checkpoint is not None and (done % checkpoint_every == 0 or done == steps)
        if logging or saving:
            recorder.flush()
        if saving and processes.is_main:
            save_checkpoint(checkpoint, {
                "step": done, "history": recorder.history, "run": run, "generator": generator.get_state(),
                "seconds": seconds_before + time.perf_counter() - clock, "device": device_name(device),
                **model_record(model), "model": model.state_dict(), "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None})
        if saving:
            barrier(processes)  # no process runs ahead of a checkpoint that is still being written
        if logging and callback is not None and processes.is_main:
            callback(done, ema, recorder.history.get("loss", []))
    recorder.close()
    return TrainResult(recorder.history, ema, seconds_before + time.perf_counter() - clock)
