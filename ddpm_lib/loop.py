"""The parts every training loop shares: data checks, batches, mixed precision, logging, the result.

:func:`ddpm_lib.train` (one objective: DDPM, VAE, and the objectives still to come) and
:func:`ddpm_lib.gan.train_gan` (two players) are built from these, so they choose devices, check
their images, draw batches, log and report in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import to_model_range
from .distributed import World, mean_over_processes
from .utils import pick_device


class Batch(NamedTuple):
    """One training batch: ``images`` float ``[B, C, H, W]`` in [-1, 1]; ``labels`` long ``[B]`` or None.

    When several processes share each batch (:mod:`ddpm_lib.distributed`), ``part = (start, stop,
    total)`` says which rows of the whole batch this process holds. Objectives draw their random
    numbers through :meth:`randn`, :meth:`rand` and :meth:`randint`, which draw for the whole batch
    and keep these rows, so that every row gets the numbers it would get in a single process.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    part: tuple[int, int, int] | None = None

    def _draw(self, sample):
        """``sample(rows)`` for every row of the whole batch, then this process's rows."""
        if self.part is None:
            return sample(len(self.images))
        start, stop, total = self.part
        return sample(total)[start:stop]

    def randn(self, *per_row, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise ``[B, *per_row]`` (default: the images' shape), on the images' device."""
        shape = per_row or tuple(self.images.shape[1:])
        return self._draw(lambda n: torch.randn((n, *shape), generator=generator, device=self.images.device,
                                                dtype=self.images.dtype))

    def rand(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform numbers in [0, 1), ``[B]``."""
        return self._draw(lambda n: torch.rand(n, generator=generator, device=self.images.device))

    def randint(self, high: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Integers in [0, high), ``[B]``."""
        return self._draw(lambda n: torch.randint(0, high, (n,), generator=generator, device=self.images.device))


@dataclass
class TrainResult:
    """What a training run returns.

    ``history`` maps each logged quantity to its value at every optimisation step (``"loss"`` is the
    objective optimised); ``ema`` is the exponential moving average of the weights, the model to
    sample from; ``seconds`` the wall time of training. For convenience a run with a single
    objective unpacks as a pair, ``losses, ema = train(...)``; a GAN run has two losses and no
    single one, so read ``result.history`` and ``result.ema`` instead.
    """

    history: dict
    ema: nn.Module
    seconds: float

    @property
    def losses(self) -> list:
        if "loss" not in self.history:
            raise AttributeError(f"this run optimised several losses, {sorted(self.history)}, not one: "
                                 "read them from result.history and the model from result.ema")
        return self.history["loss"]

    def __iter__(self):
        yield self.losses  # a run without a single loss (a GAN's) raises here, naming its losses
        yield self.ema


def check_run(*, steps, batch_size, log_every, ema_decay) -> None:
    """The checks every training loop makes of its settings, with the errors they raise."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1 or log_every < 1:
        raise ValueError(f"batch_size and log_every must be positive, got {batch_size!r} and {log_every!r}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")


def resolve_device(device=None) -> torch.device:
    """``device`` as a ``torch.device``; None picks the best available (:func:`ddpm_lib.pick_device`)."""
    return torch.device(device) if device is not None else pick_device()


def prepare_images(images, channels: int | None = None, data_range: float | None = 1.0) -> torch.Tensor:
    """uint8 ``[N, H, W]`` / ``[N, C, H, W]``, or float ``[N, C, H, W]`` in [-1, 1] -> float32 ``[N, C, H, W]``.

    Floats must lie in [-data_range, data_range]; ``None`` accepts any finite values (latents, say)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        images = to_model_range(images)
    elif not images.dtype.is_floating_point or images.ndim != 4:
        raise ValueError("images must be uint8 [N, H, W] or float [N, C, H, W], "
                         f"got {images.dtype} {list(images.shape)}")
    elif not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    elif data_range is not None and images.numel() and images.abs().max() > 1.001 * data_range:
        raise ValueError(f"float images must lie in [-{data_range:g}, {data_range:g}], got "
                         f"[{images.min():.3g}, {images.max():.3g}]; map uint8 images with ddpm_lib.to_model_range")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"the model takes {channels} channel(s), the images have {images.shape[1]}")
    if len(images) == 0:
        raise ValueError("images is empty")
    return images.float()


def prepare_labels(labels, n: int) -> torch.Tensor | None:
    """None, or integer class labels ``[N]`` (one per image) as a long tensor."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (n,):
        raise ValueError(f"labels must be integers of shape [N] = [{n}], got {labels.dtype} {list(labels.shape)}")
    return labels.long()


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether a data set of ``nbytes`` can live on ``device`` and leave room for the activations."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < free // 4


class BatchSampler:
    """The batch for each optimisation step, reproducible from the run's seed alone.

    ``sampling="epochs"``: each epoch visits every image once, in an order that depends only on
    ``(seed, epoch)``, so a resumed run sees the same batches as an uninterrupted one.
    ``sampling="replacement"``: each batch is drawn uniformly with replacement from ``generator``.
    A batch is never larger than the data set: ``batch_size`` is capped at N.
    """

    def __init__(self, images, labels, batch_size: int, *, sampling: str, seed: int, generator: torch.Generator,
                 world: World = World()):
        if sampling not in ("epochs", "replacement"):
            raise ValueError(f"sampling must be 'epochs' or 'replacement', got {sampling!r}")
        self.images, self.labels, self.sampling = images, labels, sampling
        self.seed, self.generator, self.world = seed, generator, world
        self.batch_size = min(batch_size, len(images))
        if self.batch_size % world.size:
            raise ValueError(f"a batch of {self.batch_size} cannot be shared equally by {world.size} processes")
        self.per_epoch = len(images) // self.batch_size
        self._epoch, self._order = -1, None

    def indices(self, step: int) -> torch.Tensor:
        N, B = len(self.images), self.batch_size
        if self.sampling == "replacement":
            idx = torch.randint(0, N, (B,), device=self.generator.device, generator=self.generator)
            return idx.to(self.images.device)
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order, self._epoch = torch.randperm(N, generator=g).to(self.images.device), epoch
        return self._order[k * B:(k + 1) * B]

    def __call__(self, step: int, device: torch.device) -> Batch:
        idx, part = self.indices(step), None  # every process draws the same whole batch...
        if self.world.size > 1:  # ...and keeps its own share of the rows
            share = self.batch_size // self.world.size
            part = (self.world.rank * share, (self.world.rank + 1) * share, self.batch_size)
            idx = idx[part[0]:part[1]]
        # Indexing keeps the images' memory format, so channels-last data gives channels-last batches.
        images = self.images[idx].to(device, non_blocking=True)  # [B, C, H, W]
        labels = self.labels[idx.to(self.labels.device)].to(device) if self.labels is not None else None
        return Batch(images, labels, part)


class Recorder:
    """Per-step values kept on the device and read back only every few steps, with a progress bar.

    Reading a GPU tensor makes the host wait for the GPU, so values are stacked where they are and
    fetched together in :meth:`flush`, which appends them to ``history`` and updates the bar.
    """

    def __init__(self, *, steps: int, start: int = 0, history: dict | None = None, desc: str = "training",
                 progress: bool = True, shown=("loss",), world: World = World()):
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.shown, self.world = shown, world
        self._names: list[str] | None = None
        self._pending: list[torch.Tensor] = []
        self.bar = tqdm(total=steps, initial=start, disable=not (progress and world.is_main), desc=desc, unit="step",
                        mininterval=1.0, dynamic_ncols=True)

    def add(self, values: dict) -> None:
        """Record one step's scalars, e.g. ``{"loss": loss, "kl": kl}``."""
        if self._names is None:
            self._names = list(values)
        self._pending.append(torch.stack([values[k].detach().float() for k in self._names]))

    def flush(self) -> None:
        if not self._pending:
            return
        # [steps, quantities]: the mean over the processes' shares, then one device-to-host copy.
        rows = mean_over_processes(torch.stack(self._pending), self.world).tolist()
        self._pending.clear()
        for j, name in enumerate(self._names):
            self.history.setdefault(name, []).extend(row[j] for row in rows)
        means = {k: sum(r[self._names.index(k)] for r in rows) / len(rows) for k in self.shown if k in self._names}
        self.bar.update(len(rows))
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)

    def close(self) -> None:
        self.flush()
        self.bar.close()
