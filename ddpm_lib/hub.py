"""Published weights: the models the chapters train, loadable by name on any machine.

Weights are shared as safetensors files: raw tensors plus a small text header, nothing executable,
so loading one never runs code (unpickling a ``torch.save`` file can). The header records the
model's class and configuration, so :func:`load_weights` rebuilds the model on its own. Only the
EMA weights are published (they are the ones to sample from), in float16 where that changes
nothing measurable.

:func:`pretrained` looks for a published file in the local cache, then in the repository checkout
the library runs from (its ``weights/`` folder), and otherwise downloads it from the repository;
every file is checked against its SHA-256 before use, and a bad download is never cached.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .checkpoint import check_state_dict, model_class, model_record
from .files import CHECKOUT_WEIGHTS as CHECKOUT
from .files import REGISTRY, check_sha256, sha256_of
from .files import weights_cache as cache_dir

FORMAT = "ddpm_lib.weights.v1"
REPOSITORY = "https://github.com/diffusion-explained/diffusion-models-explained"
DOWNLOAD_URL = REPOSITORY + "/raw/main/weights/{file}"


def read_registry(path=REGISTRY) -> dict[str, dict]:
    """name -> ``{"file", "sha256", "bytes", "chapter"}`` for every published model.

    The registry ships inside the package, so a pip-installed library knows each file's hash even
    though the files themselves are downloaded: a file is trusted because the code vouches for it.
    """
    path = Path(path)
    if not path.exists():
        return {}
    registry = json.loads(path.read_text())
    for name, entry in registry.items():
        if not {"file", "sha256"} <= set(entry):
            raise WeightsError(f"{path}: the entry {name!r} lacks a file name or a SHA-256")
    return registry


# name -> {"file", "sha256", ...}: the weights published by the full run of the chapter that trains each model.
PUBLISHED: dict[str, dict] = read_registry()


class WeightsError(RuntimeError):
    """Published weights are unknown, missing and not downloadable, or corrupt."""


def save_weights(path, model: nn.Module, *, dtype: torch.dtype = torch.float16) -> str:
    """Write ``model``'s weights (floating-point ones as ``dtype``) with its class and config; return the
    SHA-256. The same weights always give the same bytes, so a rerun republishes the same hash."""
    from safetensors.torch import save

    record = model_record(model)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "model_class": record["model_class"],
                "model_config": json.dumps(record["model_config"])}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_sorted_header(save(tensors, metadata=metadata)))
    return sha256_of(path)


def _sorted_header(blob: bytes) -> bytes:
    """The safetensors file ``blob`` with its JSON header's keys sorted. The library writes the metadata
    from a hash map whose order changes from process to process, so identical weights could give
    files with different hashes. Layout: 8-byte little-endian header length, header, tensor data (whose
    offsets count from the data's start, so rewriting the header moves nothing)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header with spaces to a multiple of 8
    return len(header).to_bytes(8, "little") + header + blob[8 + n:]


def load_weights(path, *, device=None, expected: type | None = None) -> nn.Module:
    """Rebuild the model in a file written by :func:`save_weights`, in float32 and eval mode."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file: {err}") from None
    if metadata.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a ddpm_lib weights file (format {FORMAT!r} expected)")
    try:
        cls, config = model_class(metadata.get("model_class")), json.loads(metadata.get("model_config", ""))
    except (ValueError, TypeError) as err:  # json's errors are ValueErrors
        raise WeightsError(f"{path} does not say which model it holds: {err}") from None
    if expected is not None and not issubclass(cls, expected):
        raise WeightsError(f"{path} holds a {cls.__name__}, not a {expected.__name__}")
    try:
        model = cls(**config)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{path}: {cls.__name__} cannot be built from the recorded config {config}: {err}") \
            from None
    own = model.state_dict()
    check_state_dict(model, tensors, f"{path} ({cls.__name__} with config {config})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
    return model.to(device if device is not None else "cpu").eval()


def pretrained(name: str, *, device=None) -> nn.Module:
    """The published model ``name`` (see ``PUBLISHED``), in eval mode on ``device``."""
    if name not in PUBLISHED:
        raise WeightsError(f"no published weights named {name!r}; published: {sorted(PUBLISHED) or 'none yet'}")
    file, sha256 = PUBLISHED[name]["file"], PUBLISHED[name]["sha256"]
    cached, checkout = cache_dir() / file, CHECKOUT / file
    if cached.exists():
        check_sha256(cached, sha256, what=str(cached), error=WeightsError,
                     hint="Delete it to download a fresh copy.")
        return load_weights(cached, device=device)
    # A checkout's copy that fails the check (a Git LFS pointer, an edited file) is passed over.
    if checkout.exists() and sha256_of(checkout) == sha256:
        return load_weights(checkout, device=device)
    url = DOWNLOAD_URL.format(file=file)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Writes to a temporary file and moves it into place only if the hash matches.
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=sha256, progress=False)
    except RuntimeError as err:  # torch's hash check
        raise WeightsError(f"the download of {url} is corrupt ({err}); nothing was cached") from None
    except OSError as err:  # no network, host refused, file not there
        raise WeightsError(f"the weights {name!r} are in neither {cached.parent} nor {CHECKOUT}, and {url} could "
                           f"not be downloaded ({err}). Offline? Copy {file} into {cached.parent}.") from None
    return load_weights(cached, device=device)
