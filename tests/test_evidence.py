"""The evidence tools: bootstrap intervals, nearest-neighbour distances, the share of grey pixels."""

import math

import pytest
import torch

from ddpm_lib import evidence
from ddpm_lib.evidence import bootstrap, fd_difference, nearest_distances, normal_interval, undecided_fraction


def test_bootstrap_interval_of_a_mean_matches_the_standard_error():
    # For the mean of n draws of N(0, 1) the standard error is 1 / sqrt(n) and the central 95%
    # interval is about -/+ 1.96 / sqrt(n) around the sample mean. 400 resamples estimate that
    # width to a few percent.
    n = 2_000
    x = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = bootstrap(lambda idx: x[idx].mean(), n, num_resamples=400, seed=1)
    assert result["value"] == pytest.approx(x.mean().item())
    assert result["low"] < result["value"] < result["high"]
    assert result["std"] == pytest.approx(1 / math.sqrt(n), rel=0.1)
    assert result["high"] - result["low"] == pytest.approx(2 * 1.96 / math.sqrt(n), rel=0.15)
    assert bootstrap(lambda idx: x[idx].mean(), n, seed=1) == bootstrap(lambda idx: x[idx].mean(), n, seed=1)
    with pytest.raises(ValueError, match="num_resamples"):
        bootstrap(lambda idx: 0.0, n, num_resamples=1)


def test_normal_interval_is_196_standard_deviations_wide():
    low, high = normal_interval(10.0, 2.0)
    assert low == pytest.approx(10 - 1.959964 * 2) and high == pytest.approx(10 + 1.959964 * 2)


def test_nearest_distances_find_copies_and_measure_the_rest():
    refs = torch.zeros(5, 1, 2, 2)
    for k in range(5):
        refs[k] += k  # reference k is a constant image of value k: distance between k and j is 2 |k - j|
    queries = torch.stack([refs[3], refs[1] + 0.25, refs[4] + 3])
    d, idx = nearest_distances(queries, refs, batch_size=2)
    assert idx.tolist() == [3, 1, 4]
    torch.testing.assert_close(d, torch.tensor([0.0, 0.5, 6.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="values each"):
        nearest_distances(torch.zeros(1, 3), refs)


def test_undecided_fraction_counts_grey_pixels():
    ink_and_paper = torch.tensor([-1.0, 1.0, -1.0, 1.0])
    assert undecided_fraction(ink_and_paper) == 0.0
    half_grey = torch.tensor([-1.0, 0.0, 0.1, 1.0])  # 0.0 -> 0.5 and 0.1 -> 0.55 are grey
    assert undecided_fraction(half_grey) == 0.5


def test_numbers_print_to_the_precision_their_error_bar_supports():
    # std 0.0123 -> two significant figures are 0.012, so three decimals: 1.235 ± 0.012
    assert evidence.format_pm({"value": 1.23456, "std": 0.0123}) == "1.235 ± 0.012"
    # std 35.2 -> two significant figures are 35, so no decimals
    assert evidence.format_pm({"value": 298.7, "std": 35.2}) == "299 ± 35"
    assert evidence.format_pm({"value": 0.5, "std": 0.0}) == "0.500 ± 0.000"
    assert evidence.format_pm(None) == "–"
    assert evidence.format_interval({"value": 87.46, "std": 17.6, "low": 53.0, "high": 122.0}) == "87 [53, 122]"


def test_markdown_table_aligns_columns_and_checks_row_lengths():
    text = evidence.markdown_table(["a", "b"], [[1, 2]], caption="**T**")
    assert text.splitlines() == ["**T**", "", "| a | b |", "|:--|--:|", "| 1 | 2 |"]
    with pytest.raises(ValueError, match="2 cells"):
        evidence.markdown_table(["a", "b"], [[1]])


def test_wilson_interval_stays_inside_zero_one_and_matches_the_formula():
    # k = 0 of n = 10: the centre (0 + z^2/20) / (1 + z^2/10) and the half-width
    # z / (1 + z^2/10) * sqrt(z^2 / 400) are equal, so low = 0 and high = (z^2/10) / (1 + z^2/10).
    z2 = 1.959964**2
    m = evidence.wilson_interval(0, 10)
    assert m["value"] == 0 and abs(m["low"]) < 1e-12
    assert m["high"] == pytest.approx((z2 / 10) / (1 + z2 / 10), rel=1e-6)  # 0.2775
    # By symmetry, 10 of 10 mirrors it; for large n the interval tends to p -/+ 1.96 std.
    assert evidence.wilson_interval(10, 10)["low"] == pytest.approx(1 - m["high"])
    big = evidence.wilson_interval(5_000, 10_000)
    assert big["high"] - big["low"] == pytest.approx(2 * 1.959964 * 0.005, rel=1e-3)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        evidence.wilson_interval(11, 10)


def test_fd_difference_resamples_both_sets_together():
    # The value is FD(a) - FD(b) on the full sets; swapping a and b negates every resampled
    # difference (same indices, same seed), so the value flips sign and the std stays; a set
    # against itself differs by exactly 0 on every resample; the interval is value -/+ 1.96 std.
    from ddpm_lib.metrics import frechet_distance

    g = torch.Generator().manual_seed(0)
    reference, f_a = torch.randn(300, 4, generator=g), torch.randn(60, 4, generator=g)
    f_b = f_a + 0.3 * torch.randn(60, 4, generator=g)  # b shares most of a's variation
    d = fd_difference(reference, f_a, f_b, num_resamples=50)
    assert d["value"] == pytest.approx(frechet_distance(reference, f_a) - frechet_distance(reference, f_b))
    swapped = fd_difference(reference, f_b, f_a, num_resamples=50)
    assert swapped["value"] == pytest.approx(-d["value"]) and swapped["std"] == pytest.approx(d["std"])
    assert d["high"] - d["value"] == pytest.approx(1.959964 * d["std"], rel=1e-5)
    assert d["value"] - d["low"] == pytest.approx(d["high"] - d["value"])
    same = fd_difference(reference, f_a, f_a, num_resamples=20)
    assert same["value"] == 0 and same["std"] == 0
    # Pairing cancels the shared variation: the difference varies less than FD(b) alone does.
    alone = bootstrap(lambda i: frechet_distance(reference, f_b[i]), 60, num_resamples=50)
    assert d["std"] < alone["std"]
    with pytest.raises(ValueError, match="equally many"):
        fd_difference(reference, f_a, f_b[:59])
