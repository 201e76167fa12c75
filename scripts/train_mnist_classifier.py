"""Train the MNIST networks whose features ddpm_lib.metrics measures with, and write their weights.

    python scripts/train_mnist_classifier.py [classifier|mlp]

Two rulers (ddpm_lib.metrics.RULERS): the CNN ``classifier`` and the independent ``mlp``. Both
train on the book's 8,000 training digits of the MNIST test split (``ddpm_lib.held_out_split``,
the split every chapter uses), so neither ever sees the 2,000 held-out digits that the chapters
judge against, and each reports its accuracy on those 2,000.

Everything is seeded, so a run on the same software reproduces the same weights (another CPU may
round differently). The file goes to ddpm_lib/weights/; its SHA-256 must then be copied into
ddpm_lib/metrics.py (RULERS), which the loader checks.
"""

import hashlib
import sys
import time

import torch
import torch.nn.functional as F

import ddpm_lib as dl
from ddpm_lib.metrics import RULERS

SEED, EPOCHS, BATCH, LR = 0, 15, 128, 2e-3


def shift(x, g):
    """Random translations by up to 2 pixels: pad with the background value, crop at a random offset."""
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
    return padded[:, :, dy:dy + 28, dx:dx + 28]


def split(labels):
    """(training indices, held-out indices) into MNIST's test split: the book's split."""
    book = dl.held_out_split(labels, seed=0)  # the split of dl.book.digits
    return book.train, book.held_out


def main(ruler="classifier"):
    if ruler not in RULERS:
        raise SystemExit(f"unknown ruler {ruler!r}; choose one of {', '.join(RULERS)}")
    cls, path, _ = RULERS[ruler]
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    images, labels = dl.load_mnist("test")
    x = dl.to_model_range(images)
    train, held = split(labels)
    x_train, y_train, x_test, y_test = x[train], labels[train], x[held], labels[held]
    n = len(x_train)
    net = cls()
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    steps = EPOCHS * (n // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps)
    g = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        net.train()
        order = torch.randperm(n, generator=g)
        for k in range(n // BATCH):
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
    path.parent.mkdir(exist_ok=True)
    torch.save(net.state_dict(), path)
    print(f"trained in {time.perf_counter() - start:.0f} s; wrote {path}")
    print(f"SHA-256: {hashlib.sha256(path.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
