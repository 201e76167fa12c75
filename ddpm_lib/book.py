"""What the book's chapters need around the library: start-up, smoke mode, timing, batching,
loading or training a model once, and animations that play offline.

The core modules (schedules, diffusion, samplers, networks, training, data, metrics) import
nothing from here; the chapters import these helpers instead of defining their own.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, load_model, save_model
from .utils import device_name, pick_device, seed_everything


def smoke_mode() -> bool:
    """True when ``DDPM_BOOK_SMOKE=1``: the chapters shrink their sizes to run in seconds (tests, CI)."""
    return os.environ.get("DDPM_BOOK_SMOKE", "0") not in ("", "0", "false", "False")


@dataclass
class Chapter:
    """What a chapter needs to know about where it runs; see :func:`start_chapter`."""

    device: torch.device
    smoke: bool
    started: float

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def summary(self) -> str:
        minutes, seconds = divmod(self.elapsed(), 60)
        mode = "smoke mode (reduced sizes)" if self.smoke else "full configuration"
        return f"This chapter ran in {int(minutes)} min {seconds:.0f} s on {device_name(self.device)}, {mode}."


def start_chapter(seed: int = 0) -> Chapter:
    """Seed everything, pick the device, start the clock and print where the chapter runs."""
    seed_everything(seed)
    chapter = Chapter(device=pick_device(), smoke=smoke_mode(), started=time.perf_counter())
    mode = "smoke (reduced sizes, DDPM_BOOK_SMOKE=1)" if chapter.smoke else "full"
    print(f"device: {device_name(chapter.device)} | PyTorch {torch.__version__} | mode: {mode}")
    return chapter


def _synchronize(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device=None):
    """``(fn(), seconds)``. On a GPU, work is queued and runs later: synchronise before and after
    so the clock measures the work, not the queuing."""
    _synchronize(device)
    start = time.perf_counter()
    out = fn()
    _synchronize(device)
    return out, time.perf_counter() - start


def in_batches(fn, n: int, batch_size: int = 500) -> torch.Tensor:
    """``fn(size, start)`` for consecutive batches covering ``n`` items, concatenated on the CPU.

    ``start`` (0, batch_size, 2 * batch_size, ...) lets ``fn`` seed each batch on its own, so the
    result does not depend on the batch size's effect on a shared random stream.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive, got {n} and {batch_size}")
    return torch.cat([fn(min(batch_size, n - k), k).cpu() for k in range(0, n, batch_size)])


def load_or_train(checkpoint, train_fn, *, device=None) -> tuple[nn.Module, dict]:
    """The model saved at ``checkpoint`` if the file exists, else the one ``train_fn()`` returns, saved there.

    Returns ``(model, info)``, the model in eval mode on ``device``; ``info`` says where it came
    from (``"source"``) and how long its training took, where (``"seconds"``, ``"device"``).
    """
    checkpoint = Path(checkpoint)
    device = torch.device(device) if device is not None else pick_device()
    if checkpoint.exists():
        model = load_model(checkpoint, device=device)
        state = load_checkpoint(checkpoint)
        return model, {"source": f"loaded from {checkpoint}", "seconds": state.get("seconds"),
                       "device": state.get("device")}
    model, seconds = timed(train_fn, device)
    info = {"source": "trained here", "seconds": seconds, "device": device_name(device)}
    save_model(checkpoint, model, seconds=seconds, device=info["device"])
    return model.to(device).eval(), info


# Text symbols for the player's buttons (common glyphs), so the page needs no icon font from a CDN.
_PLAYER_ICONS = {"fa fa-minus": "&minus;", "fa fa-fast-backward": "&laquo;", "fa fa-step-backward": "&lsaquo;",
                 "fa fa-play fa-flip-horizontal": "&#x25C0;", "fa fa-pause": "&#x2016;", "fa fa-play": "&#x25B6;",
                 "fa fa-step-forward": "&rsaquo;", "fa fa-fast-forward": "&raquo;", "fa fa-plus": "+"}


def animation_html(animation, default_mode: str = "once") -> str:
    """A matplotlib animation as self-contained HTML (every frame embedded, player controls included).

    Matplotlib's ``to_jshtml`` loads an icon font from a CDN for its buttons; offline, or behind a
    strict content policy, that request fails and the buttons are blank. We drop the link and
    write the buttons as text symbols instead.
    """
    html = animation.to_jshtml(default_mode=default_mode)
    html = re.sub(r'<link rel="stylesheet"\s*href="https://maxcdn[^"]*font-awesome[^"]*">', "", html)
    return re.sub(r'<i class="([^"]*)"></i>', lambda m: _PLAYER_ICONS.get(m.group(1), ""), html)
