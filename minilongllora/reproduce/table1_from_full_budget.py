"""(Not in the paper.) table1_from_full's 8x continuations with the regime's 400 steps and with twice them: does
training in groups break a model that already reads the window, given the 800 steps that break it from the base
(table1_budget)? If it does, the break is a matter of how long the model trains in groups, not of the recovery from
the interpolation that table1_from_full blamed."""

from __future__ import annotations

import dataclasses

from .compare import (OUR_MODEL, RULE, figure, label_axes, mean, pct, ppl_row, quick_note, reference, rel,
                      resolve, seeds_text, than, versus)
from .plan import Plan, group_of
from .runner import run_fields
from .table1 import PAPER_PPL, SETTINGS
from . import table1_budget
from .table1_budget import DISTANCE_DOCUMENTS, HIDDEN, T1_BUDGETS
from .table1_from_full import SEED_OFFSET

NAME = "table1_from_full_budget"
DESCRIPTION = ("table1_from_full at 8x the base's context with the regime's 400 steps and with twice them (not in the "
               "paper; past the 5% token cap): full-attention FT, short attention and S2-Attn trained on from Table "
               "1's full-attention model, tested with full attention and (short, S2) with their own pattern")
ID_FIELDS = ("steps", "setting")
FACTOR = 8  # where the 800 grouped steps from the base break (table1_budget)
GROUPED = ("short", "s2")
BEYOND_THE_CAP = True  # a continuation of 800 steps and its start together use 14% of the base's pretraining tokens
PAPER = {"source": "LongLoRA v3 Table 1 (PAPER.md §1), its 32768 column (8x Llama 2's 4096)",
         "setup": "the paper has no such test: Table 1 at 8x (from Llama2 7B with position interpolation, lr 2e-5, "
                  "1000 steps) for reference.",
         "rows": [{"setting": s, "factor": FACTOR, "context": 4096 * FACTOR, "ppl": p[2]}
                  for s, p in PAPER_PPL.items()]}


def rows(plan: Plan, runner, seeds) -> list[dict]:
    """For each seed, Table 1's full-attention run at 8x (the start: `steps` 0, the steps after it), then each setting
    trained on from its final model with each budget of T1_BUDGETS (seed + SEED_OFFSET, a fresh optimizer and warmup:
    the 400-step runs are table1_from_full's), tested with full attention (validation and test split) and, grouped,
    with their own pattern; every model's far reading per head (`sinks.far_reading`: the keys beyond n/2)."""
    n, out = plan.context(FACTOR), []
    for seed in seeds:
        start = runner.train(plan.config(n, method="full", attention="full", seed=seed))
        runs = [(0, "full", start)]
        for budget in T1_BUDGETS:
            p = dataclasses.replace(plan, steps=budget * plan.steps)
            for setting in SETTINGS:
                cfg = p.config(n, method="full", attention=setting, seed=seed + SEED_OFFSET)
                runs.append((p.steps, setting, runner.train(cfg.replace(base=start["dir"] + "/final"))))
        for steps, setting, run in runs:
            row = {"context": n, "steps": steps, "setting": setting, "seed": seed,
                   "group_size": group_of(run["config"]), **runner.ppl(run, n), **runner.last_quarter(run, n),
                   **runner.test_split(run, n),
                   "far_reading": runner.far_reading(run, n, DISTANCE_DOCUMENTS, HIDDEN)}
            if setting != "full":
                row["ppl_own_pattern"] = runner.ppl(run, n, "train")["ppl"]
            out.append({**row, **run_fields(run)})
    return out


def compare(result: dict) -> list[dict]:
    """Each budget's short and S2-Attn continuations against full attention's of the same budget (tested with full
    attention), and with their own pattern; the start against the 400-step full-attention continuation."""
    rows_, out = result["rows"], []
    for steps in sorted({r["steps"] for r in rows_} - {0}):
        ref = reference(rows_, steps=steps, setting="full")
        for s in SETTINGS:
            row = ppl_row(f"{s} {steps} steps", None, None, rows_, ref, steps=steps, setting=s)
            own = mean(rows_, "ppl_own_pattern", steps=steps, setting=s)
            out.append({**row, "ours_own": own, "ours_own_rel": rel(own, ref["ppl"])})
    first = min(r["steps"] for r in rows_ if r["steps"])
    out.append(ppl_row("start (Table 1's full FT)", None, None, rows_, reference(rows_, steps=first, setting="full"),
                       steps=0, setting="full"))
    return out


def _gaps(rows_: list[dict], steps: int, setting: str, metric: str = "ppl") -> list[float]:
    """Each seed's gap to full attention's continuation of the same seed and length (table1_budget's rule)."""
    return table1_budget._gaps(rows_, steps, rows_[0]["context"], setting, metric)


def _curve(result: dict, steps: int, setting: str) -> list[tuple[int, float]]:
    """The mean over seeds of the whole-window validation curve (train's `val_window_ppl`) of a setting's runs."""
    runs = result["settings"]["runs"]
    pts = [[(m["step"], m["val_window_ppl"]) for m in runs[r["run"]]["curve"]] for r in result["rows"]
           if (r["steps"], r["setting"]) == (steps, setting)]
    k = min(map(len, pts))
    return [(pts[0][j][0], sum(p[j][1] for p in pts) / len(pts)) for j in range(k)]


def plot(result: dict, rows_: list[dict]):
    """Left: short and S2-Attn against full attention by budget (all tokens solid, the window's last quarter dashed);
    right: the longer budget's validation curves (whole windows, the mean over seeds) and the start's last point."""
    from ..plotting import color

    fig, (a, b) = figure()
    rs = result["rows"]
    budgets = sorted({r["steps"] for r in rs} - {0})
    for s, marker in (("short", "s"), ("s2", "^")):
        for metric, ls, what in (("ppl", "-", "all tokens"), ("ppl_last_quarter", "--", "last quarter")):
            gaps = [100 * sum(g) / len(g) for g in (_gaps(rs, x, s, metric) for x in budgets)]
            a.plot(budgets, gaps, marker=marker, ls=ls, color=color(s), label=f"{s}, {what}")
    a.axhline(0, color="k", lw=0.8)
    a.set_xticks(budgets)
    label_axes(a, OUR_MODEL + quick_note(result), "steps after Table 1's full FT (8x)",
               "perplexity vs full attention, same steps (%)")
    for s in SETTINGS:
        pts = _curve(result, budgets[-1], s)
        b.plot([x for x, _ in pts], [y for _, y in pts], marker=".", color=color(s), label=s)
    ends = [result["settings"]["runs"][r["run"]]["curve"][-1]["val_window_ppl"] for r in rs if r["steps"] == 0]
    b.axhline(sum(ends) / len(ends), color="gray", ls="--", lw=0.8, label="the start (its last point)")
    label_axes(b, f"the {budgets[-1]} steps from full FT's model (whole windows, full attention)",
               "step after the start", "validation perplexity", legend=7)
    return fig


def verdict(result: dict, rows_: list[dict]) -> str:
    """Under the verdict rule (compare.resolve): at each budget short and S2-Attn against full attention (all tokens
    and the last quarter), S2-Attn against short; each setting's per-seed gap at the longer budget against the
    shorter; each longer run against its shorter one; and where each grouped curve is lowest."""
    rs, parts = result["rows"], []
    budgets = sorted({r["steps"] for r in rs} - {0})
    for steps in budgets:
        get = {c["label"].split()[0]: c for c in rows_ if c["label"].endswith(f" {steps} steps")}
        at = {"steps": steps}
        gaps = ", ".join(f"{s} {pct(get[s]['ours_rel'])} ({than(get[s]['vs_ref'] or 'not resolved', 'full')}; "
                         f"last quarter {pct(get[s]['ours_lq_rel'])})" for s in GROUPED)
        s2_short = versus(rs, {**at, "setting": "s2"}, {**at, "setting": "short"})
        parts.append(f"{steps} steps: {gaps}, S2 {than(s2_short, 'short')}, full {get['full']['ours']:.3f}")
    short, long = budgets[0], budgets[-1]
    change = [f"{s} " + than(resolve(_gaps(rs, long, s), _gaps(rs, short, s)), f"at {short}") + " (last quarter "
              + than(resolve(_gaps(rs, long, s, "ppl_last_quarter"), _gaps(rs, short, s, "ppl_last_quarter")),
                     f"at {short}") + ")" for s in GROUPED]
    moved = ", ".join(f"{s} " + than(versus(rs, {"steps": long, "setting": s}, {"steps": short, "setting": s}),
                                      f"at {short}") for s in SETTINGS)
    lowest = []
    for s in SETTINGS:
        pts = _curve(result, long, s)
        step, low = min(pts, key=lambda p: p[1])
        lowest.append(f"{s} at step {step} ({low:.3f}; last {pts[-1][1]:.3f})")
    start = mean(rs, "ppl", steps=0)
    return (f"Table 1's settings at {rs[0]['context']} tokens ({FACTOR}x) trained on from its full-attention model "
            f"(not in the paper; past the regime's token cap; {seeds_text(result)}; relative to full attention's "
            f"continuation of the same length, tested with full attention; {RULE}; the start {start:.3f}): "
            + "; ".join(parts) + f". Each seed's gap at {long} steps against at {short}: " + ", ".join(change)
            + f"; each model at {long} steps against its {short}-step run: {moved}. The mean whole-window curve of "
            f"the {long}-step runs is lowest: " + ", ".join(lowest) + ".")


def plot_far_reading(result: dict, heads: int = 4):
    """The share of attention on keys more than n/2 back (`sinks.far_reading`, over every query that has such keys,
    mean of the seeds) in the `heads` heads where S2-Attn's longest continuation puts most more than full attention's
    of the same length, for the start and each setting at each budget: do the heads that break from the base
    (table1_budget: layer 1's heads 2 and 3) read far again when grouped training goes on from a model that reads the
    window?"""
    import torch

    from ..plotting import color
    from .table1_budget import far_reading

    reading = far_reading(result)  # {(setting, steps): {"mass": layers x heads, ...}}
    long = max(steps for _, steps in reading)
    more = torch.tensor(reading[("s2", long)]["mass"]) - torch.tensor(reading[("full", long)]["mass"])
    top = [divmod(i, more.shape[1]) for i in more.flatten().argsort(descending=True)[:heads].tolist()]
    bars = [("start (full FT)", reading[("full", 0)]["mass"], "gray", None)]
    bars += [(f"{s} {steps}", reading[(s, steps)]["mass"], color(s), None if steps == long else "//")
             for s in SETTINGS for steps in sorted({k[1] for k in reading} - {0}) if (s, steps) in reading]
    fig, (a,) = figure(ncols=1, width=8.0)
    width = 0.8 / len(bars)
    for i, (label, m, c, pattern) in enumerate(bars):
        a.bar([j + (i - len(bars) / 2 + 0.5) * width for j in range(len(top))],
              [100 * m[layer][head] for layer, head in top], width, color="white" if pattern else c, edgecolor=c,
              hatch=pattern, label=label)
    a.set_xticks(range(len(top)), [f"layer {layer}\nhead {head}" for layer, head in top], fontsize=8)
    label_axes(a, f"n = {result['rows'][0]['context']}: attention on keys more than n/2 back" + quick_note(result),
               f"the heads where S2-Attn at {long} steps reads most beyond full attention", "attention there (%)",
               legend=7)
    return fig
