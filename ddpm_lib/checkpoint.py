"""Saving and loading training state, with clear errors for files that belong to another model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

FORMAT = "ddpm_lib.checkpoint.v1"


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: an interrupted save never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain Python values only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for unreadable files
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ddpm_lib checkpoint (format {FORMAT!r} expected)")
    return state


def check_state_dict(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Raise a ValueError naming the differences if ``state_dict`` was not saved from a model like ``model``."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state_dict.items()}
    problems = [f"missing {k}" for k in own if k not in theirs]
    problems += [f"unexpected {k}" for k in theirs if k not in own]
    problems += [f"{k}: shape {list(theirs[k])} in the file, {list(own[k])} in the model"
                 for k in own if k in theirs and own[k] != theirs[k]]
    if problems:
        shown = "\n  ".join(problems[:5]) + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{source} was written for a different model ({len(problems)} tensors differ):\n  {shown}")


def load_model(path, device=None, ema: bool = True) -> nn.Module:
    """Rebuild the :class:`~ddpm_lib.unet.UNet` stored in a training checkpoint, in eval mode.

    ``ema=True`` loads the exponential moving average of the weights, which samples better.
    """
    from .unet import UNet  # local import: checkpoint.py is also used by train.py

    state = load_checkpoint(path)
    config = state.get("model_config")
    if not config:
        raise ValueError(f"{path} does not record the model's configuration, so it cannot rebuild it")
    model = UNet(**config)
    weights = state["ema" if ema else "model"]
    check_state_dict(model, weights, str(path))
    model.load_state_dict(weights)
    return model.to(device if device is not None else "cpu").eval()
