"""What a comparison of generative models needs besides the metrics themselves.

- How sure is a number? :func:`bootstrap` recomputes a statistic on resamples of the generated
  set (Efron 1979) and gives a percentile interval, so two models are ranked only where their
  intervals separate. Two samplers run from the same noises are compared more sharply by
  :func:`fd_difference`, which resamples both sets together.
- Does a model copy its training data? :func:`nearest_distances` measures how far each image is
  from its nearest neighbour in a reference set. A model that memorised would put its samples
  much closer to training digits than held-out digits are (Webster et al. 2019; Carlini et al.
  2023 extract training images from diffusion models this way).
- How sure is a share such as precision or recall? :func:`split_precision_recall` scores disjoint
  parts of the generated set and :func:`spread` turns the parts into a mean with a Student-t
  interval.
- How sure is an accuracy near 100%? :func:`wilson_interval`.
- How does a measured number print? :func:`format_pm` and :func:`format_interval` give as many
  decimals as its error bar supports; :func:`markdown_table` lays results out as a table.
- How blurry are the samples? :func:`undecided_fraction`, the share of pixels that are neither
  ink nor paper: near zero for real MNIST digits, high for a decoder that averages.
"""

from __future__ import annotations

import math

import torch

from .metrics import frechet_distance, precision_recall


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


def fd_difference(reference_f: torch.Tensor, f_a: torch.Tensor, f_b: torch.Tensor, *, num_resamples: int = 100,
                  seed: int = 0) -> dict:
    """FD(a) - FD(b) against ``reference_f``, bootstrapped with the same resampled indices for both.

    Paired: where digit i of a and digit i of b start from the same noise, resampling them
    together cancels what the two sets share, and the difference is measured more precisely than
    either FD. Returns ``{"value", "std", "low", "high"}`` with value -/+ 1.96 std as the interval:
    resampled FDs sit above the value (a digit drawn twice narrows the fitted Gaussian), so their
    percentiles need not bracket it.
    """
    if len(f_a) != len(f_b):
        raise ValueError(f"a paired difference needs equally many images in both sets, got {len(f_a)} and {len(f_b)}")

    def difference(i):
        return frechet_distance(reference_f, f_a[i]) - frechet_distance(reference_f, f_b[i])

    d = bootstrap(difference, len(f_a), num_resamples=num_resamples, seed=seed)
    d["low"], d["high"] = normal_interval(d["value"], d["std"])
    return d


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
    return {"value": p, "std": math.sqrt(p * (1 - p) / n), "low": centre - half, "high": centre + half}


def intervals_separate(a: dict, b: dict) -> bool:
    """Whether two :func:`bootstrap` intervals do not overlap: only then is a ranking claimed."""
    return a["high"] < b["low"] or b["high"] < a["low"]


def normal_interval(mean: float, std: float, confidence: float = 0.95) -> tuple[float, float]:
    """mean -/+ z std, with z the normal quantile for ``confidence`` (1.96 for 95%)."""
    z = math.sqrt(2) * torch.erfinv(torch.tensor(confidence, dtype=torch.float64)).item()
    return mean - z * std, mean + z * std


# How a measured number prints: as many decimals as its error bar supports, never more.
def _decimals(std: float) -> int:
    """Decimal places that show ``std`` to two significant figures (3 when there is no spread)."""
    return 3 if not std > 0 else max(0, 1 - math.floor(math.log10(std)))


def format_pm(m: dict | None) -> str:
    """``{"value", "std"}`` as "value ± std", both to the std's second significant figure; "–" for None."""
    if m is None:
        return "–"
    d = _decimals(m["std"])
    return f"{m['value']:.{d}f} ± {m['std']:.{d}f}"


def format_interval(m: dict) -> str:
    """``{"value", "std", "low", "high"}`` as "value [low, high]", to the std's second significant figure."""
    d = _decimals(m["std"])
    return f"{m['value']:.{d}f} [{m['low']:.{d}f}, {m['high']:.{d}f}]"


def markdown_table(header, rows, caption: str = "") -> str:
    """A Markdown table (first column left-aligned, the others right-aligned), with an optional caption above."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells, one per column of the header")
    lines = [caption, ""] if caption else []
    lines += ["| " + " | ".join(map(str, header)) + " |",
              "|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
