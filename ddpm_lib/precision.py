"""Mixed precision: which reduced-precision type a device runs fast, and the ``amp`` setting.

Autocast runs matrix products and convolutions in a 16-bit type while weights, optimiser state and
the loss stay in float32. Which 16-bit type depends on the hardware: GPUs have tensor cores, and
recent Intel and AMD CPUs have bfloat16 units (AMX tiles, or the AVX512-BF16 dot-product
instructions) that oneDNN uses for convolutions and matrix products. Where a device has no such
units, bf16 is emulated and slower than float32, so "auto" leaves it off.
"""

from __future__ import annotations

import contextlib

import torch


def cpu_bf16_units() -> list[str]:
    """The native bfloat16 instruction sets this CPU reports (empty if none, or if torch cannot tell).

    Read from ``torch.cpu.get_capabilities()`` (PyTorch 2.6 and later), the same CPUID probe oneDNN
    dispatches on: "amx_bf16" (Sapphire Rapids and later) and "avx512_bf16" (Cooper Lake, Zen 4 and
    later). Older PyTorch cannot tell, and gets none: float32 is never the wrong answer, only slower.
    """
    probe = getattr(torch.cpu, "get_capabilities", None)
    if probe is None:
        return []
    try:
        capabilities = probe()
    except Exception:  # a probe that fails says nothing about the hardware
        return []
    return [name for name in ("amx_bf16", "avx512_bf16") if capabilities.get(name)]


def autocast_dtype(device) -> torch.dtype | None:
    """The mixed-precision type the hardware runs fast, or None for plain float32.

    - CUDA: bfloat16 on compute capability 8.0 or more (Ampere, Hopper, ...); float16 on 7.x (Volta,
      Turing: the T4), whose tensor cores run fp16 and whose bf16 is only emulated; None below.
    - CPU: bfloat16 where the CPU has AMX tiles ("amx_bf16" in :func:`cpu_bf16_units`), else None.
      AVX512-BF16 alone does not pay: measured on such a CPU (2 cores, oneDNN's avx512_core_bf16
      kernels), a training step of the book's U-Net ran at 0.83x its float32 speed, with the
      depthwise convolutions kept in float32 (``bench/train_throughput.py``).
    - Anything else (Apple's MPS, ...): None.
    """
    device = torch.device(device)
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16 if major == 7 else None
    if device.type == "cpu":
        return torch.bfloat16 if "amx_bf16" in cpu_bf16_units() else None
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
