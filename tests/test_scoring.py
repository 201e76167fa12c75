"""The book's interval rule and its scorer, against cases whose answers are known."""

import math

import pytest
import torch
from torch import nn

import ddpm_lib as dl
from ddpm_lib.evidence import Estimate, half_sample_estimate, halves, verdict
from ddpm_lib.scoring import Scorer


def test_halves_give_the_standard_error_of_an_average():
    # The average of m = n / 2 of n values drawn without replacement has variance
    # (S^2 / m)(1 - m / n) = S^2 / n: the squared standard error of the average of all n. With
    # 4,000 halves the spread of the half-averages estimates it to about 1%. Odd n too, where the
    # factor m / (n - m) corrects the halves' size.
    for n in (1_000, 1_001):
        x = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
        index = halves(n, 4_000, seed=1)
        assert index.shape == (4_000, n // 2)
        assert all(len(set(h.tolist())) == n // 2 for h in index[:20])  # without replacement
        e = half_sample_estimate(x.mean().item(), x[index].mean(1), n)
        assert e.std == pytest.approx(x.std().item() / math.sqrt(n), rel=0.03)
        assert (e.low, e.high) == pytest.approx((e.value - 1.96 * e.std, e.value + 1.96 * e.std), rel=1e-3)
    assert torch.equal(halves(50, 5, seed=3), halves(50, 5, seed=3))  # same halves: paired
    with pytest.raises(ValueError, match="n >= 4"):
        halves(3)


def test_the_rule_ranks_only_when_the_interval_excludes_zero():
    assert verdict(Estimate(1.0, 0.4), sizes="100") == "A higher"  # [0.22, 1.78]
    assert verdict(Estimate(-1.0, 0.4), sizes="100") == "A lower"
    assert verdict(Estimate(1.0, 0.6), sizes="100") == "indistinguishable at n = 100"  # [-0.18, 2.18]
    assert Estimate(2.0, 0.5)["high"] == pytest.approx(2.98, abs=1e-2)
    with pytest.raises(KeyError, match="value, std, low and high"):
        Estimate(1.0, 0.1)["mean"]


class PixelFeatures(nn.Module):
    """A stand-in feature network with a known geometry: the features are 8 of the pixels, the
    logits 10 others. The scorer's arithmetic is then checked against numbers computed by hand."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # so the scorer can find a device

    def features(self, x):
        return x.flatten(1)[:, :8]

    def head(self, f):
        return torch.nn.functional.pad(f, (0, 2))  # [B, 10]: class = the largest of the 8 pixels


def digits(n, shift=0.0, scale=1.0, seed=0):
    """``n`` fake digits whose first 8 pixels are N(shift, scale^2) / 4 (inside [-1, 1]) and whose
    other pixels are ink or paper."""
    g = torch.Generator().manual_seed(seed)
    x = torch.where(torch.rand(n, 1, 28, 28, generator=g) < 0.2, 1.0, -1.0)
    x.view(n, -1)[:, :8] = (shift + scale * torch.randn(n, 8, generator=g)) / 4
    return x


def test_scores_match_the_metrics_computed_directly():
    scorer = Scorer(digits(300, seed=1), net=PixelFeatures(), num_halves=20)
    x = digits(200, shift=0.5, seed=2)
    s = scorer.score(x)
    real, fake = scorer.reference_features, x.flatten(1)[:, :8].double()
    assert s.fd.value == pytest.approx(dl.metrics.frechet_distance(real, fake), rel=1e-9)
    assert (s.precision.value, s.recall.value) == pytest.approx(dl.metrics.precision_recall(real, fake))
    assert s.grey.value == pytest.approx(dl.evidence.undecided_fraction(x))
    assert s.n == 200 and sum(s.classes) == 200 and s.fd.std > 0
    # KID over all pairs: the unbiased MMD^2 with the cubic kernel
    k = lambda a, b: ((a @ b.T) / 8 + 1) ** 3  # noqa: E731
    off = lambda m: (m.sum() - m.diagonal().sum()) / (len(m) * (len(m) - 1))  # noqa: E731
    assert s.kid.value == pytest.approx((off(k(real, real)) + off(k(fake, fake)) - 2 * k(real, fake).mean()).item())


def test_fd_standard_error_matches_the_spread_between_independent_sets():
    # The known answer: draw 60 independent sets of 200 from one distribution and measure how much
    # their FDs vary. The rule's standard error, from the halves of a single set, must match that
    # spread (and may err on the wide side, never far below it).
    scorer = Scorer(digits(1_000, seed=0), net=PixelFeatures(), num_halves=60)
    scores = [scorer.score(digits(200, shift=0.3, seed=100 + i)) for i in range(60)]
    between = torch.tensor([s.fd.value for s in scores]).std().item()
    within = sum(s.fd.std for s in scores) / len(scores)
    assert 0.8 * between < within < 1.6 * between
    # and 95% intervals: most cover the mean FD of the 60 sets
    mean = sum(s.fd.value for s in scores) / len(scores)
    assert sum(s.fd.low <= mean <= s.fd.high for s in scores) >= 52  # 57 expected at 95%


def test_paired_comparisons_of_equal_models_rarely_rank_and_a_real_gap_is_found():
    # A and B from the same distribution: the rule may rank them in about 5% of trials only. Each
    # pair shares its "noise" (B is A plus a small perturbation), as two samplers from the same x_T.
    scorer = Scorer(digits(600, seed=0), net=PixelFeatures(), num_halves=40)
    false_rankings = 0
    for trial in range(40):
        a = digits(200, shift=0.3, seed=1_000 + trial)
        b = a.clone()
        b.view(200, -1)[:, :8] += 0.05 * torch.randn(200, 8, generator=torch.Generator().manual_seed(trial))
        c = scorer.compare(scorer.score(a), scorer.score(b), "fd", paired=True)
        false_rankings += not c.verdict.startswith("indistinguishable")
    assert false_rankings <= 6  # 2 expected; P(more than 6) < 1% for a 5% rate
    # A real gap: B drawn wider than the reference
    a, b = digits(200, shift=0.0, seed=7), digits(200, shift=0.0, scale=1.6, seed=7)
    sa, sb = scorer.score(a), scorer.score(b)
    paired = scorer.compare(sa, sb, "fd", paired=True)
    assert paired.verdict == "A lower" and paired.paired
    unpaired = scorer.compare(sa, sb, "fd")
    assert paired.difference.std < unpaired.difference.std  # pairing cancels the shared noise
    assert unpaired.difference.std == pytest.approx(math.hypot(sa.fd.std, sb.fd.std))


def test_bad_input_is_refused_with_a_clear_message():
    scorer = Scorer(digits(100, seed=0), net=PixelFeatures(), num_halves=5)
    with pytest.raises(ValueError, match=r"\[n, 1, 28, 28\]"):
        scorer.score(torch.zeros(10, 3, 28, 28))
    with pytest.raises(ValueError, match="NaN"):
        scorer.score(torch.full((10, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="at least 8 digits"):
        scorer.score(digits(5))
    a, b = scorer.score(digits(20, seed=1)), scorer.score(digits(30, seed=2))
    with pytest.raises(ValueError, match="equal size"):
        scorer.compare(a, b, "fd")
    with pytest.raises(ValueError, match="equally many"):
        scorer.compare(a, b, "precision", paired=True)
    assert scorer.compare(a, b, "precision").difference.value == pytest.approx(a.precision.value - b.precision.value)
    with pytest.raises(ValueError, match="unknown measure"):
        scorer.compare(a, a, "inception")
    with pytest.raises(ValueError, match="labels"):
        scorer.accuracy(digits(10), torch.zeros(9, dtype=torch.long))


def test_accuracy_is_a_wilson_interval():
    scorer = Scorer(digits(50, seed=0), net=PixelFeatures(), num_halves=5)
    x = digits(40, seed=3)
    predicted = x.flatten(1)[:, :8].argmax(1)  # PixelFeatures' class: the largest of the 8 pixels
    right = scorer.accuracy(x, predicted)
    assert right["value"] == 1.0 and right["high"] == 1.0 and 0.9 < right["low"] < 1.0
    assert scorer.accuracy(x, (predicted + 1) % 10)["value"] == 0.0


def test_named_noises_do_not_depend_on_batching():
    whole = dl.book.noise("unconditional", 250)
    parts = torch.cat([dl.book.noise("unconditional", 70, start=s) for s in (0, 70, 140)] +
                      [dl.book.noise("unconditional", 40, start=210)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole[:10], dl.book.noise("flow", 10))
    with pytest.raises(ValueError, match="unknown noise set"):
        dl.book.noise("mnist", 4)


def test_network_calls_run_the_model_k_times():
    calls = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x, t, y=None):
            calls.append((x.shape[0], float(t[0]), y is not None))
            return x

    dl.book.network_calls(Counting(), batch_size=3, t=0.5, labels=True)(4)
    assert calls == [(3, 0.5, True)] * 4


def test_a_draw_counts_evaluations_per_digit_and_is_scored_by_the_scorer_given():
    # DDIM with 3 steps evaluates the network 3 times a digit, whether 100 digits come in three
    # batches or one: the count is per digit. The score is the scorer's own score of the clamped
    # digits, so a draw and a direct score agree exactly.
    class Zero(nn.Module):  # predicts no noise
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x, t):
            return torch.zeros_like(x)

    schedule = dl.cosine_schedule(T=100)
    scorer = Scorer(digits(200, seed=1), net=PixelFeatures(), num_halves=5)

    def draw(n, start):  # times 3, outside [-1, 1]: the draw clamps
        return 3 * dl.ddim_sample(Zero(), schedule, dl.book.noise("unconditional", n, start=start), num_steps=3)

    drawn = dl.book.draw_digits(draw, 100, batch_size=40, scorer=scorer)
    assert drawn.nfe == 3 and drawn.x.shape == (100, 1, 28, 28) and drawn.x.abs().max() <= 1
    assert drawn["score"].fd.value == scorer.score(drawn.x).fd.value and drawn.seconds > 0
    assert dl.book.draw_digits(draw, 100, batch_size=100).nfe == 3
    assert dl.book.draw_digits(draw, 10, batch_size=40).score is None
    with pytest.raises(KeyError, match="not 'images'"):
        drawn["images"]


def test_class_scorer_averages_classes_and_adds_their_errors_in_quadrature():
    # Two classes with their own references: class 0 drawn like its reference, class 1 shifted.
    # The mean over classes of each measure is the plain average, and since the classes hold
    # disjoint digits its standard error is sqrt(s0^2 + s1^2) / 2.
    reference = torch.cat([digits(200, seed=1), digits(200, shift=1.0, seed=2)])
    labels = torch.tensor([0] * 200 + [1] * 200)
    by_class = dl.ClassScorer(reference, labels, net=PixelFeatures(), num_halves=20)
    x = torch.cat([digits(60, seed=3), digits(60, shift=2.0, seed=4)])
    y = torch.tensor([0] * 60 + [1] * 60)
    scores = by_class.score(x, y)
    assert scores[1].fd.value > 5 * scores[0].fd.value  # the shifted class is far from its own
    mean = by_class.mean(scores, "fd")
    assert mean.value == pytest.approx((scores[0].fd.value + scores[1].fd.value) / 2)
    assert mean.std == pytest.approx(math.hypot(scores[0].fd.std, scores[1].fd.std) / 2)
    better = by_class.score(torch.cat([digits(60, seed=3), digits(60, shift=1.0, seed=4)]), y)
    assert by_class.compare(better, scores, "fd", paired=True).verdict == "A lower"
    with pytest.raises(ValueError, match="one label in"):
        by_class.score(x, torch.full((120,), 7))
