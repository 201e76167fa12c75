"""The evidence tools: nearest-neighbour distances, the share of grey pixels, printing and tables, Wilson intervals."""

import pytest
import torch

from ddpm_lib import evidence
from ddpm_lib.evidence import nearest_distances, undecided_fraction


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
