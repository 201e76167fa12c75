"""Measuring generative models: fidelity, diversity and mode coverage in one feature space.

All metrics compare *features* of real and generated images, taken from the penultimate layer of
a small MNIST classifier whose weights ship with the package (trained by
``scripts/train_mnist_classifier.py`` with a fixed seed and checked by hash on loading), so every
run of the book measures with the same ruler. A second ruler, an MLP trained the same way, checks
which verdicts survive a change of feature network. Because the features are not Inception-v3's,
the numbers are comparable with each other, not with published FIDs. :class:`ddpm_lib.Scorer`
puts these metrics together under the book's interval rule.

- Frechet distance (Heusel et al. 2017): the distance between Gaussians fitted to the two feature sets.
- KID (Binkowski et al. 2018): an unbiased squared MMD with the kernel (x.y / d + 1)^3.
- Improved precision and recall (Kynkaanniemi et al. 2019): how much of the generated set lies on
  the real data's k-NN manifold (fidelity) and how much of the real set lies on the generated
  one (diversity).
- Class coverage: the classifier's histogram of predicted digits and its entropy (mode collapse).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .files import check_sha256

WEIGHTS = Path(__file__).with_name("weights") / "mnist_classifier.pt"
WEIGHTS_SHA256 = "3886689b2dd2f103036521b11c2f1ebc9bc1a19b0a9ef57a41ce0f2a507c6c62"


class Ruler(nn.Module):
    """A feature network: ``trunk`` maps ``[B, 1, 28, 28]`` in [-1, 1] to the features ``[B, 128]``,
    ``head`` the features to logits ``[B, 10]``."""

    name = "feature network"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"the {self.name} expects images [B, 1, 28, 28] in [-1, 1], got {list(x.shape)}")
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MnistClassifier(Ruler):
    """A small CNN: ``[B, 1, 28, 28]`` in [-1, 1] -> logits ``[B, 10]``; ``features`` gives ``[B, 128]``."""

    name = "MNIST classifier"

    def __init__(self):
        super().__init__()

        def conv(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.trunk = nn.Sequential(
            *conv(1, 32), *conv(32, 32), nn.MaxPool2d(2),  # [B, 32, 14, 14]
            *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),  # [B, 64, 7, 7]
            nn.Flatten(), nn.Linear(64 * 49, 128), nn.ReLU(),  # [B, 128]: the features
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, 10))


class MnistMLP(Ruler):
    """A second, independent ruler: no convolutions, so none of the CNN's inductive biases.

    ``[B, 1, 28, 28]`` in [-1, 1] -> logits ``[B, 10]``; ``features`` gives ``[B, 128]``. A ranking
    that holds on both rulers is a property of the digits, not of one network's view of them.
    """

    name = "MNIST MLP"

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2),
                                   nn.Linear(512, 128), nn.ReLU())  # [B, 128]: the features
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, 10))


# The packaged rulers: name -> (network class, weight file, its SHA-256).
RULERS = {
    "classifier": (MnistClassifier, WEIGHTS, WEIGHTS_SHA256),
    "mlp": (MnistMLP, WEIGHTS.with_name("mnist_mlp.pt"),
            "77cc180b8b33a2d363cce1d5f20fd65dff6c060fff8bdbf813487a408f8e489c"),
}


def load_feature_network(device=None, path=None, *, ruler: str = "classifier") -> nn.Module:
    """A packaged ruler (:data:`RULERS`) in eval mode, after checking its weight file's SHA-256."""
    if ruler not in RULERS:
        raise ValueError(f"unknown ruler {ruler!r}; the packaged rulers are {', '.join(RULERS)}")
    cls, default_path, expected = RULERS[ruler]
    path = Path(path) if path is not None else default_path
    if not path.exists():
        raise FileNotFoundError(f"{ruler} weights not found at {path}; run scripts/train_mnist_classifier.py")
    check_sha256(path, expected, what=str(path), hint="Metrics computed with it would not be comparable.")
    net = cls()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.to(device if device is not None else "cpu").eval()


@torch.no_grad()
def extract_features(net: nn.Module, images: torch.Tensor, batch_size: int = 1000):
    """``(features [N, 128], logits [N, 10])`` in float64 on the CPU, for images ``[N, 1, 28, 28]`` in [-1, 1]."""
    device = next(net.parameters()).device
    feats, logits = [], []
    for chunk in images.split(batch_size):
        f = net.features(chunk.to(device, torch.float32))
        feats.append(f.double().cpu())
        logits.append(net.head(f).double().cpu())
    return torch.cat(feats), torch.cat(logits)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix, via its eigenvalues."""
    values, vectors = torch.linalg.eigh(a)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017, via Dowson & Landau 1982).

    tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2): the inner matrix is symmetric positive
    semi-definite, so its square root comes from eigh and clamped eigenvalues, which stays stable
    where a general matrix square root of the non-symmetric S1 S2 can return complex noise.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrtm_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[N, d]`` and ``[M, d]``."""
    a, b = feats_a.double(), feats_b.double()
    return frechet_distance_from_stats(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))


def kernel_inception_distance(feats_a: torch.Tensor, feats_b: torch.Tensor, num_subsets: int = 20,
                              subset_size: int = 1000, seed: int = 0):
    """KID: the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over random subsets: ``(mean, std)``."""
    a, b = feats_a.double(), feats_b.double()
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least two samples in each set")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_subsets):
        x = a[torch.randperm(len(a), generator=g)[:m]]
        y = b[torch.randperm(len(b), generator=g)[:m]]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        # Unbiased: drop the diagonal k(x_i, x_i) terms from the within-set averages.
        mmd2 = ((kxx.sum() - kxx.diagonal().sum()) + (kyy.sum() - kyy.diagonal().sum())) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(float(mmd2))
    values = torch.tensor(values, dtype=torch.float64)
    return float(values.mean()), float(values.std()) if num_subsets > 1 else 0.0


def _kth_neighbour_radii(feats: torch.Tensor, k: int, batch: int = 1000) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = []
    for chunk in feats.split(batch):
        dist = torch.cdist(chunk, feats)  # [b, N]; each row holds a 0 for the point itself
        radii.append(dist.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _inside_any_ball(query: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    return torch.cat([(torch.cdist(chunk, centres) <= radii[None, :]).any(dim=1) for chunk in query.split(batch)])


def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3):
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls: ``(precision, recall)``.

    The real manifold is the union of balls around each real feature with radius its distance to
    its k-th nearest real neighbour; likewise for the generated manifold. Precision is the
    fraction of generated samples inside the real manifold, recall the fraction of real samples
    inside the generated manifold.
    """
    real, fake = real_feats.double(), fake_feats.double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples in each set")
    precision = _inside_any_ball(fake, real, _kth_neighbour_radii(real, k)).double().mean()
    recall = _inside_any_ball(real, fake, _kth_neighbour_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def class_coverage(logits: torch.Tensor) -> dict:
    """The predicted-class histogram ``counts`` [10] and its entropy in bits (log2(10) = 3.32 if uniform)."""
    counts = torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1])
    p = counts.double() / counts.sum()
    entropy = (p[p > 0] * (1 / p[p > 0]).log2()).sum()  # sum p log(1/p): one class gives +0, not -0
    return {"counts": counts.tolist(), "entropy_bits": float(entropy), "max_entropy_bits": math.log2(logits.shape[1])}
