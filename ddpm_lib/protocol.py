"""The book's measuring protocol, as the chapters use it (re-exported by :mod:`ddpm_lib.book`):

- fixed starting noises by name (:func:`noise`), so every chapter and every rerun draws the same x_T;
- drawing digits in batches, timed and with their network evaluations counted (:func:`draw_digits`);
- a network's cost per call, for a chapter's time estimates (:func:`network_calls`);
- the book's scorer against the held-out digits, built once (:func:`scorer`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .data import to_model_range


# The chapters' fixed starting noises, by name: a seed each, so a rerun draws the same digits,
# and chapters that share a name (the evidence chapter and the sampler lab) start from the same x_T.
NOISE_SEEDS = {"unconditional": 1000, "guidance": 2000, "flow": 3000, "edm": 4000, "latent": 6000,
               "publishing": 5}
NOISE_BLOCK = 100  # digits per seeded block


def noise(name: str, n: int, *, start: int = 0, device=None, shape=(1, 28, 28)) -> torch.Tensor:
    """Standard normal starting noise ``[n, *shape]`` for digits ``start .. start + n - 1`` of the
    named set (:data:`NOISE_SEEDS`).

    Drawn on the CPU in seeded blocks of 100 digits, so digit i's noise is the same on any device,
    for any batch size and any ``n``: two runs, or two samplers, that take digit i take the same x_T.
    """
    if name not in NOISE_SEEDS:
        raise ValueError(f"unknown noise set {name!r}; the sets are {', '.join(NOISE_SEEDS)}")
    if n < 1 or start < 0:
        raise ValueError(f"need n >= 1 and start >= 0, got n = {n}, start = {start}")
    first, last = start // NOISE_BLOCK, (start + n - 1) // NOISE_BLOCK
    blocks = [torch.randn(NOISE_BLOCK, *shape, generator=torch.Generator().manual_seed(
        NOISE_SEEDS[name] * 100_003 + b)) for b in range(first, last + 1)]
    offset = start - first * NOISE_BLOCK
    return torch.cat(blocks)[offset:offset + n].to(device if device is not None else "cpu")


def network_calls(model: nn.Module, *, batch_size: int, t: float = 500, labels: bool = False, device=None):
    """``run(k)``: k evaluations of ``model`` on one batch of ``batch_size`` noisy digits at time ``t``
    (with labels when ``labels``), for :func:`estimate_run` to time a sampler's network cost."""
    device = device if device is not None else next(model.parameters()).device
    x = torch.randn(batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.full((batch_size,), t, device=device)
    extra = (torch.zeros(batch_size, dtype=torch.long, device=device),) if labels else ()

    @torch.no_grad()
    def run(k: int) -> None:
        for _ in range(k):
            model(x, t, *extra)

    return run


_SCORERS: dict = {}


def scorer(net=None):
    """The book's :class:`~ddpm_lib.Scorer` against the held-out digits (built once per feature
    network and reused; in smoke mode against the smoke-mode held-out digits)."""
    from .book import digits, smoke_mode
    from .scoring import Scorer

    key = (id(net), smoke_mode())
    if key not in _SCORERS:
        _SCORERS[key] = Scorer(to_model_range(digits("held_out")[0]), net=net)
    return _SCORERS[key]


def _synchronize(device) -> None:
    kind = torch.device(device).type if device is not None else None
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def timed(fn, device=None):
    """``(fn(), seconds)``. On a GPU, work is queued and runs later: synchronise before and after
    so the clock measures the work, not the queuing."""
    _synchronize(device)
    start = time.perf_counter()
    out = fn()
    _synchronize(device)
    return out, time.perf_counter() - start


def in_batches(fn, n: int, batch_size: int = 500) -> torch.Tensor:
    """``fn(size, start)`` for consecutive batches covering ``n`` items, concatenated on the CPU.

    ``start`` (0, batch_size, 2 * batch_size, ...) lets ``fn`` seed each batch on its own, so the
    result does not depend on the batch size's effect on a shared random stream.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive, got {n} and {batch_size}")
    return torch.cat([fn(min(batch_size, n - k), k).cpu() for k in range(0, n, batch_size)])


@dataclass
class Drawn:
    """What :func:`draw_digits` returns: the digits, clamped to [-1, 1] on the CPU, the network
    evaluations each digit took, the wall time of the whole draw, and their score where a scorer
    was given. ``drawn["score"]`` reads like ``drawn.score``."""

    x: torch.Tensor
    nfe: int
    seconds: float
    score: object = None  # a ddpm_lib.Score

    def __getitem__(self, key: str):
        if key not in ("x", "nfe", "seconds", "score"):
            raise KeyError(f"a draw has x, nfe, seconds and score, not {key!r}")
        return getattr(self, key)


def draw_digits(draw, n: int, *, batch_size: int = 500, device=None, scorer=None) -> Drawn:
    """``draw(size, start)`` over :func:`in_batches` of ``n`` digits, timed, with its network
    evaluations per digit counted by :func:`ddpm_lib.count_nfe` (a guided evaluation counts once),
    and scored by ``scorer`` (a :class:`~ddpm_lib.Scorer`) if one is given; the clock stops before
    the scoring."""
    from .sampling import count_nfe

    with count_nfe() as counter:
        x, seconds = timed(lambda: in_batches(draw, n, batch_size), device)
    x = x.clamp(-1, 1)
    return Drawn(x, counter.nfe // -(-n // batch_size), seconds,  # nfe per batch
                 scorer.score(x) if scorer is not None else None)


def comparison_table(scorer, pairs, *, measures=("fd", "precision", "recall"), paired: bool = True,
                     caption: str = "") -> str:
    """A Markdown table of paired (or independent) comparisons by ``scorer``'s rule.

    ``pairs``: ``(question, label_a, score_a, label_b, score_b)``, scores of equal size. One row per
    pair: n, both FDs, A - B of each measure with its 95% interval, and the measures whose interval
    excludes zero, as A's ("fd lower": A is closer to the reference).
    """
    from .evidence import format_interval, markdown_table

    rows = []
    for question, label_a, a, label_b, b in pairs:
        c = {m: scorer.compare(a, b, m, paired=paired) for m in measures}
        separated = [f"{m} {'higher' if c[m].direction > 0 else 'lower'}" for m in measures if c[m].direction]
        rows.append([question, f"{a.n:,}", f"{label_a}: {a.fd.value:.1f}", f"{label_b}: {b.fd.value:.1f}",
                     *(format_interval(c[m].difference) for m in measures),
                     "A: " + ", ".join(separated) if separated else "indistinguishable"])
    header = ["comparison", "n", "A: FD", "B: FD", *(f"{m}, A − B [95%]" for m in measures), "separated"]
    return markdown_table(header, rows, caption)


def edit_scores(x: torch.Tensor, guide: torch.Tensor, labels, *, realism, reader=None) -> dict:
    """How an edit of ``guide`` into ``x`` (both ``[n, 1, 28, 28]`` in [-1, 1]) scores, each number
    an :class:`~ddpm_lib.evidence.Estimate` or interval under the book's rule:

    - ``rms``: faithfulness, the RMS pixel distance to the guide on [0, 1] (an average over digits,
      so its standard error is the digits' spread over sqrt(n), what the rule's halves give);
    - ``kept``: the share that ``reader`` (default: :func:`scorer`) reads as ``labels``;
    - ``precision``: realism, by the :class:`~ddpm_lib.Scorer` ``realism``.
    """
    from .evidence import Estimate

    x, guide = x.clamp(-1, 1).cpu(), guide.cpu()
    if x.shape != guide.shape:
        raise ValueError(f"an edit and its guide must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(guide.shape)}")
    rms = ((x - guide) / 2).square().flatten(1).mean(1).sqrt()  # [n], on [0, 1]
    reader = reader if reader is not None else scorer()
    return {"rms": Estimate(rms.mean().item(), rms.std().item() / len(x) ** 0.5),
            "kept": reader.accuracy(x, labels), "precision": realism.score(x).precision}


def conditional_scores(x: torch.Tensor, labels: torch.Tensor, *, pooled, by_class) -> dict:
    """How digits drawn for requested ``labels`` score: ``pooled`` (a :class:`~ddpm_lib.Scorer`)
    against all reference digits, ``by_class`` (a :class:`~ddpm_lib.ClassScorer`) class by class,
    and the share that ``pooled``'s feature network reads as the requested digit. Returns the
    pooled score ("score", "pooled FD"), the per-class scores ("classes"), "accuracy" (Wilson
    interval) and the class-wise means "class FD", "precision" and "recall"."""
    score, per_class = pooled.score(x), by_class.score(x, labels)
    return {"score": score, "classes": per_class, "accuracy": pooled.accuracy(x, labels), "pooled FD": score.fd,
            "class FD": by_class.mean(per_class, "fd"), "precision": by_class.mean(per_class, "precision"),
            "recall": by_class.mean(per_class, "recall")}
