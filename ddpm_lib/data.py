"""MNIST and Fashion-MNIST, read from their original IDX files with nothing but numpy.

Files are looked for, and downloaded to, ``<root>/<dataset>/``, where root is the ``root`` argument,
else the ``DDPM_DATA_DIR`` environment variable, else ``~/.cache/ddpm_lib``. Mirrors re-compress the
files, so we check the SHA-256 of the *decompressed* bytes: a file that fails the check is never used.
"""

from __future__ import annotations

import gzip
import math
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .files import check_sha256, data_root


class DatasetError(RuntimeError):
    """A dataset file is missing, cannot be downloaded, or is corrupt."""


# SHA-256 of each decompressed file, as published for the original releases.
_DATASETS = {
    "mnist": {
        # PyTorch's mirror first: the original host often refuses automated downloads.
        "urls": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/"],
        "sha256": {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    },
    "fashion-mnist": {
        "urls": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"],
        "sha256": {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    },
}
_SPLITS = {"train": "train", "test": "t10k"}


def read_idx(payload: bytes, source: str = "IDX data") -> np.ndarray:
    """Parse an (uncompressed) IDX file of unsigned bytes: a 4-byte magic, the dims, then the data."""
    if len(payload) < 4 or payload[:2] != b"\x00\x00" or payload[2] != 0x08:
        raise DatasetError(f"{source} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = payload[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(payload[4:header], dtype=">u4"))
    if len(shape) != ndim or len(payload) != header + int(np.prod(shape)):
        raise DatasetError(f"{source}: the header announces shape {shape} but the file holds "
                           f"{len(payload) - header} bytes of data")
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(shape)


def _verified_payload(raw: bytes, gzipped: bool, sha256: str, source: str) -> bytes:
    """Decompress ``raw`` if needed and check its SHA-256; raise rather than return bad bytes."""
    if gzipped:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetError(f"{source} is corrupt: not a complete gzip file ({err})") from err
    check_sha256(raw, sha256, what=f"{source} (decompressed)", error=DatasetError)
    return raw


def _download(name: str, folder: Path, urls: list[str], sha256: str) -> bytes:
    """Fetch ``name.gz`` from the first host that serves the right bytes; cache it; return the payload."""
    failures = []
    for base in urls:
        url = f"{base}{name}.gz"
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "ddpm_lib"})
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
            payload = _verified_payload(raw, True, sha256, url)  # a bad download is never cached
        except (OSError, DatasetError) as err:
            failures.append(f"{url}: {err}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        os.replace(tmp, folder / f"{name}.gz")  # atomic: a crash never leaves half a file behind
        return payload
    raise DatasetError(f"{name}.gz is not in {folder} and could not be downloaded:\n  " + "\n  ".join(failures) +
                       "\nIf this machine is offline, copy the file there or point DDPM_DATA_DIR at a folder "
                       f"whose {folder.name}/ subfolder holds it.")


def _load_file(dataset: str, name: str, root, download: bool) -> np.ndarray:
    spec = _DATASETS[dataset]
    folder = data_root(root) / dataset
    sha256 = spec["sha256"][name]
    for candidate, gzipped in ((folder / f"{name}.gz", True), (folder / name, False)):
        if candidate.exists():
            try:
                payload = _verified_payload(candidate.read_bytes(), gzipped, sha256, str(candidate))
            except DatasetError as err:
                raise DatasetError(f"{err}. Delete the file and load again to download a fresh copy.") from None
            return read_idx(payload, str(candidate))
    if not download:
        raise DatasetError(f"{name}.gz is not in {folder} and download=False")
    return read_idx(_download(name, folder, spec["urls"], sha256), f"{name}.gz")


def _load(dataset: str, split: str, root, download: bool):
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = _SPLITS[split]
    images = _load_file(dataset, f"{prefix}-images-idx3-ubyte", root, download)
    labels = _load_file(dataset, f"{prefix}-labels-idx1-ubyte", root, download)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{dataset} {split}: images {images.shape} do not match labels {labels.shape}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def load_mnist(split: str = "train", root=None, download: bool = True):
    """MNIST digits (LeCun et al. 1998): ``(images uint8 [N, 28, 28], labels int64 [N])``.

    ``split="train"`` has 60,000 images, ``split="test"`` 10,000.
    """
    return _load("mnist", split, root, download)


def load_fashion_mnist(split: str = "train", root=None, download: bool = True):
    """Fashion-MNIST (Xiao et al. 2017), a drop-in for MNIST with clothing: same shapes and splits."""
    return _load("fashion-mnist", split, root, download)


class Split(NamedTuple):
    """Indices into a data set: ``train`` for fitting models, ``held_out`` for judging them."""

    train: torch.Tensor  # long [N_train], ascending
    held_out: torch.Tensor  # long [N_held_out], ascending


def held_out_split(labels: torch.Tensor, held_out: float = 0.2, seed: int = 0) -> Split:
    """A fixed, seeded split of a labelled data set into a training part and a held-out part.

    Stratified: each class gives ``held_out * its count`` images, rounded half up, to the held-out
    part (and keeps at least one for training), so both parts keep the classes' proportions. The
    same labels and seed always give the same split.
    A model that memorised its training images would score well against them and not against
    held-out ones, which is why generated samples are compared with the held-out part.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or len(labels) < 2:
        raise ValueError(f"labels must be integer class labels of shape [N], N >= 2; got {labels.dtype} "
                         f"{list(labels.shape)}")
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out is the fraction held out and must lie in (0, 1), got {held_out}")
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).squeeze(1)
        members = members[torch.randperm(len(members), generator=g)]
        k = min(math.floor(held_out * len(members) + 0.5), len(members) - 1)  # half up; one left to train on
        held.append(members[:k])
        train.append(members[k:])
    return Split(torch.cat(train).sort().values, torch.cat(held).sort().values)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255], ``[N, H, W]`` or ``[N, C, H, W]`` -> float32 ``[N, C, H, W]`` in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images in [0, 255], got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]  # [N, H, W] -> [N, 1, H, W]
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W] or [N, C, H, W], got shape {list(images.shape)}")
    return images.to(torch.float32) / 127.5 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_model_range`: clamp to [-1, 1] and map to uint8 [0, 255]."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
