"""What a comparison of generative models needs besides the metrics themselves.

- How sure is a number? :func:`bootstrap` recomputes a statistic on resamples of the generated
  set (Efron 1979) and gives a percentile interval, so two models are ranked only where their
  intervals separate.
- Does a model copy its training data? :func:`nearest_distances` measures how far each image is
  from its nearest neighbour in a reference set. A model that memorised would put its samples
  much closer to training digits than held-out digits are (Webster et al. 2019; Carlini et al.
  2023 extract training images from diffusion models this way).
- How sure is a share such as precision or recall? :func:`split_precision_recall` scores disjoint
  parts of the generated set and :func:`spread` turns the parts into a mean with a Student-t
  interval.
- How blurry are the samples? :func:`undecided_fraction`, the share of pixels that are neither
  ink nor paper: near zero for real MNIST digits, high for a decoder that averages.
"""

from __future__ import annotations

import math

import torch

from .metrics import precision_recall


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


# Student's t at 97.5%, by degrees of freedom: the half-width of a 95% interval of a mean of
# few independent estimates, in units of its standard error.
_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def spread(estimates) -> dict:
    """Mean and std of 2 to 10 independent estimates of one share, and the 95% interval of the mean.

    Returns ``{"value", "std", "low", "high"}`` like :func:`bootstrap`: the mean, the std of the
    estimates, and mean -/+ t std / sqrt(m) for m estimates (Student's t with m - 1 degrees of
    freedom), cut to [0, 1], where shares live.
    """
    v = torch.as_tensor(estimates, dtype=torch.float64).flatten()
    if not 2 <= len(v) <= 10:
        raise ValueError(f"spread needs 2 to 10 independent estimates, got {len(v)}")
    mean, std = v.mean().item(), v.std().item()
    half = _T_975[len(v) - 1] * std / math.sqrt(len(v))
    return {"value": mean, "std": std, "low": max(mean - half, 0.0), "high": min(mean + half, 1.0)}


def split_precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, *, parts: int = 4, k: int = 3):
    """Precision and recall (:func:`~ddpm_lib.metrics.precision_recall`) with error bars.

    The generated features are cut into ``parts`` disjoint parts, each scored against all of
    ``real_feats``, and summarised by :func:`spread`. (Resampling with replacement would bias
    them: a repeated image is its own nearest neighbour.) Returns ``(precision, recall)``, or
    ``(None, None)`` when a part has too few images for balls reaching to the k-th neighbour.
    """
    size = len(fake_feats) // parts
    if size <= k:
        return None, None
    scores = [precision_recall(real_feats, part, k=k) for part in fake_feats[:parts * size].split(size)]
    return spread([p for p, _ in scores]), spread([r for _, r in scores])


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
