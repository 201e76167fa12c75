"""Where the library keeps its files, and how it trusts them: one place for both.

- Paths and settings: :func:`data_root` (datasets), :func:`weights_cache` (downloaded weights),
  :data:`REGISTRY` (the hashes of the published weights, shipped with the package) and
  :data:`CHECKOUT_WEIGHTS` (a clone's ``weights/`` folder). The chapters' checkpoint folder is the
  book's (:func:`ddpm_lib.book.checkpoint_dir`).
- Trust: every file the library reads from outside, a dataset, published weights or the metrics'
  feature network, is checked against a SHA-256 that the code ships with, by :func:`check_sha256`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REGISTRY = PACKAGE / "weights" / "published.json"  # name -> file and SHA-256 of the published weights
CHECKOUT_WEIGHTS = PACKAGE.parent / "weights"  # present when the library runs from a clone


def data_root(root=None) -> Path:
    """The dataset cache: ``root``, else ``$DDPM_DATA_DIR``, else ``~/.cache/ddpm_lib``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("DDPM_DATA_DIR"):
        return Path(os.environ["DDPM_DATA_DIR"]).expanduser()
    return Path.home() / ".cache" / "ddpm_lib"


def weights_cache() -> Path:
    """Where downloaded weights are kept: ``$DDPM_CACHE_DIR/weights``, else ``~/.cache/ddpm_lib/weights``."""
    return Path(os.environ.get("DDPM_CACHE_DIR", Path.home() / ".cache" / "ddpm_lib")).expanduser() / "weights"


def sha256_of(source) -> str:
    """The SHA-256 of ``source``: bytes, or a file read in blocks of 1 MiB."""
    digest = hashlib.sha256()
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
    else:
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_sha256(source, expected: str, *, what: str, error: type[Exception] = ValueError, hint: str = "") -> None:
    """Raise ``error`` naming ``what`` (and ``hint``, what to do) unless ``source`` (bytes or a file)
    has the SHA-256 ``expected``."""
    found = sha256_of(source)
    if found != expected:
        raise error(f"{what} is corrupt or from another run: its SHA-256 is {found}, expected {expected}"
                    + (f". {hint}" if hint else ""))
