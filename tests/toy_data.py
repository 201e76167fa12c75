"""Small image sets with structure a tiny network learns in a few steps (shared by the tests)."""

import torch


def squares(n=32, size=8):
    """Bright 3x3 squares at random places on black, uint8 [n, size, size]."""
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(n, size, size, dtype=torch.uint8)
    for i, (r, c) in enumerate(torch.randint(0, size - 3, (n, 2), generator=g).tolist()):
        images[i, r:r + 3, c:c + 3] = 255
    return images


def bars(n=64):
    """Bright vertical and horizontal bars on black, uint8 [n, 28, 28]."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    for i, pos in enumerate(torch.randint(4, 24, (n,), generator=g).tolist()):
        if i % 2:
            images[i, :, pos - 2:pos + 2] = 255
        else:
            images[i, pos - 2:pos + 2, :] = 255
    return images
