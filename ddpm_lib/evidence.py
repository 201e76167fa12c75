"""What a comparison of generative models needs besides the metrics themselves.

- The book's one interval rule: :func:`halves` and :class:`Estimate` (value -/+ 1.96 standard
  errors, the standard error from random halves of the set) and :func:`verdict`, which ranks two
  numbers only when the interval of their difference excludes zero. :class:`ddpm_lib.Scorer`
  applies it to every measure of a set of generated digits.
- Does a model copy its training data? :func:`nearest_distances` measures how far each image is
  from its nearest neighbour in a reference set. A model that memorised would put its samples
  much closer to training digits than held-out digits are (Webster et al. 2019; Carlini et al.
  2023 extract training images from diffusion models this way).
- How sure is an accuracy near 100%? :func:`wilson_interval`.
- How does a measured number print? :func:`format_pm` and :func:`format_interval` give as many
  decimals as its error bar supports; :func:`markdown_table` lays results out as a table.
- How blurry are the samples? :func:`undecided_fraction`, the share of pixels that are neither
  ink nor paper: near zero for real MNIST digits, high for a decoder that averages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Estimate:
    """A measured number under the book's interval rule: ``value`` -/+ 1.96 ``std`` (95%)."""

    value: float
    std: float

    @property
    def low(self) -> float:
        return self.value - Z_95 * self.std

    @property
    def high(self) -> float:
        return self.value + Z_95 * self.std

    def __getitem__(self, key: str) -> float:  # {"value", "std", "low", "high"}, as format_pm reads
        if key not in ("value", "std", "low", "high"):
            raise KeyError(f"an Estimate has value, std, low and high, not {key!r}")
        return getattr(self, key)


Z_95 = 1.959963984540054  # the normal distribution's 97.5% quantile


def halves(n: int, num_halves: int = 100, seed: int = 0) -> torch.Tensor:
    """``[num_halves, n // 2]`` random halves of ``range(n)``, each drawn without replacement.

    The same ``(n, num_halves, seed)`` gives the same halves, so two sets of ``n`` digits drawn from
    the same noises are scored on the same halves, and their difference is paired.
    """
    if n < 4 or num_halves < 2:
        raise ValueError(f"half-sampling needs n >= 4 items and num_halves >= 2, got {n} and {num_halves}")
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[: n // 2] for _ in range(num_halves)])


def half_sample_estimate(value: float, on_halves: torch.Tensor, n: int) -> Estimate:
    """The rule: ``value`` on all ``n`` items, its standard error from the values ``on_halves``.

    Why halves: the average of m of n items drawn without replacement has variance
    (S^2 / m)(1 - m / n), S^2 the items' variance; at m = n / 2 that is S^2 / n, the squared standard
    error of the average of all n. So the spread over random halves *is* the standard error, for
    an average exactly, and for a smooth statistic (FD, KID, an entropy) to first order, where the
    terms of higher order make it larger, never smaller: an interval errs on the wide side. Unlike
    a bootstrap, a half never repeats an item, which would sit at distance zero from itself and
    bias every nearest-neighbour measure (precision, recall). ``m / (n - m)`` corrects odd n.
    """
    m = n // 2
    std = on_halves.double().std().item() * math.sqrt(m / (n - m))
    return Estimate(float(value), std)


def verdict(difference: Estimate, *, sizes: str, higher: str = "A higher", lower: str = "A lower") -> str:
    """``higher`` or ``lower`` where the 95% interval of A - B excludes zero, else "indistinguishable
    at n = sizes": the only way the book ranks two numbers."""
    if difference.low > 0:
        return higher
    if difference.high < 0:
        return lower
    return f"indistinguishable at n = {sizes}"


def nearest_distances(queries: torch.Tensor, references: torch.Tensor, *, batch_size: int = 500):
    """For each query, the Euclidean distance to its nearest reference and that reference's index.

    Images are flattened; ``(distances [N], indices [N])``, on the CPU, in float64.
    """
    q = queries.flatten(1).double().cpu()
    r = references.flatten(1).double().cpu()
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values each, references {r.shape[1]}")
    dists, index = [], []
    for chunk in q.split(batch_size):
        d, i = torch.cdist(chunk, r).min(dim=1)
        dists.append(d)
        index.append(i)
    return torch.cat(dists), torch.cat(index)


def undecided_fraction(images: torch.Tensor, low: float = 0.2, high: float = 0.8) -> float:
    """The share of pixels whose intensity, mapped to [0, 1], lies strictly between ``low`` and ``high``.

    ``images`` in the model range [-1, 1]. Real MNIST digits are mostly ink or paper; blur shows as
    a larger share of grey.
    """
    v = (images.double() + 1) / 2
    return float(((v > low) & (v < high)).double().mean())


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> dict:
    """A share of ``k`` successes in ``n`` trials with its Wilson score interval (Wilson 1927).

    Returns ``{"value", "std", "low", "high"}``. Unlike value -/+ 1.96 std, the interval stays
    inside [0, 1] and is not empty at k = 0 or k = n, where a classifier's accuracy often sits.
    """
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k = {k}, n = {n}")
    p = k / n
    z = math.sqrt(2) * torch.erfinv(torch.tensor(confidence, dtype=torch.float64)).item()
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return {"value": p, "std": math.sqrt(p * (1 - p) / n), "low": max(centre - half, 0.0),
            "high": min(centre + half, 1.0)}  # (the bounds are 0 and 1 at k = 0 and n, up to rounding)


# How a measured number prints: as many decimals as its error bar supports, never more.
def _decimals(std: float) -> int:
    """Decimal places that show ``std`` to two significant figures (3 when there is no spread)."""
    return 3 if not std > 0 else max(0, 1 - math.floor(math.log10(std)))


def format_pm(m: dict | None, scale: float = 1.0) -> str:
    """``{"value", "std"}`` (or an :class:`Estimate`) times ``scale`` as "value ± std", both to the
    std's second significant figure; "–" for None."""
    if m is None:
        return "–"
    d = _decimals(scale * m["std"])
    return f"{scale * m['value']:.{d}f} ± {scale * m['std']:.{d}f}"


def format_interval(m: dict, scale: float = 1.0) -> str:
    """``{"value", "std", "low", "high"}`` (or an :class:`Estimate`) times ``scale`` (100 for a
    percentage) as "value [low, high]", to the std's second significant figure."""
    d = _decimals(scale * m["std"])
    return f"{scale * m['value']:.{d}f} [{scale * m['low']:.{d}f}, {scale * m['high']:.{d}f}]"


def markdown_table(header, rows, caption: str = "") -> str:
    """A Markdown table (first column left-aligned, the others right-aligned), with an optional caption above."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells, one per column of the header")
    lines = [caption, ""] if caption else []
    lines += ["| " + " | ".join(map(str, header)) + " |",
              "|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
