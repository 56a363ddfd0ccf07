"""(Not in the paper.) Table 1 at 4x under learning rates from a quarter of the regime's to the base's peak (2.5e-5 ...
1e-3), short and S2-Attn also tested with their own pattern: does S2-Attn's gap to full attention depend on how far
fine-tuning moves, and does S2-Attn close short attention's gap when it moves less than the regime lets it?"""

from __future__ import annotations

from itertools import pairwise

from .compare import (
    OUR_MODEL,
    RULE,
    figure,
    mean,
    paper_value,
    pct,
    ppl_row,
    quick_note,
    reference,
    rel,
    seeds_text,
    than,
    versus,
)
from .plan import Plan, group_of
from .runner import run_fields
from .table1 import PAPER_PPL, SETTINGS

NAME = "table1_lr"
DESCRIPTION = ("Table 1 at 4x the base's context under learning rates 2.5e-5 / 5e-5 / 1e-4 / 2.5e-4 / 5e-4 / 1e-3 "
               "(not in the paper): full-attention FT vs short attention vs S2-Attn, full FT with PI, tested with full "
               "attention and (short, S2) with their own pattern")
ID_FIELDS = ("setting", "lr")
# 1e-4 is LR["full"] (the regime): table1's runs at 4x; 1e-3 is the base's peak; the paper's ratio to its base's peak
# (2e-5 / 3e-4 = 1/15, 6.7e-5 here) lies between 5e-5 and 1e-4
T1_LR = (2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3)
PAPER = {"source": "LongLoRA v3 Table 1 (PAPER.md §1), its 8192 column", "setup": "the paper has no "
         "learning-rate ablation: Table 1 at 8192 (2x Llama2's 4096; lr 2e-5 for every row) for reference.",
         "rows": [{"setting": s, "lr": 2e-5, "context": 8192, "ppl": p[0]} for s, p in PAPER_PPL.items()]}


def rows(plan: Plan, runner, seeds) -> list[dict]:
    out, n = [], plan.context(4)
    for seed in seeds:
        for lr in T1_LR:
            for setting in SETTINGS:
                run = runner.train(plan.config(n, method="full", attention=setting, seed=seed, lr=lr))
                row = {"setting": setting, "lr": lr, "context": n, "seed": seed, "group_size": group_of(run["config"]),
                       **runner.ppl(run, n), **runner.last_quarter(run, n)}
                if setting != "full":
                    row["ppl_own_pattern"] = runner.ppl(run, n, "train")["ppl"]
                    row["ppl_last_quarter_own_pattern"] = runner.last_quarter(run, n, "train")["ppl_last_quarter"]
                out.append({**row, **run_fields(run)})
    return out


def compare(result: dict) -> list[dict]:
    rows_, out = result["rows"], []
    pref = paper_value(result, setting="full")
    for lr in sorted({r["lr"] for r in rows_}):
        ref = reference(rows_, setting="full", lr=lr)
        for s in SETTINGS:
            row = ppl_row(f"{s} lr={lr:g}", paper_value(result, setting=s), pref, rows_, ref, setting=s, lr=lr)
            own = mean(rows_, "ppl_own_pattern", setting=s, lr=lr)
            out.append({**row, "ours_own": own, "ours_own_rel": rel(own, ref["ppl"])})
    return out


def plot(result: dict, rows_: list[dict]):
    """Ours against the learning rate (each row's own; the paper has no such ablation): left, short and S2-Attn
    relative to full-attention FT at the same rate, tested with full attention (solid) and with their own pattern
    (dashed), the paper's Table 1 at 8192 dotted; right, the absolute sliding-window perplexities. One colour per
    setting in both panels."""
    from ..plotting import color, log_axis
    from .compare import fonts

    fig, (a, b) = figure()
    cfg = result["settings"]["train_configs"][0]
    lrs = sorted({r["lr"] for r in result["rows"]})
    for s, marker in (("short", "s"), ("s2", "^")):
        pts = [r for r in rows_ if r["label"].startswith(s + " ")]
        a.plot(lrs, [100 * r["ours_rel"] for r in pts], marker=marker, color=color(s),
               label=f"{s}, tested with full attention")
        a.plot(lrs, [100 * r["ours_own_rel"] for r in pts], marker=marker, ls="--", color=color(s),
               label=f"{s}, tested with its own pattern")
        paper = next(r["paper_rel"] for r in rows_ if r["label"].startswith(s + " "))
        a.axhline(100 * paper, color=color(s), lw=0.8, ls=":", label=f"paper, {s} @ 8192 ({100 * paper:+.1f}%)")
    a.set_ylabel("perplexity vs full FT at the same rate (%)")
    a.set_title(OUR_MODEL + quick_note(result))
    for s, marker in (("full", "o"), ("short", "s"), ("s2", "^")):
        pts = [r for r in rows_ if r["label"].startswith(s + " ")]
        b.plot(lrs, [r["ours"] for r in pts], marker=marker, color=color(s), label=s)
    b.set_ylabel("sliding-window perplexity, full attention")
    b.set_title("ours: absolute perplexity")
    for ax in (a, b):
        log_axis(ax, "x", ticks=lrs)
        ax.set_xlabel(f"learning rate of the row ({cfg['steps']} steps, constant after {cfg['warmup_steps']} warmup)")
        ax.legend(fontsize=7)
    return fonts(fig)


def verdict(result: dict, rows_: list[dict]) -> str:
    """Under the verdict rule (compare.resolve), at each learning rate: short and S2-Attn against full-attention FT at
    the same rate, and S2-Attn against short attention (tested with full attention, and each with its own pattern);
    then whether S2-Attn's gap grows with the rate."""
    rs, parts = result["rows"], []
    lrs = sorted({r["lr"] for r in rs})
    for lr in lrs:
        get = {r["label"].split()[0]: r for r in rows_ if r["label"].endswith(f"lr={lr:g}")}
        s2_short, s2_short_own = (versus(rs, {"setting": "s2", "lr": lr}, {"setting": "short", "lr": lr}, m)
                                  for m in ("ppl", "ppl_own_pattern"))
        vs = {s: than(get[s]["vs_ref"] or "not resolved", "full") for s in ("short", "s2")}
        parts.append(f"lr {lr:g}: S2 {pct(get['s2']['ours_rel'])} ({vs['s2']}"
                     f"; own pattern {pct(get['s2']['ours_own_rel'])}), short {pct(get['short']['ours_rel'])} "
                     f"({vs['short']}), S2 {than(s2_short, 'short')} (each with its own pattern: "
                     f"{than(s2_short_own, 'short')}), "
                     f"full FT ppl {get['full']['ours']:.2f}")
    gap = {lr: next(r["ours_rel"] for r in rows_ if r["label"] == f"s2 lr={lr:g}") for lr in lrs}
    # the lowest rate from which the gap grows at every step of the rate, to the highest
    k = min(i for i in range(len(lrs)) if all(gap[a] < gap[b] for a, b in pairwise(lrs[i:])))
    above = ", ".join(f"{pct(gap[lr])} at {lr:g}" for lr in lrs[k + 1:])
    if k == len(lrs) - 1:
        trend = (f"S2-Attn's gap does not grow with the rate (between {pct(min(gap.values()))} and "
                 f"{pct(max(gap.values()))})")
    elif k == 0:
        trend = f"S2-Attn's gap grows with the rate ({pct(gap[lrs[0]])} at {lrs[0]:g}, {above})"
    else:
        low = [gap[lr] for lr in lrs[:k + 1]]
        trend = (f"S2-Attn's gap stays between {pct(min(low))} and {pct(max(low))} from {lrs[0]:g} to {lrs[k]:g} "
                 f"and grows with the rate above ({above})")
    return (f"Table 1 at 4x by learning rate (not in the paper; {seeds_text(result)}; relative to full-attention FT at "
            f"the same rate, tested with full attention; {RULE}): " + "; ".join(parts)
            + f". {trend}; paper at 8192: S2 +0.2%, short +3.4%.")
