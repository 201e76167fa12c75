"""Small helpers: choosing a device, seeding every generator, naming the hardware."""

from __future__ import annotations

import platform
import random

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
    """A human-readable name of ``device``, e.g. 'NVIDIA H100 80GB HBM3' or 'AMD EPYC CPU (2 threads, x86_64)'.

    A CPU's name is the vendor string torch reads from CPUID (PyTorch 2.6 and later); CPUs that
    report the same instruction sets can still differ several-fold in bf16 speed, so it is worth
    printing beside a timing.
    """
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"{cpu_name()}CPU ({torch.get_num_threads()} threads, {platform.machine() or 'unknown'})"


def cpu_capabilities() -> dict:
    """What torch reads from the CPU with CPUID (``torch.cpu.get_capabilities()``, PyTorch 2.6 and
    later): instruction sets such as "avx512_bf16" as booleans, and "cpu_name". Empty where torch
    cannot tell (older PyTorch, or a probe that fails, which says nothing about the hardware)."""
    probe = getattr(torch.cpu, "get_capabilities", None)
    try:
        return dict(probe()) if probe is not None else {}
    except Exception:
        return {}


def cpu_name() -> str:
    """The CPU's name as torch reports it, with a trailing space ('AMD EPYC '), or '' if it cannot tell."""
    name = str(cpu_capabilities().get("cpu_name", "")).strip()
    return f"{name} " if name else ""
