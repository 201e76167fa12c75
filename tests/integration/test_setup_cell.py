"""The chapters' first cell, run for real where a reader runs it: a Python without ddpm_lib.

Colab and a fresh local Jupyter have PyTorch, matplotlib and Jupyter itself, but not ddpm_lib. This
test builds such an environment (a new virtual environment that sees every package of the current
one except ddpm_lib), runs chapter 3 in smoke mode there with nbval, and lets its set-up cell
install the library from this repository through a ``git+file://`` URL in place of the GitHub one.
pip installs what is committed in the checkout, so commit before running it.
"""

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAPTER = ROOT / "notebooks" / "03_forward_process.ipynb"
REPO_URL = re.search(r'^Homepage = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def without_ddpm_lib(site_packages: Path, view: Path) -> None:
    """A folder that shows every entry of ``site_packages`` but the installed ddpm_lib, as links."""
    view.mkdir()
    for entry in site_packages.iterdir():
        if not entry.name.lower().startswith(("ddpm_lib", "__editable__")):
            (view / entry.name).symlink_to(entry)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout to install from")
def test_the_setup_cell_installs_ddpm_lib_and_the_chapter_runs(tmp_path):
    env_dir = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    fresh_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     check=True, capture_output=True, text=True).stdout.strip())
    without_ddpm_lib(Path(sysconfig.get_paths()["purelib"]), tmp_path / "preinstalled")
    (fresh_site / "preinstalled.pth").write_text(str(tmp_path / "preinstalled") + "\n")
    probe = "import importlib.util, torch; print(importlib.util.find_spec('ddpm_lib'))"
    found = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert found.returncode == 0 and found.stdout.strip() == "None", found.stderr  # torch yes, ddpm_lib no

    nb = json.loads(CHAPTER.read_text())
    setup = next(c for c in nb["cells"] if c["cell_type"] == "code")
    source = "".join(setup["source"])
    assert f"git+{REPO_URL}" in source
    # file://localhost/...: the pip that a fresh venv bundles rejects a PEP 508 file URL without
    # a host ("name[extra] @ git+file:///path"); the GitHub URL of the real cell has one.
    setup["source"] = source.replace(f"git+{REPO_URL}", f"git+file://localhost{ROOT.as_posix()}")
    chapter = tmp_path / CHAPTER.name
    chapter.write_text(json.dumps(nb))

    env = {**os.environ, "DDPM_BOOK_SMOKE": "1", "MPLBACKEND": "Agg", "PYTHONNOUSERSITE": "1"}
    run = subprocess.run([str(python), "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                          "-q", str(chapter)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    installed = subprocess.run([str(python), "-m", "pip", "show", "ddpm_lib"], capture_output=True, text=True)
    assert installed.returncode == 0 and str(fresh_site) in installed.stdout  # installed by the set-up cell
