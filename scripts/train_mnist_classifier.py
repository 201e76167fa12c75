"""Train the MNIST classifier whose features ddpm_lib.metrics measures with, and write its weights.

    python scripts/train_mnist_classifier.py

Trains on the first 8,000 digits of the MNIST test split (the split every chapter of the book uses)
and reports accuracy on the remaining 2,000, which it never sees. Everything is seeded, so a run
on the same software reproduces the same weights. The file goes to ddpm_lib/weights/; its SHA-256
must then be copied into ddpm_lib/metrics.py (WEIGHTS_SHA256), which the loader checks.
"""

import hashlib
import time

import torch
import torch.nn.functional as F

import ddpm_lib as dl
from ddpm_lib.metrics import WEIGHTS, MnistClassifier

SEED, EPOCHS, BATCH, LR, N_TRAIN = 0, 15, 128, 2e-3, 8000


def shift(x, g):
    """Random translations by up to 2 pixels: pad with the background value, crop at a random offset."""
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
    return padded[:, :, dy:dy + 28, dx:dx + 28]


def main():
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    images, labels = dl.load_mnist("test")
    x = dl.to_model_range(images)
    x_train, y_train, x_test, y_test = x[:N_TRAIN], labels[:N_TRAIN], x[N_TRAIN:], labels[N_TRAIN:]
    net = MnistClassifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    steps = EPOCHS * (N_TRAIN // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps)
    g = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        net.train()
        order = torch.randperm(N_TRAIN, generator=g)
        for k in range(N_TRAIN // BATCH):
            idx = order[k * BATCH:(k + 1) * BATCH]
            loss = F.cross_entropy(net(shift(x_train[idx], g)), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        net.eval()
        with torch.no_grad():
            accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
        print(f"epoch {epoch + 1:2d}: loss {loss.item():.4f}, held-out accuracy {100 * accuracy:.2f}%", flush=True)
    WEIGHTS.parent.mkdir(exist_ok=True)
    torch.save(net.state_dict(), WEIGHTS)
    print(f"trained in {time.perf_counter() - start:.0f} s; wrote {WEIGHTS}")
    print(f"SHA-256: {hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
