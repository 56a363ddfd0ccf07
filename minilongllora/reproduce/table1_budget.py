"""(Not in the paper.) Table 1 at 4x, full-attention FT and S2-Attn, with the regime's budget and with twice it (800
steps: 9.5% of the base's pretraining tokens, past the regime's 5% cap): does S2-Attn's gap shrink once
full-attention fine-tuning has flattened, as it does at 2x within the budget?"""

from __future__ import annotations

import dataclasses

from .compare import (OUR_MODEL, RULE, figure, label_axes, mean, paper_value, pct, ppl_row, quick_note, reference,
                      resolve, seeds_text, than, versus)
from .plan import Plan, group_of
from .runner import run_fields
from .table1 import PAPER_PPL

NAME = "table1_budget"
DESCRIPTION = ("Table 1 at 4x the base's context with the regime's 400 steps and with twice them (not in the paper; "
               "past the 5% token cap): full-attention FT vs S2-Attn, full FT with PI, tested with full attention")
ID_FIELDS = ("setting", "steps")
T1_BUDGETS = (1, 2)  # the budget as a multiple of the regime's steps; 1 is table1's runs at 4x
T1_BUDGET_SETTINGS = ("full", "s2")
BEYOND_THE_CAP = True  # its longer runs exceed the regime's token cap on purpose (a diagnostic)
PAPER = {"source": "LongLoRA v3 Table 1 (PAPER.md §1), its 8192 column", "setup": "the paper has no budget "
         "ablation: Table 1 at 8192 (its 1000 steps) for reference.",
         "rows": [{"setting": s, "steps": 1000, "context": 8192, "ppl": PAPER_PPL[s][0]} for s in T1_BUDGET_SETTINGS]}


def rows(plan: Plan, runner, seeds) -> list[dict]:
    """Each seed's full-attention FT and S2-Attn run at 4x with each budget; the curve is recorded every
    `plan.curve_every` steps in both, so the two budgets' curves share their first points."""
    out, n = [], plan.context(4)
    for seed in seeds:
        for budget in T1_BUDGETS:
            p = dataclasses.replace(plan, steps=budget * plan.steps)
            for setting in T1_BUDGET_SETTINGS:
                run = runner.train(p.config(n, method="full", attention=setting, seed=seed))
                out.append({"setting": setting, "steps": p.steps, "context": n, "seed": seed,
                            "group_size": group_of(run["config"]), **runner.ppl(run, n), **runner.last_quarter(run, n),
                            **runner.test_split(run, n), **run_fields(run)})
    return out


def compare(result: dict) -> list[dict]:
    rows_, out = result["rows"], []
    pref = paper_value(result, setting="full")
    for steps in sorted({r["steps"] for r in rows_}):
        ref = reference(rows_, setting="full", steps=steps)
        for s in T1_BUDGET_SETTINGS:
            out.append(ppl_row(f"{s} {steps} steps", paper_value(result, setting=s), pref, rows_, ref, setting=s,
                               steps=steps))
    return out


def _gaps(rows_: list[dict], steps: int) -> list[float]:
    """S2-Attn's gap to full-attention FT of the same seed, per seed, at one budget."""
    full = {r["seed"]: r["ppl"] for r in rows_ if r["setting"] == "full" and r["steps"] == steps}
    return [r["ppl"] / full[r["seed"]] - 1 for r in rows_ if r["setting"] == "s2" and r["steps"] == steps]


def plot(result: dict, rows_: list[dict]):
    """Left: S2-Attn's gap to full-attention FT by budget (each seed and the mean); right: the absolute
    sliding-window perplexities."""
    from ..plotting import color

    fig, (a, b) = figure()
    budgets = sorted({r["steps"] for r in result["rows"]})
    gaps = [_gaps(result["rows"], s) for s in budgets]
    for s, g in zip(budgets, gaps):
        a.scatter([s] * len(g), [100 * x for x in g], color=color("s2"), alpha=0.5, s=14)
    a.plot(budgets, [100 * sum(g) / len(g) for g in gaps], marker="^", color=color("s2"), label="S2-Attn (mean)")
    a.axhline(0, color="k", lw=0.8)
    label_axes(a, OUR_MODEL + quick_note(result), "fine-tuning steps", "S2-Attn vs full FT, same seed (%)")
    for s, marker in (("full", "o"), ("s2", "^")):
        b.plot(budgets, [mean(result["rows"], "ppl", setting=s, steps=x) for x in budgets], marker=marker,
               color=color(s), label=s)
    label_axes(b, "ours: absolute perplexity", "fine-tuning steps", "sliding-window perplexity, full attention")
    for ax in (a, b):
        ax.set_xticks(budgets)
    return fig


def verdict(result: dict, rows_: list[dict]) -> str:
    """Under the verdict rule (compare.resolve): S2-Attn against full-attention FT at each budget, full FT's gain
    from the longer budget, and S2-Attn's per-seed gap at the longer budget against the shorter one."""
    rs = result["rows"]
    short, long = min(r["steps"] for r in rs), max(r["steps"] for r in rs)
    parts = []
    for steps in (short, long):
        gap, vs = _gaps(rs, steps), versus(rs, {"setting": "s2", "steps": steps}, {"setting": "full", "steps": steps})
        parts.append(f"at {steps} steps S2-Attn {pct(sum(gap) / len(gap))} ({than(vs, 'full FT')}; full FT "
                     f"{mean(rs, 'ppl', setting='full', steps=steps):.3f})")
    full_gain = versus(rs, {"setting": "full", "steps": long}, {"setting": "full", "steps": short})
    shrinks = resolve(_gaps(rs, long), _gaps(rs, short))
    outcome = {"lower": "S2-Attn's gap shrinks with the longer budget",
               "higher": "S2-Attn's gap grows with the longer budget",
               "not resolved": "the longer budget does not resolve a change in S2-Attn's gap"}[shrinks]
    return (f"Table 1 at 4x by budget (not in the paper; past the regime's token cap; {seeds_text(result)}; {RULE}): "
            + "; ".join(parts) + f"; full FT at {long} steps {than(full_gain, f'at {short}')}: {outcome}"
            f" (the paper at 8192, 1000 steps: S2-Attn {pct(PAPER_PPL['s2'][0] / PAPER_PPL['full'][0] - 1)}).")
