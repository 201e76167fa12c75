"""What a comparison of generative models needs besides the metrics themselves.

- How sure is a number? :func:`bootstrap` recomputes a statistic on resamples of the generated
  set (Efron 1979) and gives a percentile interval, so two models are ranked only where their
  intervals separate.
- Does a model copy its training data? :func:`nearest_distances` measures how far each image is
  from its nearest neighbour in a reference set. A model that memorised would put its samples
  much closer to training digits than held-out digits are (Webster et al. 2019; Carlini et al.
  2023 extract training images from diffusion models this way).
- How blurry are the samples? :func:`undecided_fraction`, the share of pixels that are neither
  ink nor paper: near zero for real MNIST digits, high for a decoder that averages.
"""

from __future__ import annotations

import math

import torch


def bootstrap(statistic, n: int, *, num_resamples: int = 100, confidence: float = 0.95, seed: int = 0) -> dict:
    """``statistic(indices)`` on all ``n`` items and on resamples drawn with replacement.

    Returns ``{"value", "low", "high", "std"}``: the value on the full set, the percentile interval
    holding ``confidence`` of the resampled values, and their standard deviation. A resample repeats
    some items; statistics built on nearest neighbours (precision, recall) see the copies as
    neighbours at distance 0, which biases them, so resample those over independent seeds instead.
    """
    if n < 2 or num_resamples < 2 or not 0 < confidence < 1:
        raise ValueError(f"need n >= 2, num_resamples >= 2 and 0 < confidence < 1; got {n}, {num_resamples}, "
                         f"{confidence}")
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([float(statistic(torch.randint(0, n, (n,), generator=g))) for _ in range(num_resamples)],
                          dtype=torch.float64)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"value": float(statistic(torch.arange(n))), "low": low, "high": high, "std": float(values.std())}


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


def intervals_separate(a: dict, b: dict) -> bool:
    """Whether two :func:`bootstrap` intervals do not overlap: only then is a ranking claimed."""
    return a["high"] < b["low"] or b["high"] < a["low"]


def normal_interval(mean: float, std: float, confidence: float = 0.95) -> tuple[float, float]:
    """mean -/+ z std, with z the normal quantile for ``confidence`` (1.96 for 95%)."""
    z = math.sqrt(2) * torch.erfinv(torch.tensor(confidence, dtype=torch.float64)).item()
    return mean - z * std, mean + z * std
