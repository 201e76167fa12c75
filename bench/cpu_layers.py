"""Which of the U-Net's layers are faster in bfloat16 than in float32 on this CPU, forward + backward.

    python bench/cpu_layers.py            # the book's U-Net shapes, batch 128
    python bench/cpu_layers.py --tiny     # seconds: checks the script runs

Autocast on a CPU hands convolutions and matrix products to oneDNN in bf16. Where the CPU has bf16
units that is faster for the dense convolutions, but not for every layer: a layer whose bf16 time
is above its float32 time is one that ``ddpm_lib.precision.float32_on_cpu`` should keep in float32.
Each row times one layer's forward and backward at a shape the book's U-Net (base_dim 32) meets at
28x28, under autocast and without, interleaved so that machine noise hits both alike.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from common import cli, interleaved_medians


def layers(tiny: bool, base: int = 32):
    """(name, layer, input shape) at the first level of the book's U-Net."""
    b, size = (8, 8) if tiny else (128, 28)
    c, hidden = base, 2 * base
    return [
        ("7x7 depthwise conv", nn.Conv2d(c, c, 7, padding=3, groups=c), (b, c, size, size)),
        ("7x7 depthwise conv, 2C", nn.Conv2d(2 * c, 2 * c, 7, padding=3, groups=2 * c), (b, 2 * c, size, size)),
        ("7x7 stem conv, 1 -> C", nn.Conv2d(1, c, 7, padding=3), (b, 1, size, size)),
        ("3x3 conv, C -> 2C", nn.Conv2d(c, hidden, 3, padding=1), (b, c, size, size)),
        ("3x3 conv, 2C -> C", nn.Conv2d(hidden, c, 3, padding=1), (b, hidden, size, size)),
        ("1x1 conv, 4C -> 2C", nn.Conv2d(4 * c, hidden, 1), (b, 4 * c, size // 2, size // 2)),
        ("GroupNorm(1, 2C)", nn.GroupNorm(1, hidden), (b, hidden, size, size)),
    ]


def time_layer(layer, shape, bf16: bool, repeats: int) -> float:
    """Median seconds of one forward + backward, channels_last as dl.train runs it."""
    # Inside the network, activations reach a layer already in bf16: no cast to pay on the input.
    x = torch.randn(shape, dtype=torch.bfloat16 if bf16 else torch.float32)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(x)
        y.float().square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first call pays for oneDNN's kernel selection


def run(tiny: bool = False, device=None) -> list[dict]:
    torch.manual_seed(0)
    repeats = 3 if tiny else 12
    rows = []
    for name, layer, shape in layers(tiny):
        layer = layer.to(memory_format=torch.channels_last)
        medians = interleaved_medians(lambda bf16: time_layer(layer, shape, bf16, repeats), (False, True))
        f, b = medians[False], medians[True]
        print(f"  {name}: float32 {1000 * f:.1f} ms, bf16 {1000 * b:.1f} ms", flush=True)
        rows.append({"layer": name, "shape": list(shape), "fp32_ms": 1000 * f, "bf16_ms": 1000 * b})
    return rows


def format_table(rows: list[dict], device_label: str) -> str:
    lines = [f"One layer's forward + backward on {device_label}, channels_last, median of interleaved runs",
             f"{'layer':<26}{'input':>20}{'float32 ms':>12}{'bf16 ms':>10}{'bf16 speed-up':>15}"]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['layer']:<26}{shape:>20}{r['fp32_ms']:>12.1f}{r['bf16_ms']:>10.1f}"
                     f"{r['fp32_ms'] / r['bf16_ms']:>14.2f}x")
    return "\n".join(lines)


def main(argv=None):
    return cli(run, format_table, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
