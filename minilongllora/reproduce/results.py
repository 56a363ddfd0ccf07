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
    curve_gaps(result)  each setting's curve against full attention's, step by step, paired by seed (table1)
    plot_curve_gaps(result)  those gaps, one panel per context
    plot_loss_by_position(result)  loss against position in the window, per setting (table1, table1_lr)
    overview(directory) every committed result in one table: regime, seeds, verdict (notebook 17)
    rerun(result, steps, out_dir, **match)  the first steps of one of the table's runs again, live, beside the file's
"""

from __future__ import annotations

import textwrap

from .curves import curve_gaps, curves, plot_curve_gaps, plot_curves, plot_loss_by_position  # noqa: F401  (API)
from .record import RESULTS_DIR, describe, format_rows, load, window_ppl  # noqa: F401  (the notebooks' API)


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


def overview(directory=RESULTS_DIR) -> list[dict]:
    """Every table's committed result, in the order a reader meets them: its name, whether it was made in the paper's
    regime (issue 15: settings.regime recorded), past its token cap on purpose (a diagnostic), or before it, its seeds,
    when, and its verdict sentence."""
    from pathlib import Path

    from . import TABLES

    out = []
    for name in TABLES:
        if not (Path(directory) / f"{name}.json").is_file():
            out.append({"table": name, "regime": None, "seeds": None, "made": None, "verdict": "not run yet"})
            continue
        result = load(name, directory)
        regime = "paper's" if "regime" in result["settings"] else "before"
        if regime == "paper's" and getattr(TABLES[name], "BEYOND_THE_CAP", False):  # table1_budget's longer runs
            regime = "past-the-cap"
        out.append({"table": name, "regime": "no training" if name == "table11" else regime,
                    "seeds": len(result["settings"].get("seeds", [0])) if name != "table11" else None,
                    "made": result["started"][:10], "verdict": verdict(result)})
    return out


def rerun(result: dict, out_dir, steps: int = 40, base: str | None = None, **match) -> dict:
    """The first `steps` steps of one of the table's runs (the first train_config whose fields equal `match`) trained
    again into `out_dir`, its log printed: the regime's schedule is constant after warmup and the data order depends
    on the seed alone, so these are the committed run's first steps. Returns {"step", "live": its validation
    perplexity at the last step, "committed": the results file's curve at that step (None if it has no point
    there), "config"}. `base`: where the base lives, if not where the file says (a notebook runs from notebooks/)."""
    from ..train import train
    from ..trainconfig import TrainConfig

    configs = [c for c in result["settings"]["train_configs"] if all(c.get(k) == v for k, v in match.items())]
    if not configs:
        raise ValueError(f"no run of {result['name']} has {match}")
    fields = {k: v for k, v in configs[0].items() if k != "run"}
    cfg = TrainConfig.from_dict(fields).replace(out_dir=str(out_dir), steps=steps, save_every=0, eval_every=steps,
                                                **({"base": str(base)} if base else {}))
    live = train(cfg)["metrics"][-1]
    curve = {p["step"]: window_ppl(p) for p in result["settings"]["runs"][configs[0]["run"]]["curve"]}
    return {"step": steps, "live": window_ppl(live), "committed": curve.get(steps), "config": cfg}
