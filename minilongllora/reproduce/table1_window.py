"""(Not in the paper.) Table 1's three models at 4x tested with a sliding window of n/8, n/4, n/2 and with full
attention: which keys break the grouped models when they are tested with full attention?"""

from __future__ import annotations

from .compare import (OUR_MODEL, figure, label_axes, mean, paper_value, pct, ppl_row, quick_note, reference,
                      seeds_text)
from .plan import Plan, group_of
from .runner import run_fields
from .table1 import PAPER_PPL, SETTINGS

NAME = "table1_window"
DESCRIPTION = ("Table 1's models at 4x (full-attention FT, short attention, S2-Attn; full FT with PI) tested "
               "with a sliding window of n/8, n/4, n/2 tokens and with full attention (not in the paper)")
ID_FIELDS = ("setting", "window")
T1_WINDOWS = (1 / 8, 1 / 4, 1 / 2, 1)  # the sliding window as a fraction of the context; 1 is full attention
PAPER = {"source": "LongLoRA v3 Table 1 (PAPER.md §1), its 8192 column", "setup": "the paper has no "
         "such test (it tests with full attention only): Table 1 at 8192 for reference.",
         "rows": [{"setting": s, "window": 8192, "context": 8192, "ppl": p[0]} for s, p in PAPER_PPL.items()]}
# the verdict: S2-Attn within this of full attention (tested with full attention) has no failure to explain
NO_FAILURE = 0.05
# … and a window "rescues" it when S2-Attn's perplexity under the window is below the midpoint of its own and full
# attention's perplexity under full attention (it closes half of the gap or more)
RESCUES = 0.5


def rows(plan: Plan, runner, seeds) -> list[dict]:
    """Table 1's runs at 4x, each tested with attention limited to the last W keys (`patterns.PATTERNS`' "local"):
    the grouped models trained on distances below n/4 only; which distances make them fail under full attention?"""
    out, n = [], plan.context(4)
    for seed in seeds:
        for setting in SETTINGS:
            run = runner.train(plan.config(n, method="full", attention=setting, seed=seed))
            for fraction in T1_WINDOWS:
                attention = "full" if fraction == 1 else f"local {fraction:g}"
                out.append({"setting": setting, "window": int(n * fraction), "context": n, "seed": seed,
                            "group_size": group_of(run["config"]), **runner.ppl(run, n, attention),
                            **runner.last_quarter(run, n, attention), **run_fields(run)})
    return out


def compare(result: dict) -> list[dict]:
    rows_, out = result["rows"], []
    n = max(r["window"] for r in rows_)
    ref, pref = reference(rows_, setting="full", window=n), paper_value(result, setting="full")
    for s in SETTINGS:
        for w in sorted({r["window"] for r in rows_}):
            label = f"{s} tested " + ("full" if w == n else f"window {w}")
            out.append(ppl_row(label, paper_value(result, setting=s) if w == n else None, pref, rows_, ref,
                               setting=s, window=w))
    return out


def plot(result: dict, rows_: list[dict]):
    fig, (a, b) = figure()
    windows = sorted({r["window"] for r in result["rows"]})
    for s, marker in (("full", "o"), ("short", "s"), ("s2", "^")):
        for ax, metric in ((a, "ppl"), (b, "ppl_last_quarter")):
            ax.plot(windows, [mean(result["rows"], metric, setting=s, window=w) for w in windows],
                    marker=marker, label=s)
    group = next((r["group_size"] for r in result["rows"] if r.get("group_size")), None)
    for ax, title in ((a, OUR_MODEL + quick_note(result) + ": sliding-window ppl"), (b, "last quarter of each window")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(windows, [str(w) for w in windows])
        if group:  # the grouped models' training groups: no distance beyond this was trained
            ax.axvline(group, color="gray", ls=":", lw=0.8, label=f"training group ({group})")
        label_axes(ax, title, f"attention window at test time (keys; {windows[-1]} = full attention)", "perplexity",
                   log=True)
    return fig


def verdict(result: dict, rows_: list[dict]) -> str:
    rs, n = result["rows"], max(r["window"] for r in result["rows"])
    half = max(w for w in {r["window"] for r in rs} if w < n)

    def ppl(s, w, metric="ppl"):
        return mean(rs, metric, setting=s, window=w)

    gap = ppl("s2", n) / ppl("full", n) - 1  # S2-Attn's failure under full attention (Table 1's cell)
    rescued = ppl("s2", half) < RESCUES * (ppl("s2", n) + ppl("full", n))
    return (f"Table 1's models at 4x by test-time window ({seeds_text(result)}; not in the paper): S2-Attn tested with "
            f"full attention {ppl('s2', n):.2f}, with a window of {half} keys {ppl('s2', half):.2f} "
            f"({pct(ppl('s2', half) / ppl('s2', n) - 1)}; last quarter {ppl('s2', n, 'ppl_last_quarter'):.2f} → "
            f"{ppl('s2', half, 'ppl_last_quarter'):.2f}), short {ppl('short', n):.2f} → {ppl('short', half):.2f}, "
            f"full-attention FT {ppl('full', n):.2f} → {ppl('full', half):.2f}: "
            + ("S2-Attn is within 5% of full attention here, so there is no failure for a window to explain."
               if gap < NO_FAILURE else
               "hiding the keys further back than the window rescues the grouped models, so those far keys are what "
               "breaks them under full attention." if rescued else
               "a window does not rescue the grouped models, so the far keys alone do not explain their failure."))
