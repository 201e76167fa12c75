"""Small helpers every chapter needs: choosing a device, seeding, naming the hardware."""

from __future__ import annotations

import os
import platform
import random
import time
from dataclasses import dataclass

import numpy as np
import torch


def pick_device() -> torch.device:
    """The best available device: a CUDA GPU, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (PyTorch's covers every CUDA device)."""
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device_name(device=None) -> str:
    """A human-readable name of ``device``, e.g. 'NVIDIA H100 80GB HBM3' or 'CPU (2 threads, x86_64)'."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads, {platform.machine() or 'unknown'})"


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
