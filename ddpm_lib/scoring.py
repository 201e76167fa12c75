"""The book's scorer: one feature network, one reference set, one interval rule for every measure.

Built once from the reference digits (the held-out digits, in the book), a :class:`Scorer` scores
a set of generated digits on every measure of :mod:`ddpm_lib.metrics` and ranks two sets only where
the rule of :mod:`ddpm_lib.evidence` separates them:

    scorer = Scorer(reference)              # reference [N, 1, 28, 28] in [-1, 1]
    a, b = scorer.score(x_a), scorer.score(x_b)
    scorer.compare(a, b, "fd")              # FD(a) - FD(b), its interval and the verdict

Every measure is an :class:`~ddpm_lib.evidence.Estimate`: its value on the whole set and its
standard error from the same random halves of the set (:func:`~ddpm_lib.evidence.halves`). Two sets
of the same size are scored on the same halves, so where they start from the same noises their
difference is paired: what they share cancels, and the difference is measured more sharply than
either number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .evidence import Estimate, half_sample_estimate, halves, undecided_fraction, verdict, wilson_interval
from .metrics import extract_features, load_feature_network

# name -> (what it measures, whether it depends on the set's size); a comparison of a
# size-dependent measure needs sets of equal size.
MEASURES = {
    "fd": ("Frechet distance to the reference features (lower is closer)", True),
    "kid": ("kernel distance, unbiased: zero in expectation for the reference's distribution", False),
    "precision": ("share of digits on the reference's manifold (fidelity)", False),
    "recall": ("share of reference digits on the set's manifold (diversity)", True),
    "entropy": ("entropy of the predicted classes in bits (log2 10 = 3.32 when even)", True),
    "grey": ("share of pixels neither ink nor paper (blur)", False),
}


@dataclass
class Score:
    """The measures of one set of ``n`` digits; ``on_halves[name]`` holds each measure on the halves."""

    n: int
    fd: Estimate
    kid: Estimate
    precision: Estimate
    recall: Estimate
    entropy: Estimate
    grey: Estimate
    classes: list[int]  # how many digits the feature network assigns to each class
    on_halves: dict = field(repr=False)
    features: torch.Tensor = field(repr=False)  # [n, d], float64
    logits: torch.Tensor = field(repr=False)  # [n, 10], float64

    def __getitem__(self, name: str) -> Estimate:
        if name not in MEASURES:
            raise KeyError(f"unknown measure {name!r}; the measures are {', '.join(MEASURES)}")
        return getattr(self, name)


@dataclass(frozen=True)
class Comparison:
    """``difference`` = A - B of one measure, paired or not, and the verdict the rule allows."""

    measure: str
    difference: Estimate
    paired: bool
    verdict: str

    @property
    def direction(self) -> int:
        """+1 where A is higher by the rule, -1 where lower, 0 where the two are indistinguishable."""
        return (self.difference.low > 0) - (self.difference.high < 0)


class Scorer:
    """Scores digits ``[n, 1, 28, 28]`` in [-1, 1] against ``reference`` digits in the same range.

    ``net``: the feature network (default: the packaged classifier); ``k``: the neighbour that sets
    each manifold ball's radius (Kynkaanniemi et al. 2019 use 3); ``num_halves``, ``seed``: the
    random halves behind every standard error.
    """

    def __init__(self, reference: torch.Tensor, *, net=None, k: int = 3, num_halves: int = 100, seed: int = 0):
        self.net = net if net is not None else load_feature_network()
        self.k, self.num_halves, self.seed = k, num_halves, seed
        self.reference_features, self.reference_logits = extract_features(self.net, _checked(reference))
        r = self.reference_features
        if len(r) <= k:
            raise ValueError(f"the reference needs more than k = {k} digits, got {len(r)}")
        self._mu = r.mean(0)
        cov = torch.cov(r.T)
        values, vectors = torch.linalg.eigh(cov)
        self._root = (vectors * values.clamp(min=0).sqrt()) @ vectors.T  # cov^(1/2), once
        self._trace = cov.trace()
        self._radii = _kth_radius(torch.cdist(r, r), k)  # the reference manifold's balls
        k_rr = _kernel(r, r)
        self._k_rr = (k_rr.sum() - k_rr.diagonal().sum()) / (len(r) * (len(r) - 1))

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features [n, d], logits [n, 10])`` of the feature network, float64 on the CPU."""
        return extract_features(self.net, _checked(images))

    def score(self, images: torch.Tensor) -> Score:
        """Every measure of ``images`` against the reference, each with its standard error."""
        x = _checked(images).cpu()
        n = len(x)
        if n < max(4, 2 * (self.k + 1)):
            raise ValueError(f"scoring needs at least {max(4, 2 * (self.k + 1))} digits (each half must "
                             f"hold more than k = {self.k}), got {n}")
        f, logits = self.features(x)
        statistics = self._statistics(f, logits, x)
        index = halves(n, self.num_halves, self.seed)
        full = torch.arange(n)
        values = {name: stat(full) for name, stat in statistics.items()}
        on_halves = {name: torch.tensor([stat(h) for h in index], dtype=torch.float64)
                     for name, stat in statistics.items()}
        estimates = {name: half_sample_estimate(values[name], on_halves[name], n) for name in statistics}
        classes = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).tolist()
        return Score(n=n, classes=classes, on_halves=on_halves, features=f, logits=logits, **estimates)

    def compare(self, a: Score, b: Score, measure: str = "fd", *, paired: bool = False) -> Comparison:
        """A - B of ``measure`` with its 95% interval and the verdict.

        ``paired=True`` for sets drawn from the same starting noises, digit i of A from the same
        noise as digit i of B: the difference is then taken on the same halves of both. Otherwise
        the two standard errors add in quadrature (independent sets).
        """
        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; the measures are {', '.join(MEASURES)}")
        if MEASURES[measure][1] and a.n != b.n:
            raise ValueError(f"{measure} depends on the number of digits, so it compares only sets of equal "
                             f"size; got n = {a.n} and {b.n}")
        value = a[measure].value - b[measure].value
        if paired:
            if a.n != b.n:
                raise ValueError(f"a paired comparison needs equally many digits, got {a.n} and {b.n}")
            difference = half_sample_estimate(value, a.on_halves[measure] - b.on_halves[measure], a.n)
        else:
            difference = Estimate(value, math.hypot(a[measure].std, b[measure].std))
        sizes = f"{a.n:,}" if a.n == b.n else f"{a.n:,} and {b.n:,}"
        return Comparison(measure, difference, paired, verdict(difference, sizes=sizes))

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """The share of ``images`` the feature network assigns to ``labels``, with its Wilson interval.

        A share of successes near 100% has a standard error near zero, so its interval is the
        Wilson score interval (:func:`~ddpm_lib.evidence.wilson_interval`), which stays inside [0, 1].
        """
        labels = torch.as_tensor(labels).cpu()
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        _, logits = self.features(images)
        return wilson_interval(int((logits.argmax(1) == labels).sum()), len(labels))

    def _statistics(self, f: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> dict:
        """Each measure as a function of the indices of a subset of the digits."""
        k, r = self.k, self.reference_features
        on_reference = (torch.cdist(f, r) <= self._radii[None, :]).any(1).double()  # [n]: precision's
        d_ff = torch.cdist(f, f)  # [n, n]
        d_rf = torch.cdist(r, f)  # [N, n]
        k_ff = _kernel(f, f)
        k_rf_mean = _kernel(r, f).mean(0)  # [n]: each digit's mean kernel value with the reference
        grey = torch.tensor([undecided_fraction(image) for image in x], dtype=torch.float64)
        predicted = logits.argmax(1)

        def fd(i):  # ||mu_r - mu||^2 + tr(C_r + C - 2 (C_r^(1/2) C C_r^(1/2))^(1/2))
            mu, cov = f[i].mean(0), torch.cov(f[i].T)
            inner = self._root @ cov @ self._root
            root_trace = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
            return float((self._mu - mu).pow(2).sum() + self._trace + cov.trace() - 2 * root_trace)

        def kid(i):  # unbiased MMD^2 (Binkowski et al. 2018): within-set sums without the diagonal
            m, kff = len(i), k_ff[i][:, i]
            return float(self._k_rr + (kff.sum() - kff.diagonal().sum()) / (m * (m - 1)) - 2 * k_rf_mean[i].mean())

        def recall(i):  # the share of reference digits inside the subset's own balls
            radii = _kth_radius(d_ff[i][:, i], k)
            return float((d_rf[:, i] <= radii[None, :]).any(1).double().mean())

        def entropy(i):
            p = torch.bincount(predicted[i], minlength=logits.shape[1]).double() / len(i)
            return float((p[p > 0] * (1 / p[p > 0]).log2()).sum())

        return {"fd": fd, "kid": kid, "precision": lambda i: float(on_reference[i].mean()), "recall": recall,
                "entropy": entropy, "grey": lambda i: float(grey[i].mean())}


class ClassScorer:
    """Scores digits class by class, each class against the reference digits of that class.

    A conditional model is asked for a digit of each class; what matters is whether each class's
    digits look like that class's real digits. ``score(images, labels)`` gives one :class:`Score`
    per class, :meth:`mean` the average of a measure over the classes, and :meth:`compare` the
    average of the per-class differences. Classes hold disjoint digits, so their standard errors
    add in quadrature: std of the mean = sqrt(sum of std^2) / K.
    """

    def __init__(self, reference: torch.Tensor, labels: torch.Tensor, *, net=None, **options):
        net = net if net is not None else load_feature_network()
        labels = torch.as_tensor(labels).cpu()
        if len(labels) != len(reference):
            raise ValueError(f"{len(reference)} reference digits but {len(labels)} labels")
        self.classes = labels.unique().tolist()
        self.scorers = {c: Scorer(reference[labels == c], net=net, **options) for c in self.classes}

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> dict[int, Score]:
        labels = torch.as_tensor(labels).cpu()
        if len(labels) != len(images) or not set(labels.tolist()) <= set(self.classes):
            raise ValueError(f"need one label in {self.classes} per image; got {len(labels)} labels "
                             f"for {len(images)} images")
        return {c: self.scorers[c].score(images[labels == c]) for c in self.classes}

    def mean(self, scores: dict[int, Score], measure: str) -> Estimate:
        values = [scores[c][measure] for c in self.classes]
        return Estimate(sum(e.value for e in values) / len(values),
                        math.sqrt(sum(e.std**2 for e in values)) / len(values))

    def compare(self, a: dict, b: dict, measure: str = "fd", *, paired: bool = False) -> Comparison:
        diffs = [self.scorers[c].compare(a[c], b[c], measure, paired=paired).difference for c in self.classes]
        mean = Estimate(sum(d.value for d in diffs) / len(diffs), math.sqrt(sum(d.std**2 for d in diffs)) / len(diffs))
        n = sum(a[c].n for c in self.classes)
        return Comparison(measure, mean, paired, verdict(mean, sizes=f"{n:,}"))


def _checked(images: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1:] != (1, 28, 28):
        shape = list(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"the scorer expects digits [n, 1, 28, 28] in [-1, 1], got {shape}")
    if not torch.isfinite(images).all():
        raise ValueError("the digits contain NaN or infinite values: the sampler diverged")
    return images.clamp(-1, 1)


def _kth_radius(distances: torch.Tensor, k: int) -> torch.Tensor:
    """Each point's distance to its k-th nearest other point, from a square distance matrix."""
    return distances.kthvalue(k + 1, dim=1).values  # the k + 1-th smallest: the 0 to itself comes first


def _kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a @ b.T) / a.shape[1] + 1) ** 3  # KID's cubic polynomial kernel
