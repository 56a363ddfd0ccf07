"""Re-execute notebooks in place, with their outputs stored, and check those outputs.

    python notebooks/execute.py 03_shifted_groups.ipynb [more.ipynb ...]      # names relative to notebooks/

Runs each notebook top to bottom in a fresh kernel (nbclient, from notebooks/ as the working directory), prints how
long it took, drops stored widget state (a widget lives only in a running kernel: the cell keeps its one-line text),
and fails when a stored output holds a warning, stderr, or a local path.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
SUSPICIOUS = re.compile(r"Warning|/root/|/home/|/work/|/tmp/|site-packages")


def problems(nb) -> list[str]:
    """Stored outputs that hold stderr, a warning or a local path, as 'cell i: what'."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
            if out.get("name") == "stderr":
                found.append(f"cell {i}: stderr {text[:80]!r}")
            elif SUSPICIOUS.search(text):
                found.append(f"cell {i}: {SUSPICIOUS.search(text).group()!r} in {text[:80]!r}")
    return found


def execute(name: str) -> list[str]:
    path = HERE / name
    nb = nbformat.read(path, as_version=4)
    start = time.time()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            out.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    nbformat.write(nb, path)
    found = problems(nb)
    print(f"{name}: executed in {time.time() - start:.1f} s" + "".join(f"\n  {p}" for p in found))
    return found


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(1 if sum(len(execute(name)) for name in sys.argv[1:]) else 0)
