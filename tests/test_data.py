import functools
import gzip
import hashlib
import http.server
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm_lib.data as data
import ddpm_lib.files as dl_files
from ddpm_lib import DatasetError, from_model_range, held_out_split, load_fashion_mnist, load_mnist, to_model_range


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format: magic 0x0000 08 <ndim>, big-endian dims, then the data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def small_mnist(tmp_path, monkeypatch):
    """A 5-image 'MNIST test split' in tmp_path/mnist, registered with its own hashes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    folder = tmp_path / "mnist"
    folder.mkdir()
    files = {}
    for name, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        payload = idx_bytes(array)
        (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        monkeypatch.setitem(data._DATASETS["mnist"]["sha256"], name, hashlib.sha256(payload).hexdigest())
        files[name] = payload
    return tmp_path, images, labels, files


def test_loads_a_small_idx_file(small_mnist):
    root, images, labels, _ = small_mnist
    x, y = load_mnist("test", root=root, download=False)
    assert x.dtype == torch.uint8 and x.shape == (5, 28, 28)
    assert y.dtype == torch.int64 and y.tolist() == [3, 1, 4, 1, 5]
    assert np.array_equal(x.numpy(), images)


def test_a_corrupt_file_is_refused_with_its_path(small_mnist):
    root, *_ = small_mnist
    path = root / "mnist" / "t10k-images-idx3-ubyte.gz"
    payload = bytearray(gzip.decompress(path.read_bytes()))
    payload[100] ^= 0xFF  # one flipped byte
    path.write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz \(decompressed\) is corrupt or from another run: its SHA-256"):
        load_mnist("test", root=root, download=False)
    path.write_bytes(path.read_bytes()[:50])  # a truncated download
    with pytest.raises(DatasetError, match="not a complete gzip file"):
        load_mnist("test", root=root)


def test_read_idx_checks_the_header():
    good = idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    assert data.read_idx(good).shape == (2, 3)
    with pytest.raises(DatasetError, match="magic"):
        data.read_idx(b"\x00\x00\x0d\x02" + good[4:])  # 0x0D: float data, not unsigned bytes
    with pytest.raises(DatasetError, match="announces shape"):
        data.read_idx(good[:-1])


def test_offline_with_no_cache_gives_a_clear_error(tmp_path, monkeypatch):
    # Port 9 on localhost refuses connections at once: the same failure as a machine without network.
    monkeypatch.setitem(data._DATASETS["mnist"], "urls", ["http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/"])
    with pytest.raises(DatasetError, match=r"(?s)could not be downloaded.*127\.0\.0\.1:9/a/.*127\.0\.0\.1:9/b/.*offline"):
        load_mnist("test", root=tmp_path)
    assert not any(tmp_path.rglob("*.gz"))  # nothing half-written left behind
    with pytest.raises(DatasetError, match="download=False"):
        load_mnist("test", root=tmp_path, download=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_falls_back_to_the_mirror_when_the_first_host_serves_bad_bytes(small_mnist, tmp_path, monkeypatch):
    root, images, _, files = small_mnist
    # Two "hosts" on localhost: the first serves a re-gzipped but altered file, the mirror a good one.
    bad, good = tmp_path / "bad", tmp_path / "good"
    for folder in (bad, good):
        folder.mkdir()
    for name, payload in files.items():
        (good / f"{name}.gz").write_bytes(gzip.compress(payload, mtime=123))  # another gzip wrapper, same payload
        (bad / f"{name}.gz").write_bytes(gzip.compress(payload[:-1] + b"\x00"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=tmp_path))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setitem(data._DATASETS["mnist"], "urls", [f"{base}/bad/", f"{base}/good/"])
        cache = tmp_path / "cache"
        x, y = load_mnist("test", root=cache)
    finally:
        server.shutdown()
    assert np.array_equal(x.numpy(), images)
    cached = cache / "mnist" / "t10k-images-idx3-ubyte.gz"
    assert gzip.decompress(cached.read_bytes()) == files["t10k-images-idx3-ubyte"]
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(f"{n}.gz" for n in files)


def test_cache_location_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "env"))
    assert dl_files.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert dl_files.data_root() == tmp_path / "env"
    monkeypatch.delenv("DDPM_DATA_DIR")
    assert dl_files.data_root() == Path.home() / ".cache" / "ddpm_lib"


def test_bad_split_is_refused():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_fashion_mnist("validation")


def test_model_range_round_trip():
    images = torch.arange(256, dtype=torch.uint8).view(4, 8, 8)
    x = to_model_range(images)
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.equal(from_model_range(x)[:, 0], images)
    assert torch.equal(from_model_range(torch.tensor([-3.0, 0.0, 3.0])), torch.tensor([0, 128, 255], dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        to_model_range(images.float())


@pytest.mark.skipif(not os.environ.get("DDPM_DATA_DIR"), reason="DDPM_DATA_DIR does not point at a data folder")
def test_the_real_mnist_test_split():
    # The canonical test split: 10,000 digits whose labels begin 7 2 1 0 4 1 4 9 5 9, with the
    # published class counts. Reaching this line means both SHA-256 checks passed.
    images, labels = load_mnist("test", download=False)
    assert images.shape == (10_000, 28, 28) and images.dtype == torch.uint8
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Digits are white strokes on black: most pixels are 0, the stroke cores 255.
    assert (images == 0).float().mean() > 0.75 and images.max() == 255


def test_held_out_split_is_stratified_disjoint_complete_and_fixed():
    # 10 classes of 97 to 106 images: each gives round(0.2 * count) to the held-out part.
    counts = [97 + c for c in range(10)]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    split = held_out_split(labels, held_out=0.2, seed=0)
    assert torch.equal(torch.cat([split.train, split.held_out]).sort().values, torch.arange(len(labels)))
    assert torch.bincount(labels[split.held_out]).tolist() == [round(0.2 * n) for n in counts]
    assert torch.equal(split.train, split.train.sort().values)
    again, other = held_out_split(labels, held_out=0.2, seed=0), held_out_split(labels, held_out=0.2, seed=1)
    assert torch.equal(again.held_out, split.held_out) and not torch.equal(other.held_out, split.held_out)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="held_out"):
            held_out_split(labels, held_out=bad)
    with pytest.raises(ValueError, match="labels must be integer"):
        held_out_split(labels.float())
