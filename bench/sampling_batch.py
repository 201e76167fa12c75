"""Inference time per image against batch size: the measurement behind UNet.cpu_inference_batch.

    python bench/sampling_batch.py           # the book's U-Net (base_dim 16), batches 32 to 500
    python bench/sampling_batch.py --tiny    # seconds: checks the script runs

One forward pass under no_grad is one sampler step. Each batch size is timed in the default
layout and channels-last, with the U-Net's slicing switched off, and the largest batch once more
with the slicing on (what a sampler gets by default). The settings are interleaved over three
rounds and each row keeps its median, so a machine that speeds up or slows down during the run
does not favour one of them.
"""

from __future__ import annotations

import time

import torch

import ddpm_lib as dl
from common import cli, interleaved_medians


def run(tiny: bool = False, device=None) -> list[dict]:
    device = torch.device(device) if device is not None else dl.pick_device()
    base, batches, images_per_point = (8, (4, 8), 16) if tiny else (16, (32, 64, 128, 256, 500), 2000)
    torch.manual_seed(0)
    model = dl.UNet(1, base, (1, 2, 4)).to(device).eval()
    default_slice = model.cpu_inference_batch
    settings = [(b, layout, None) for b in batches for layout in ("default", "channels-last")]
    settings.append((batches[-1], "channels-last", default_slice))  # what samplers get

    def seconds_per_image(setting) -> float:
        batch, layout, slice_size = setting
        model.to(memory_format=torch.channels_last if layout == "channels-last" else torch.contiguous_format)
        model.cpu_inference_batch = slice_size
        x = torch.randn(batch, 1, 28, 28, device=device)
        t = torch.full((batch,), 500, device=device)
        calls = max(2, images_per_point // batch)
        with torch.no_grad():
            model(x, t)  # warm-up
            start = time.perf_counter()
            for _ in range(calls):
                model(x, t)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return (time.perf_counter() - start) / (calls * batch)

    medians = interleaved_medians(seconds_per_image, settings)
    model.cpu_inference_batch = default_slice
    return [{"batch": b, "layout": layout, "slice": s, "ms_per_image": 1000 * medians[(b, layout, s)]}
            for b, layout, s in settings]


def format_table(rows: list[dict], device_label: str) -> str:
    lines = [f"U-Net inference time per image on {device_label} (median of 3 interleaved rounds)",
             f"{'batch':>6}  {'layout':<15}{'evaluated':<22}{'ms per image':>13}"]
    for r in rows:
        how = "in one pass" if r["slice"] is None else f"slices of <= {r['slice']}"
        lines.append(f"{r['batch']:>6}  {r['layout']:<15}{how:<22}{r['ms_per_image']:>13.3f}")
    return "\n".join(lines)


def main(argv=None):
    return cli(run, format_table, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
