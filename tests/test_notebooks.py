"""Static checks of the chapters: the Colab set-up cell, the metadata, and the committed outputs.

Executing the notebooks is nbval's job (`make notebooks`); these checks read the files only.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO_URL = re.search(r'^Homepage = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)

# The one set-up cell every chapter starts with; the repository URL comes from pyproject.toml.
SETUP_CELL = f'''# Set-up for Colab or any machine where ddpm_lib is missing: install the book's library from its
# repository. Colab already has PyTorch, which is kept as it is.
import importlib, importlib.util, subprocess, sys

if importlib.util.find_spec("ddpm_lib") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                    "ddpm_lib[book] @ git+{REPO_URL}"],
                   check=True)
    importlib.invalidate_caches()'''


def load(path):
    return json.loads(path.read_text())


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_ddpm_lib_without_touching_torch(path):
    first = "".join(code_cells(load(path))[0]["source"])
    assert first == SETUP_CELL
    assert "torch" not in first.split("import")[-1]  # never (re)installs PyTorch


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_metadata_asks_colab_for_a_gpu_and_names_the_kernel(path):
    meta = load(path)["metadata"]
    assert meta.get("accelerator") == "GPU"
    assert meta.get("colab", {}).get("gpuType")
    assert meta["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_complete_clean_and_from_a_full_run(path):
    nb = load(path)
    cells = code_cells(nb)
    counts = [c["execution_count"] for c in cells]
    assert None not in counts, "every code cell is executed"
    assert counts == sorted(counts), "cells ran top to bottom"
    outputs = [o for c in cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = "".join("".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream")
    assert "mode: full" in text and "smoke" not in text.lower(), "committed outputs come from the full configuration"
    assert re.search(r"This chapter ran in \d+ min \d+ s on ", text), "the chapter reports its device and wall time"
    assert path.stat().st_size < 5 * 2**20


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_visible_code_fits_the_page(path):
    # The rendered page shows about 100 characters of code before it scrolls sideways; code behind
    # hide-input (plumbing) is exempt, as the reader sees it only on request.
    hidden = {"hide-input", "remove-input", "remove-cell"}
    long = [line for cell in code_cells(load(path)) if not hidden & set(cell.get("metadata", {}).get("tags", []))
            for line in "".join(cell["source"]).splitlines() if len(line) > 100]
    assert not long, f"{len(long)} visible code lines over 100 characters, the first: {long[0]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_widget_cells_have_a_static_fallback(path):
    # A widget needs a live kernel; in the static book its output is removed, and the chapter
    # follows it with a figure or an animation.
    for cell in code_cells(load(path)):
        shows_widget = any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in cell.get("outputs", []))
        if shows_widget:
            assert "remove-output" in cell.get("metadata", {}).get("tags", []), "".join(cell["source"])[:80]


def test_config_points_at_the_same_repository():
    config = (ROOT / "_config.yml").read_text()
    assert f"url: {REPO_URL}" in config
    assert "colab_url" in config
