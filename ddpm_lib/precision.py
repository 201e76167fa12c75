"""Mixed precision: which reduced-precision type a device runs fast, and the ``amp`` setting of train.

Autocast runs matrix products and convolutions in a 16-bit type while weights, optimiser state and
the loss stay in float32. Which 16-bit type depends on the hardware, and on small networks the
casts can cost more than the faster arithmetic saves, which is why ``amp`` can force a choice.
"""

from __future__ import annotations

import torch


def autocast_dtype(device) -> torch.dtype | None:
    """The mixed-precision type the hardware runs fast, or None for plain float32.

    bfloat16 on CUDA GPUs of compute capability 8.0 or more (Ampere, Hopper, ...); float16 on 7.x
    (Volta, Turing: the T4), whose tensor cores run fp16, and whose bf16 is only emulated, with no
    cuDNN bf16 convolutions; None on older GPUs, on CPUs and on Apple's MPS.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16 if major == 7 else None


def amp_dtype(amp, device: torch.device) -> torch.dtype | None:
    """Resolve ``amp`` ("auto", "bf16", "fp16" or "off") to an autocast dtype, None meaning off."""
    choices = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
    if amp not in choices:
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")
    return autocast_dtype(device) if amp == "auto" else choices[amp]
