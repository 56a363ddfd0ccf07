"""(Not in the paper.) Table 1's three models at 4x tested with a sliding window of n/8, n/4, n/2 and with full
attention: which keys break the grouped models when they are tested with full attention?"""

from __future__ import annotations

from .compare import (OUR_MODEL, RULE, figure, label_axes, mean, paper_value, pct, ppl_row, quick_note, reference,
                      seeds_text, than, versus)
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
# the verdict: a window "rescues" a grouped model when it closes at least this share of the model's gap to
# full-attention fine-tuning (both tested with full attention)
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
    """Under the verdict rule (compare.resolve): each grouped model's best test-time window against the same model
    tested with full attention, the share of its gap to full-attention FT that window closes, and what the keys beyond
    the training group are worth to full-attention FT itself."""
    rs, n = result["rows"], max(r["window"] for r in result["rows"])
    windows = sorted({r["window"] for r in rs})
    group = next((r["group_size"] for r in rs if r.get("group_size")), None) or windows[len(windows) // 2]

    def ppl(s, w):
        return mean(rs, "ppl", setting=s, window=w)

    full = ppl("full", n)
    closed = {}

    def model(s, name):
        w = min(windows, key=lambda w: ppl(s, w))
        res = versus(rs, {"setting": s, "window": w}, {"setting": s, "window": n})
        closed[s] = (ppl(s, n) - ppl(s, w)) / (ppl(s, n) - full) if ppl(s, n) > full else None
        share = "" if closed[s] is None or w == n else f", closing {100 * closed[s]:.0f}% of its gap"
        return (f"{name} {pct(ppl(s, n) / full - 1)} tested with full attention, {pct(ppl(s, w) / full - 1)} with its "
                f"best window of {w} keys ({than(res, 'full attention')}{share})")

    parts = [model("short", "short attention"), model("s2", "S2-Attn")]
    rescued = [s for s, c in closed.items() if c is not None and c >= RESCUES]
    return (f"Table 1's models at 4x by test-time window ({seeds_text(result)}; not in the paper; against "
            f"full-attention FT tested with full attention, {RULE}): " + "; ".join(parts)
            + f"; full-attention FT itself {pct(ppl('full', group) / full - 1)} with a window of {group} keys (the "
            "training group): "
            + ("hiding the keys beyond the window rescues the grouped models, so those far keys are what breaks them "
               "under full attention." if len(rescued) == 2 else
               "hiding the far keys closes part of the grouped models' gap; the rest lies at distances their groups "
               "trained." if any(c for c in closed.values()) else
               "a window does not help the grouped models, so their gap is not at the far keys."))
