"""Execute chapters top to bottom in their full configuration and save them with their outputs.

    python scripts/execute_chapters.py                      # every chapter, in place
    python scripts/execute_chapters.py notebooks/06_training.ipynb notebooks/07_sampling.ipynb
    python scripts/execute_chapters.py --out executed/      # write the executed copies elsewhere

The committed outputs are what the rendered book shows, so they must come from running the
notebook exactly as committed, in its full configuration (smoke mode is switched off here).
Chapters run in the order given, each in a fresh kernel started in its own folder, so a chapter
that saves a checkpoint leaves it for the chapters after it. A cell that raises stops the run
with the error, and nothing is written for that chapter.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 5 * 2**20  # what a reader's browser should have to load for one page
# The book's CPU budget: on two CPU cores, every chapter in full within 30 minutes, all within 4 hours.
CHAPTER_BUDGET_MIN, BOOK_BUDGET_MIN = 30, 240


WIDGET = "application/vnd.jupyter.widget-view+json"


def drop_live_widgets(nb) -> None:
    """Remove widget outputs (a training run's progress bar) from cells that keep their other outputs.

    A widget needs a live kernel; the static page would show a stale bar. A cell tagged
    remove-output hides all its outputs anyway; elsewhere the printed text stays and the widget goes.
    """
    for cell in nb.cells:
        if cell.cell_type == "code" and "remove-output" not in cell.get("metadata", {}).get("tags", []):
            cell.outputs = [o for o in cell.outputs if WIDGET not in o.get("data", {})]


def execute(path: Path, out: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    drop_live_widgets(nb)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    if out.stat().st_size > MAX_BYTES:
        raise SystemExit(f"{out} is {out.stat().st_size / 2**20:.1f} MB, over the 5 MB a page may weigh")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="chapters to run (default: every chapter)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the executed copies (default: in place)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    os.environ.pop("DDPM_BOOK_SMOKE", None)  # the kernels inherit this environment: full configuration
    minutes = {}
    for path in paths:
        out = args.out / path.name if args.out else path
        print(f"{path.name}: running...", flush=True)
        try:
            seconds = execute(path, out)
        except CellExecutionError as err:
            print(f"{path.name}: a cell failed, nothing written\n{err}", file=sys.stderr)
            return 1
        minutes[path.name] = seconds / 60
        print(f"{path.name}: {seconds / 60:.1f} min, {out.stat().st_size / 2**20:.2f} MB -> {out}", flush=True)
    print(wall_time_table(minutes))
    return 0


def wall_time_table(minutes: dict) -> str:
    """Each chapter's wall time against the budget, as a Markdown table, and the total."""
    lines = ["| chapter | wall time (min) | within budget |", "|---|---:|:---:|"]
    for name, m in minutes.items():
        lines.append(f"| {name} | {m:.1f} | {'yes' if m <= CHAPTER_BUDGET_MIN else 'NO'} |")
    total = sum(minutes.values())
    lines.append(f"| **all** | **{total:.1f}** | {'yes' if total <= BOOK_BUDGET_MIN else 'NO'} |")
    return (f"\nWall time on {os.cpu_count()} CPU thread(s); budget {CHAPTER_BUDGET_MIN} min a chapter, "
            f"{BOOK_BUDGET_MIN} min in all\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
