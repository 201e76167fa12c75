"""The command line shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import statistics

import torch

import ddpm_lib as dl


def cli(run, format_table, description: str, argv=None) -> list[dict]:
    """Parse ``--tiny`` and ``--device``, run the benchmark, print its table and return its rows."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, a few steps: a smoke test of the script")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: the best available)")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else dl.pick_device()
    rows = run(tiny=args.tiny, device=device)
    print(format_table(rows, f"{dl.device_name(device)}, PyTorch {torch.__version__}"))
    return rows


def interleaved_medians(measure, settings, rounds: int = 3) -> dict:
    """``{setting: median of measure(setting) over rounds}``, the settings taking turns in every
    round, so that a machine that speeds up or slows down during the run favours none of them."""
    times = {s: [] for s in settings}
    for _ in range(rounds):
        for s in settings:
            times[s].append(measure(s))
    return {s: statistics.median(v) for s, v in times.items()}
