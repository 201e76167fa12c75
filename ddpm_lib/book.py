"""What the book's chapters need around the library: start-up, smoke mode, sizes, the data, finding
a trained model (the reader's or the published one) and publishing one, and time estimates; and,
from :mod:`ddpm_lib.protocol`, the measuring protocol: the fixed starting noises by name, drawing
digits timed and counted, and the book's scorer against the held-out digits.

The core modules (schedules, diffusion, samplers, networks, training, data, metrics) import
nothing from here; the chapters import these helpers instead of defining their own.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model
from .data import held_out_split, load_mnist, to_model_range
from .hub import load_weights, pretrained
from .protocol import (NOISE_SEEDS, Drawn, comparison_table, conditional_scores, draw_digits,  # noqa: F401
                       edit_scores, in_batches, network_calls, noise, scorer, timed)
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


def work_fraction() -> float:
    """The share of a chapter's full work to do: ``$DDPM_BOOK_FRACTION`` (default 1).

    On a slow device, ``DDPM_BOOK_FRACTION=0.25`` makes every chapter train and sample a quarter as
    much: the chapters still run top to bottom, with weaker models and wider error bars than the
    book shows.
    """
    raw = os.environ.get("DDPM_BOOK_FRACTION", "1")
    try:
        fraction = float(raw)
    except ValueError:
        raise ValueError(f"DDPM_BOOK_FRACTION must be a number in (0, 1], got {raw!r}") from None
    if not 0 < fraction <= 1:
        raise ValueError(f"DDPM_BOOK_FRACTION must be a number in (0, 1], got {raw!r}")
    return fraction


def size(full: int, *, smoke: int) -> int:
    """A chapter's work size: ``smoke`` in smoke mode, else ``full`` times :func:`work_fraction`
    (at least 1)."""
    if smoke_mode():
        return smoke
    return max(1, round(full * work_fraction()))


SMOKE_DIGITS = 512  # per part, in smoke mode


def digits(part: str = "train", *, held_out: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's data: ``(images uint8 [N, 28, 28], labels [N])`` of one part of MNIST's test split.

    The chapters' runs must not depend on a download of MNIST's 60,000 training digits, so every
    chapter uses the 10,000 test digits, split once by :func:`ddpm_lib.held_out_split` (seed 0):
    ``"train"`` fits the models, ``"held_out"`` judges them, ``"all"`` is both. Smoke mode keeps
    the first 512 images of the part.
    """
    images, labels = load_mnist("test")
    if part != "all":
        split = held_out_split(labels, held_out=held_out, seed=0)
        if part not in split._fields:
            raise ValueError(f"part must be 'train', 'held_out' or 'all', got {part!r}")
        index = getattr(split, part)
        images, labels = images[index], labels[index]
    if smoke_mode():
        images, labels = images[:SMOKE_DIGITS], labels[:SMOKE_DIGITS]
    return images, labels


def checkpoint_dir() -> Path:
    """Where the chapters keep the reader's trained models: ``$DDPM_BOOK_CHECKPOINTS``, else ``checkpoints/``.

    Point the variable at a folder that outlives the session (a mounted Google Drive folder in
    Colab, say) and a model trained in one chapter is there for the next, on any machine.
    """
    return Path(os.environ.get("DDPM_BOOK_CHECKPOINTS", "checkpoints")).expanduser()


def checkpoint_path(name: str) -> Path:
    """The reader's checkpoint of model ``name``: ``<checkpoint_dir>/<name>.pt`` (``<name>_smoke.pt`` in smoke mode)."""
    return checkpoint_dir() / (f"{name}_smoke.pt" if smoke_mode() else f"{name}.pt")


def fresh_checkpoint(name: str, *, resume: bool = False) -> Path:
    """:func:`checkpoint_path` of ``name`` for a chapter's training run: an existing file is deleted
    first, so every figure after the run comes from one complete training, unless ``resume`` asks
    to continue an interrupted run from it (:func:`ddpm_lib.train` resumes exactly)."""
    path = checkpoint_path(name)
    if path.exists() and not resume:
        path.unlink()
    return path


def report_training(result, *, batch_size: int, device, verb: str = "trained") -> None:
    """Print what a :func:`ddpm_lib.train` run did: steps, images, minutes, device and final loss."""
    import numpy as np

    steps, last = len(result.losses), min(100, len(result.losses))
    print(f"{verb} {steps:,} steps ({steps * batch_size:,} images) in {result.seconds / 60:.1f} min on "
          f"{device_name(device)}; mean loss over the last {last} steps {np.mean(result.losses[-last:]):.4f}")


def load_trained(name: str, *, device=None) -> tuple[nn.Module, str]:
    """The model ``name`` in eval mode: the reader's own checkpoint when a chapter saved one (or the
    weights its :func:`save_for_publishing` wrote), else the published weights
    (:func:`ddpm_lib.pretrained`). Returns ``(model, source)`` and prints the source.

    The model comes channels-last, the layout :func:`ddpm_lib.train` trains in: CPU convolutions
    run faster in it, and it changes outputs only by rounding (chapter 8 measures by how much).
    Never a stand-in: with neither, the error of :func:`ddpm_lib.pretrained` says what is missing.
    """
    path, weights = checkpoint_path(name), checkpoint_path(name).with_suffix(".safetensors")
    if path.exists():
        model, source = load_model(path, device=device), f"your checkpoint {path}"
    elif weights.exists():  # what a chapter's save_for_publishing wrote
        model, source = load_weights(weights, device=device), f"your weights {weights}"
    else:
        model, source = pretrained(name, device=device), f"the published weights '{name}'"
    model = model.to(memory_format=torch.channels_last)
    print(f"{name}: {type(model).__name__} from {source}")
    return model, source


def save_for_publishing(name: str, model: nn.Module, draw, *, n: int = 1000) -> dict:
    """Write ``model``'s weights to ``<checkpoint_dir>/<name>.safetensors`` in float16 when that changes
    no sample measurably, else in float32; return what was measured and written. (In smoke mode
    the file is ``<name>_smoke.safetensors``, so a test run never overwrites a full run's file.)

    ``draw(model, n)`` must return ``n`` images ``[n, 1, 28, 28]`` in [-1, 1] from a fixed seed, so
    both copies start from the same noise. Measured, with the book's scorer: each set's FD to the
    held-out digits, and their paired difference (float16 minus float32). float16 is kept when the
    whole 95% interval of that difference lies within one standard error of the float32 FD: the
    rounding then moves the FD by less than the measurement itself can resolve.
    """
    from .hub import save_weights

    device = next(model.parameters()).device
    path = checkpoint_dir() / (f"{name}_smoke.safetensors" if smoke_mode() else f"{name}.safetensors")
    save_weights(path, model, dtype=torch.float16)
    half = load_weights(path, device=device)
    with torch.no_grad():
        full_images, half_images = draw(model, n).cpu(), draw(half, n).cpu()
    judge = scorer()
    full, rounded = judge.score(full_images.clamp(-1, 1)), judge.score(half_images.clamp(-1, 1))
    change = judge.compare(rounded, full, "fd", paired=True)
    unresolved = -full.fd.std < change.difference.low and change.difference.high < full.fd.std
    dtype = torch.float16 if unresolved else torch.float32
    sha256 = save_weights(path, model, dtype=dtype)
    difference = (full_images - half_images).abs()
    return {"file": path, "dtype": dtype, "bytes": path.stat().st_size, "sha256": sha256, "n": n,
            "fd": {"float32": full.fd, "float16": rounded.fd}, "change": change,
            "max_pixel_difference": difference.max().item(),
            "mean_pixel_difference": difference.mean().item()}


def publishing_table(report: dict, sampler: str) -> str:
    """The check of :func:`save_for_publishing`'s ``report`` as a Markdown table: each copy's FD with
    its standard error, their paired difference, and what was published. ``sampler`` names how the
    digits were drawn."""
    from .evidence import format_interval, format_pm, markdown_table

    fd = report["fd"]
    rows = [["float32", format_pm(fd["float32"])], ["float16", format_pm(fd["float16"])]]
    if "change" in report:
        rows.append(["float16 − float32, paired [95%]", format_interval(report["change"].difference)])
    rows.append(["**published**", f"{str(report['dtype']).removeprefix('torch.')}, {report['bytes'] / 2**20:.2f} MB"])
    return markdown_table(["weights", f"FD to the held-out digits (n = {report['n']:,}, {sampler})"], rows)


def estimate_run(run, total_steps: int, *, probe_steps: int = 10, device=None) -> float:
    """How long ``run(total_steps)`` will take here, from a timed ``run(probe_steps)`` after an
    untimed ``run(1)`` that pays the one-off costs.

    ``run(k)`` must do ``k`` steps of the real work on a throw-away copy (a fresh model, say), so
    that probing leaves the chapter's own state untouched.
    """
    if probe_steps < 1 or total_steps < 0:
        raise ValueError(f"probe_steps must be positive and total_steps non-negative, got {probe_steps}, {total_steps}")
    run(1)
    _, seconds = timed(lambda: run(probe_steps), device)
    return seconds / probe_steps * total_steps


def print_estimate(what: str, seconds: float) -> None:
    """Say how long the next cell will take on this device, and how to make it shorter."""
    minutes = seconds / 60
    when = f"{minutes:.0f} min" if minutes >= 1.5 else f"{seconds:.0f} s"
    hint = "" if minutes < 5 or work_fraction() < 1 else " (DDPM_BOOK_FRACTION=0.25 does a quarter of it)"
    print(f"{what}: about {when} on {device_name(pick_device())}{hint}")
