"""Mixed precision: which reduced-precision type a device runs fast, and the ``amp`` setting.

Autocast runs matrix products and convolutions in a 16-bit type while weights, optimiser state and
the loss stay in float32. Which 16-bit type depends on the hardware: GPUs have tensor cores, and
recent Intel and AMD CPUs have bfloat16 units (AMX tiles, or the AVX512-BF16 dot-product
instructions) that oneDNN uses for convolutions and matrix products. Where a device has no such
units, bf16 is emulated and slower than float32, so "auto" leaves it off. Where a CPU has them,
whether they beat float32 depends on the chip, not on the flag, so "auto" measures it once.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch

from .utils import cpu_capabilities

# How much faster than float32 a CPU's bf16 convolution must be for "auto" to pick bf16. CPUs that
# report the same AVX512-BF16 units run bf16 below float32's speed on some chips and well above it
# on others (the performance appendix gives the measurements, from bench/cpu_layers.py and
# bench/train_throughput.py); the bar sits between the two groups, clear of timing noise.
CPU_BF16_MIN_SPEEDUP = 1.3


def cpu_bf16_units() -> list[str]:
    """The native bfloat16 instruction sets this CPU reports (empty if none, or if torch cannot tell).

    Read from ``torch.cpu.get_capabilities()`` (PyTorch 2.6 and later), the same CPUID probe oneDNN
    dispatches on: "amx_bf16" (Sapphire Rapids and later) and "avx512_bf16" (Cooper Lake, Zen 4 and
    later). Older PyTorch cannot tell, and gets none: float32 is never the wrong answer, only slower.
    """
    capabilities = cpu_capabilities()
    return [name for name in ("amx_bf16", "avx512_bf16") if capabilities.get(name)]


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup(batch: int = 32, channels: int = 64, size: int = 28, repeats: int = 3) -> float:
    """How many times faster this CPU runs a 3x3 convolution in bf16 than in float32.

    The U-Net's dense convolutions are most of its arithmetic, so one of them at the book's shapes
    (channels-last, as ``dl.train`` runs them) stands for the rest. Measured once per process, on
    torch's current threads (about 0.1 s): the best of ``repeats`` timings of each type, interleaved
    so that a busy moment hits both alike.
    """
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    for _ in range(repeats + 1):  # the first round is a warm-up: oneDNN picks and prepares kernels
        for x_, w_ in ((x, w), (x.bfloat16(), w.bfloat16())):
            start = time.perf_counter()
            torch.nn.functional.conv2d(x_, w_, padding=1)
            best[x_.dtype] = min(best[x_.dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def autocast_dtype(device) -> torch.dtype | None:
    """The mixed-precision type the hardware runs fast, or None for plain float32.

    - CUDA: bfloat16 on compute capability 8.0 or more (Ampere, Hopper, ...); float16 on 7.x (Volta,
      Turing: the T4), whose tensor cores run fp16 and whose bf16 is only emulated; None below.
    - CPU: bfloat16 where the CPU reports bf16 units (:func:`cpu_bf16_units`) *and* a bf16
      convolution measures at least ``CPU_BF16_MIN_SPEEDUP`` times its float32 speed
      (:func:`cpu_bf16_speedup`), else None. The flag alone cannot tell: AVX512-BF16 is fast on
      some chips and slower than float32 on others (see ``CPU_BF16_MIN_SPEEDUP``).
    - Anything else (Apple's MPS, ...): None.
    """
    device = torch.device(device)
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16 if major == 7 else None
    if device.type == "cpu" and cpu_bf16_units() and cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP:
        return torch.bfloat16
    return None


def amp_dtype(amp, device: torch.device) -> torch.dtype | None:
    """Resolve ``amp`` ("auto", "bf16", "fp16" or "off") to an autocast dtype, None meaning off."""
    choices = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
    if amp not in choices:
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")
    return autocast_dtype(device) if amp == "auto" else choices[amp]


def autocast(device, amp="auto"):
    """A context that runs the code inside under ``amp`` on ``device``; a no-op when it resolves to off."""
    device = torch.device(device)
    dtype = amp_dtype(amp, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def cpu_autocast_on() -> bool:
    """Whether CPU autocast is active here (the spelling changed in PyTorch 2.4)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # PyTorch < 2.4
        return torch.is_autocast_cpu_enabled()


def float32_on_cpu(layer, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in float32 when CPU autocast is on, as ``layer(x)`` otherwise.

    For the layers that a measurement shows to be slower in bf16 than in float32 on a CPU
    (``bench/cpu_layers.py``): oneDNN has no fast bf16 kernel for a 7x7 depthwise convolution's
    backward pass, which then costs more than the rest of the training step together.
    """
    if x.device.type != "cpu" or not cpu_autocast_on():
        return layer(x)
    with torch.autocast("cpu", enabled=False):
        return layer(x.float())
