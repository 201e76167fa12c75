import math
import os
import shutil

import pytest
import torch

from ddpm_lib import held_out_split, load_mnist, to_model_range
from ddpm_lib.metrics import (
    WEIGHTS,
    class_coverage,
    extract_features,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_inception_distance,
    load_feature_network,
    precision_recall,
)

needs_mnist = pytest.mark.skipif(not os.environ.get("DDPM_DATA_DIR"), reason="DDPM_DATA_DIR does not point at MNIST")


def gaussian(n, mean, cov, seed):
    g = torch.Generator().manual_seed(seed)
    L = torch.linalg.cholesky(torch.as_tensor(cov, dtype=torch.float64))
    return torch.as_tensor(mean, dtype=torch.float64) + torch.randn(n, len(mean), generator=g, dtype=torch.float64) @ L.T


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = gaussian(2000, [0.0] * 16, torch.eye(16) + 0.5, seed=0)
    assert abs(frechet_distance(x, x)) < 1e-8


def test_frechet_distance_matches_the_closed_form_for_2x2_covariances():
    # For 2x2 covariances, S1 S2 has eigenvalues l1, l2 >= 0 and tr (S1 S2)^(1/2) = sqrt(l1) + sqrt(l2)
    # = sqrt(l1 + l2 + 2 sqrt(l1 l2)) = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2))): an independent route
    # to the trace term. The two covariances below do not commute.
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])
    s1 = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[1.0, -0.4], [-0.4, 0.5]], dtype=torch.float64)
    prod = s1 @ s2
    trace_sqrt = math.sqrt(prod.trace() + 2 * math.sqrt(torch.det(prod)))
    expected = float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * trace_sqrt)
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    # Estimated from samples, the distance converges to the same value (here within 2%).
    a, b = gaussian(200_000, mu1.tolist(), s1, seed=1), gaussian(200_000, mu2.tolist(), s2, seed=2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_kid_matches_the_polynomial_kernel_mmd_of_two_gaussians():
    # In one dimension k(x, y) = (xy + 1)^3 = x^3 y^3 + 3 x^2 y^2 + 3 xy + 1, so for independent
    # samples MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y)
    #             = (E x^3 - E y^3)^2 + 3 (E x^2 - E y^2)^2 + 3 (E x - E y)^2,
    # with Gaussian moments E x = m, E x^2 = m^2 + s^2, E x^3 = m^3 + 3 m s^2.
    def moments(m, s):
        return m, m * m + s * s, m**3 + 3 * m * s * s
    (a1, a2, a3), (b1, b2, b3) = moments(0.0, 1.0), moments(0.3, 0.8)
    expected = (a3 - b3) ** 2 + 3 * (a2 - b2) ** 2 + 3 * (a1 - b1) ** 2
    x, y = gaussian(50_000, [0.0], [[1.0]], seed=3), gaussian(50_000, [0.3], [[0.64]], seed=4)
    # The estimator's variance falls as 1 / (subset_size * num_subsets) to first order, so 50 subsets
    # of 2,000 are as precise as 20 of 5,000 (about 3% standard error here) at a sixth of the cost.
    kid, kid_std = kernel_inception_distance(x, y, num_subsets=50, subset_size=2000)
    assert kid == pytest.approx(expected, rel=0.1)
    # Two samples of one distribution: the estimator is unbiased, so its mean is 0 within noise.
    same, same_std = kernel_inception_distance(x, gaussian(50_000, [0.0], [[1.0]], seed=5), num_subsets=50,
                                               subset_size=2000)
    assert abs(same) < 3 * same_std / math.sqrt(50) + 1e-3 and abs(same) < 0.05 * expected


def uniform_square(n, x_offset, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, generator=g, dtype=torch.float64) + torch.tensor([x_offset, 0.0], dtype=torch.float64)


def test_precision_and_recall_measure_the_overlap_of_supports():
    # Real: uniform on [0, 1]^2. Generated: uniform on [0.5, 1.5] x [0, 1]. Half of each set lies on
    # the other's support, so precision = recall = 0.5 in the limit of many samples. The k-NN balls
    # reach slightly past a support's edge (radius ~ sqrt(k / (pi n)) ~ 0.015 here), so allow 0.04.
    real, fake = uniform_square(4000, 0.0, seed=0), uniform_square(4000, 0.5, seed=1)
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == pytest.approx(0.5, abs=0.04) and recall == pytest.approx(0.5, abs=0.04)
    # Disjoint supports: nothing lies on the other manifold.
    assert precision_recall(real, uniform_square(4000, 3.0, seed=2), k=3) == (0.0, 0.0)
    # The same distribution: the k-NN balls of 4,000 points cover nearly all of the square.
    p_same, r_same = precision_recall(real, uniform_square(4000, 0.0, seed=3), k=3)
    assert p_same > 0.9 and r_same > 0.9


def test_precision_and_recall_separate_fidelity_from_diversity():
    # A generator that covers only the left third of the real support: everything it makes is
    # realistic (precision ~ 1) but it misses two thirds of the data (recall ~ 1/3).
    real = uniform_square(4000, 0.0, seed=0)
    narrow = uniform_square(4000, 0.0, seed=4) * torch.tensor([1 / 3, 1.0], dtype=torch.float64)
    precision, recall = precision_recall(real, narrow, k=3)
    assert precision > 0.95
    assert recall == pytest.approx(1 / 3, abs=0.05)


def test_class_coverage_entropy():
    uniform = torch.eye(10).repeat(50, 1)  # 50 confident predictions of each class
    collapsed = torch.eye(10)[[1] * 500]
    assert class_coverage(uniform)["entropy_bits"] == pytest.approx(math.log2(10))
    assert class_coverage(collapsed) == {"counts": [0, 500] + [0] * 8, "entropy_bits": 0.0,
                                         "max_entropy_bits": math.log2(10)}
    assert math.copysign(1, class_coverage(collapsed)["entropy_bits"]) == 1  # +0, printed "0.00", not "-0.00"


def test_the_weight_file_is_checked_by_hash(tmp_path):
    copy = tmp_path / "weights.pt"
    shutil.copy(WEIGHTS, copy)
    load_feature_network(path=copy)  # the genuine file loads
    copy.write_bytes(copy.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="SHA-256"):
        load_feature_network(path=copy)
    with pytest.raises(FileNotFoundError):
        load_feature_network(path=tmp_path / "missing.pt")


@needs_mnist
def test_feature_network_is_accurate_and_mode_collapse_shows_in_recall_and_entropy():
    images, labels = load_mnist("test", download=False)
    x = to_model_range(images)
    net = load_feature_network()
    # Digits 8000..9999 were held out when the classifier was trained.
    feats, logits = extract_features(net, x[8000:])
    accuracy = (logits.argmax(1) == labels[8000:]).double().mean().item()
    assert accuracy >= 0.98

    # Reference: 2,000 digits. "Generated": 1,000 other real digits, either all ten classes or only ones.
    reference, _ = extract_features(net, x[:2000])
    diverse_f, diverse_logits = extract_features(net, x[2000:3000])
    ones = x[2000:][labels[2000:] == 1][:1000]
    ones_f, ones_logits = extract_features(net, ones)
    p_div, r_div = precision_recall(reference, diverse_f)
    p_one, r_one = precision_recall(reference, ones_f)
    assert p_div > 0.8 and r_div > 0.8  # real digits against real digits
    assert p_one > 0.8  # every "1" is a perfectly realistic digit...
    assert r_one < 0.3  # ...but together they cover little of the data
    assert class_coverage(diverse_logits)["entropy_bits"] > 3.2
    assert class_coverage(ones_logits)["entropy_bits"] < 0.3
    assert frechet_distance(reference, ones_f) > 10 * frechet_distance(reference, diverse_f)


def test_an_unknown_ruler_is_refused():
    with pytest.raises(ValueError, match="unknown ruler 'inception'"):
        load_feature_network(ruler="inception")


@needs_mnist
@pytest.mark.parametrize("ruler, min_accuracy", [("classifier", 0.98), ("mlp", 0.95)])
def test_each_ruler_never_saw_the_held_out_digits_and_reads_them(ruler, min_accuracy):
    # Both rulers train on the book's 8,000 training digits (the script's split is the book's), so
    # an accuracy on the 2,000 held-out digits is an accuracy on unseen digits. The bars are a
    # little under what the seeded runs reach (CNN above 98.5%, MLP 96.5%): another CPU rounds
    # differently, but a ruler that had not learned digits would fall far below either.
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "train_mnist_classifier.py"
    spec = importlib.util.spec_from_file_location("train_rulers", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images, labels = load_mnist("test", download=False)
    train, held = module.split(labels)
    book = held_out_split(labels, seed=0)
    assert torch.equal(train, book.train) and torch.equal(held, book.held_out)
    assert not set(train.tolist()) & set(held.tolist())
    net = load_feature_network(ruler=ruler)
    feats, logits = extract_features(net, to_model_range(images[held]))
    assert feats.shape[0] == len(held) and feats.ndim == 2
    assert (logits.argmax(1) == labels[held]).double().mean().item() >= min_accuracy
