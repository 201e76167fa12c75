"""Saving and loading training state, with clear errors for files that belong to another model."""

from __future__ import annotations

import importlib
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


def model_record(model: nn.Module) -> dict:
    """What a checkpoint needs to rebuild ``model``: its class and the arguments it was built with.

    Every ddpm_lib model keeps its constructor arguments in ``model.config``.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise ValueError(f"{type(model).__name__} has no .config dict of constructor arguments, so a checkpoint "
                         "could not rebuild it")
    return {"model_class": f"{type(model).__module__}.{type(model).__qualname__}", "model_config": config}


def as_model(model, name: str = "net") -> nn.Module:
    """``model`` itself, or the model a :func:`model_record` describes: how a model that holds
    other models (an EDMDenoiser's network, a LatentDiffusion's two) rebuilds them from its config."""
    if isinstance(model, dict):  # rebuilding from a file: {"model_class": ..., "model_config": ...}
        model = model_class(model["model_class"])(**model["model_config"])
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a network (an nn.Module), got {type(model).__name__}")
    return model


def save_model(path, model: nn.Module, **extra) -> None:
    """Save ``model``'s weights with its class and config, so :func:`load_model` rebuilds it alone.

    ``extra`` holds plain values to keep beside them (training time, device, ...).
    """
    save_checkpoint(path, {**extra, **model_record(model), "model": model.state_dict()})


def model_class(name: str) -> type:
    """The ddpm_lib model class recorded as ``name`` ("ddpm_lib.vae.VAE", for example)."""
    module_name, _, class_name = str(name).rpartition(".")
    if module_name.split(".")[0] != "ddpm_lib":
        raise ValueError(f"the file records a {name!r}, which is not a ddpm_lib model")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ValueError(f"the file records a {name!r}, a model class this version of ddpm_lib does not have") \
            from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"the file names {name!r}, which is not a model class")
    return cls


def load_model(path, *, device=None, ema: bool = True, expected: type | None = None) -> nn.Module:
    """Rebuild the model stored in a checkpoint (of :func:`save_model` or a training run), in eval mode.

    Works for every ddpm_lib model: the checkpoint names the class and its config. ``ema=True``
    loads the exponential moving average of the weights when the file has one, ``ema=False`` the
    final weights (after a learning rate decayed to zero these can sample as well or better: the
    performance appendix measures both). ``expected``: a class the model must be, for a clear
    error when a file holds another.
    """
    state = load_checkpoint(path)
    if "model_class" not in state or not isinstance(state.get("model_config"), dict):
        raise ValueError(f"{path} does not record its model's class and configuration, so it cannot rebuild it")
    cls, config = model_class(state["model_class"]), state["model_config"]
    if expected is not None and not issubclass(cls, expected):
        raise ValueError(f"{path} holds a {cls.__name__}, not a {expected.__name__}")
    try:
        model = cls(**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {cls.__name__} cannot be built from the recorded config {config}: {err}") from None
    weights = state["ema" if ema and "ema" in state else "model"]
    check_state_dict(model, weights, f"{path} ({cls.__name__} with config {config})")
    model.load_state_dict(weights)
    return model.to(device if device is not None else "cpu").eval()
