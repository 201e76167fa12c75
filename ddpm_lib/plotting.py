"""Figures the chapters share: image grids and small animations (matplotlib only), and animations as
HTML that plays offline."""

from __future__ import annotations

import re

import numpy as np
import torch

from .data import from_model_range


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Tile a batch of images into one array.

    ``images``: float ``[B, C, H, W]`` in the model range [-1, 1] (clamped), or uint8 ``[B, H, W]``
    / ``[B, C, H, W]``. Returns uint8 ``[rows * (H + p) + p, nrow * (W + p) + p]`` for one channel,
    with a trailing RGB axis for three.
    """
    images = images.detach().cpu()
    if images.dtype != torch.uint8:
        images = from_model_range(images)
    if images.ndim == 3:
        images = images[:, None]  # [B, H, W] -> [B, 1, H, W]
    B, C, H, W = images.shape
    if C not in (1, 3):
        raise ValueError(f"can only draw 1- or 3-channel images, got {C} channels")
    nrow = max(1, min(nrow, B))
    rows = -(-B // nrow)  # ceiling division
    grid = np.full((C, rows * (H + padding) + padding, nrow * (W + padding) + padding), 255, dtype=np.uint8)
    for i, img in enumerate(images.numpy()):
        r, c = divmod(i, nrow)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, top:top + H, left:left + W] = img
    return grid[0] if C == 1 else grid.transpose(1, 2, 0)  # [H', W'] or [H', W', 3]


def show_images(images: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, size: float = 0.6):
    """Draw :func:`image_grid` of ``images`` on ``ax`` (a new figure if None, ``size`` inches per image)."""
    import matplotlib.pyplot as plt

    grid = image_grid(images, nrow=nrow)
    if ax is None:
        n = len(images)
        cols = max(1, min(nrow, n))
        _, ax = plt.subplots(figsize=(size * cols + 0.2, size * -(-n // cols) + (0.4 if title else 0.2)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def animate_grids(frames, titles=None, nrow: int = 8, interval: int = 120, size: float = 0.6):
    """A matplotlib animation stepping through image batches, ready for ``.to_jshtml()``.

    ``frames``: a list of image batches (as accepted by :func:`image_grid`); ``titles`` one string
    per frame. ``to_jshtml()`` embeds every frame in the page, so it plays in a static HTML page too.
    """
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    grids = [image_grid(f, nrow=nrow) for f in frames]
    n, cols = len(frames[0]), max(1, min(nrow, len(frames[0])))
    fig, ax = plt.subplots(figsize=(size * cols + 0.2, size * -(-n // cols) + 0.5))
    shown = ax.imshow(grids[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    title = ax.set_title(titles[0] if titles else "", fontsize=10)

    def update(k):
        shown.set_data(grids[k])
        if titles:
            title.set_text(titles[k])
        return shown, title

    animation = FuncAnimation(fig, update, frames=len(grids), interval=interval, blit=False)
    plt.close(fig)  # keep only the animation, not a stray static copy of the first frame
    return animation


# Text symbols for the player's buttons (common glyphs), so the page needs no icon font from a CDN.
_PLAYER_ICONS = {"fa fa-minus": "&minus;", "fa fa-fast-backward": "&laquo;", "fa fa-step-backward": "&lsaquo;",
                 "fa fa-play fa-flip-horizontal": "&#x25C0;", "fa fa-pause": "&#x2016;", "fa fa-play": "&#x25B6;",
                 "fa fa-step-forward": "&rsaquo;", "fa fa-fast-forward": "&raquo;", "fa fa-plus": "+"}


def animation_html(animation, default_mode: str = "once") -> str:
    """A matplotlib animation as self-contained HTML (every frame embedded, player controls included).

    Matplotlib's ``to_jshtml`` loads an icon font from a CDN for its buttons; offline, or behind a
    strict content policy, that request fails and the buttons are blank. We drop the link and
    write the buttons as text symbols instead.
    """
    html = animation.to_jshtml(default_mode=default_mode)
    html = re.sub(r'<link rel="stylesheet"\s*href="https://maxcdn[^"]*font-awesome[^"]*">', "", html)
    return re.sub(r'<i class="([^"]*)"></i>', lambda m: _PLAYER_ICONS.get(m.group(1), ""), html)
