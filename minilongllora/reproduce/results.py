"""Reading the reproductions: ours beside the paper's numbers, a plot and a sentence per table (notebooks 08-15).

`reproduce` writes one JSON per table (`notebooks/results/NAME.json`); this module only reads them, each table's
comparison, plot and verdict coming from its own module (table1.py, …, figure5.py).

    load(name)          the results dict of `reproduce(name)` (raises with the command that makes it, if missing)
    compare(result)     rows: the row's label, the paper's ppl and rel, ours (mean over seeds) and rel
    format_rows(rows)   a fixed-width text table of `compare`'s rows
    plot(result)        a matplotlib Figure: the paper's panel and ours, side by side, in the same layout
    verdict(result)     one sentence with the numbers: does the table's finding show at this scale?
    describe(result)    what was run: command, budget, wall time, commit, machine
    curves(result)      {run label: [(step, validation perplexity)]}: every run's recovery during fine-tuning
    plot_curves(result) those curves on one axis
    plot_loss_by_position(result)  loss against position in the window, per setting (table1, table1_lr)
"""

from __future__ import annotations

import textwrap

from .curves import curves, plot_curves, plot_loss_by_position  # noqa: F401  (the notebooks' API)
from .record import RESULTS_DIR, describe, format_rows, load  # noqa: F401  (the notebooks' API)


def _table(result: dict):
    from . import TABLES

    if result["name"] not in TABLES:
        raise ValueError(f"unknown table {result['name']!r}")
    return TABLES[result["name"]]


def compare(result: dict) -> list[dict]:
    """The table's rows, ours beside the paper's: label, paper, paper_rel, ours, ours_rel, ours_lq, ours_lq_rel
    (ppl tables), or the table's own columns (table11: TFLOPs; figure4: accuracy; figure5: validation ppl by step)."""
    return _table(result).compare(result)


def plot(result: dict):
    """The paper's numbers (left) and ours (right) in the same layout; returns a matplotlib Figure."""
    fig = _table(result).plot(result, compare(result))
    fig.suptitle(textwrap.fill(result["description"], 140), fontsize=9)
    fig.tight_layout()
    return fig


def verdict(result: dict) -> str:
    """One sentence: the table's finding in the paper, and whether ours shows it (numbers, not adjectives)."""
    name, rows = result["name"], compare(result)
    if result.get("quick"):
        return f"{name}: quick run (2 steps), the numbers mean nothing; the committed full result is {name}.json."
    return _table(result).verdict(result, rows)
