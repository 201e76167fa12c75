"""Sampling throughput: images per second of ddpm_sample (1000 steps) and ddim_sample (50 steps).

    python bench/sampling.py           # the book's MNIST model, batch 256
    python bench/sampling.py --tiny    # seconds on a CPU: checks the script runs

Variants: eager; torch.compile of the network; and, on CUDA, torch.compile with
mode="reduce-overhead", which replays the network's kernels from CUDA graphs and so removes the
per-kernel launch cost that dominates small-batch sampling. The samplers themselves are unchanged.
"""

from __future__ import annotations

import time

import torch

import ddpm_lib as dl
from common import cli


def run(tiny: bool = False, device=None) -> list[dict]:
    device = torch.device(device) if device is not None else dl.pick_device()
    cuda = device.type == "cuda"
    base, mults, batch, T = (8, (1, 2), 4, 20) if tiny else (32, (1, 2, 4), 256, 1000)
    torch.manual_seed(0)
    model = dl.UNet(1, base, mults).to(device).eval()
    schedule = dl.cosine_schedule(T).to(device)
    variants = {"eager": model}
    if not tiny:
        variants["torch.compile"] = torch.compile(model)
        if cuda:
            variants["torch.compile, CUDA graphs"] = torch.compile(model, mode="reduce-overhead")
    samplers = {f"ddpm_sample ({T} steps)": lambda net, x: dl.ddpm_sample(net, schedule, x),
                f"ddim_sample ({min(50, T)} steps)": lambda net, x: dl.ddim_sample(net, schedule, x, num_steps=min(50, T))}
    rows = []
    for variant, net in variants.items():
        for sampler, fn in samplers.items():
            x_T = torch.randn(batch, 1, 28, 28, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                fn(net, x_T[: max(1, batch // 4)] if tiny else x_T)  # warm-up (and compilation)
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn(net, x_T)
                if cuda:
                    torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            print(f"  {variant}, {sampler}: {seconds:.2f} s", flush=True)  # progress
            rows.append({"variant": variant, "sampler": sampler, "batch": batch, "seconds": seconds,
                         "images_per_s": batch / seconds})
    return rows


def format_table(rows: list[dict], device_label: str) -> str:
    lines = [f"Sampling throughput on {device_label} (batch {rows[0]['batch']}, bf16 autocast on CUDA)",
             f"{'network':<30}{'sampler':<26}{'seconds':>9}{'images/s':>10}"]
    lines += [f"{r['variant']:<30}{r['sampler']:<26}{r['seconds']:>9.2f}{r['images_per_s']:>10.1f}" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    return cli(run, format_table, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
