"""Publish the weights that the chapters' full runs saved: copy each file into ``weights/`` and
record its SHA-256 and size in the registry that ships with the library.

    python scripts/publish_weights.py               # every model below that a chapter saved
    python scripts/publish_weights.py mnist-ddpm    # one of them

Run it after ``make chapters`` (the chapters write ``<name>.safetensors`` with
``dl.book.save_for_publishing`` into their checkpoint folder, ``notebooks/checkpoints`` unless
``DDPM_BOOK_CHECKPOINTS`` names another), then commit ``weights/`` and the registry together with
the chapters whose outputs show those very weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from ddpm_lib import files, hub

ROOT = Path(__file__).resolve().parents[1]
# name -> the chapter whose full run trains and saves it
MODELS = {"mnist-vae": "01_vae", "mnist-gan": "02_gan", "mnist-ddpm": "06_training",
          "mnist-ddpm-cond": "10_guidance", "mnist-flow": "11_flow_matching",
          "mnist-edm": "13_edm", "mnist-autoencoder": "14_latent_diffusion",
          "mnist-ldm": "14_latent_diffusion", "mnist-ldm-4step": "15_distillation",
          "mnist-ldm-1step": "15_distillation"}


def publish(name: str, path, *, chapter: str, registry=files.REGISTRY, folder=files.CHECKOUT_WEIGHTS) -> dict:
    """Copy the weights file ``path`` into the repository's ``weights/`` folder as ``<name>.safetensors``
    and record its hash in the registry that ships with the library."""
    hub.load_weights(path)  # refuse to publish a file that does not load
    file = f"{name}.safetensors"
    Path(folder).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, Path(folder) / file)
    entry = {"file": file, "sha256": files.sha256_of(path), "bytes": Path(path).stat().st_size, "chapter": chapter}
    entries = hub.read_registry(registry)
    entries[name] = entry
    Path(registry).write_text(json.dumps(dict(sorted(entries.items())), indent=1) + "\n")
    hub.PUBLISHED[name] = entry
    return entry


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"models to publish (default: {', '.join(MODELS)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    folder = Path(os.environ.get("DDPM_BOOK_CHECKPOINTS", ROOT / "notebooks" / "checkpoints"))
    for name in args.names or MODELS:
        source = folder / f"{name}.safetensors"
        if not source.exists():
            if args.names:
                raise SystemExit(f"{source} does not exist: run chapter {MODELS[name]} in full first")
            print(f"{name}: no {source}, skipped")
            continue
        entry = publish(name, source, chapter=MODELS[name])
        print(f"{name}: weights/{entry['file']}, {entry['bytes'] / 2**20:.2f} MB, sha256 {entry['sha256']}")


if __name__ == "__main__":
    main()
