"""(Not in the paper.) Table 1 at 4x from a start that already reads the whole window: full-attention FT's model of
Table 1 fine-tuned 400 steps more with full attention, short attention or S2-Attn. Does training in groups keep long
context where the model no longer has to recover from the interpolation (table1_lr: the gap opens while it does)?"""

from __future__ import annotations

from .compare import (OUR_MODEL, RULE, figure, label_axes, mean, paper_value, pct, ppl_row, quick_note, reference,
                      rel, seeds_text, than, versus)
from .plan import Plan, group_of
from .runner import run_fields
from .table1 import PAPER_PPL, SETTINGS

NAME = "table1_from_full"
DESCRIPTION = ("Table 1 at 4x the base's context from full-attention FT's model of Table 1 (400 steps more with "
               "full attention, short attention or S2-Attn; not in the paper), tested with full attention and "
               "(short, S2) with their own pattern, beside the start")
ID_FIELDS = ("start", "setting")
STARTS = ("base", "full FT")  # Table 1's runs at 4x, from the base; and from full-attention FT's model of Table 1
SEED_OFFSET = 1000  # the continuation's seed (its data order): seed + 1000, so it is not the start's data again
BEYOND_THE_CAP = True  # a continuation's tokens and its start's together exceed the regime's token cap on purpose
PAPER = {"source": "LongLoRA v3 Table 1 (PAPER.md §1), its 16384 column", "setup": "the paper has no such test: "
         "Table 1 at 16384 (4x Llama2's 4096, from Llama2 7B with position interpolation, lr 2e-5) for reference.",
         "rows": [{"start": "base", "setting": s, "context": 16384, "ppl": p[1]} for s, p in PAPER_PPL.items()]}


def rows(plan: Plan, runner, seeds) -> list[dict]:
    """For each seed, Table 1's three runs at 4x (start "base"), then each of its settings trained 400 steps more from
    the final model of its full-attention run (start "full FT"), with the regime's budget and rate, seed + SEED_OFFSET
    (a fresh data order), a fresh optimizer and warmup. A continuation's run key names its start by the start's
    directory in the cache."""
    out, n = [], plan.context(4)
    for seed in seeds:
        first = {s: runner.train(plan.config(n, method="full", attention=s, seed=seed)) for s in SETTINGS}
        for start in STARTS:
            for setting in SETTINGS:
                if start == "base":
                    run = first[setting]
                else:
                    cfg = plan.config(n, method="full", attention=setting, seed=seed + SEED_OFFSET)
                    run = runner.train(cfg.replace(base=first["full"]["dir"] + "/final"))
                row = {"start": start, "setting": setting, "context": n, "seed": seed,
                       "group_size": group_of(run["config"]), **runner.ppl(run, n), **runner.last_quarter(run, n)}
                if setting != "full":
                    row["ppl_own_pattern"] = runner.ppl(run, n, "train")["ppl"]
                out.append({**row, **run_fields(run)})
    return out


def compare(result: dict) -> list[dict]:
    """Each start's rows against full attention from the same start (tested with full attention), and with their own
    pattern."""
    rows_, out = result["rows"], []
    pref = paper_value(result, start="base", setting="full")
    for start in STARTS:
        ref = reference(rows_, start=start, setting="full")
        for s in SETTINGS:
            paper = paper_value(result, start=start, setting=s) if start == "base" else None
            row = ppl_row(f"{s} from {start}", paper, pref, rows_, ref, start=start, setting=s)
            own = mean(rows_, "ppl_own_pattern", start=start, setting=s)
            out.append({**row, "ours_own": own, "ours_own_rel": rel(own, ref["ppl"])})
    return out


def plot(result: dict, rows_: list[dict]):
    """Left: every seed's sliding-window perplexity and the mean, from each start, tested with full attention (dots)
    and, for the grouped models, with their own pattern (crosses); right: the continuations' validation curves (the
    mean over seeds) and the start's last point on its own curve (the same whole-window measure)."""
    from ..plotting import color

    fig, (a, b) = figure()
    rs = result["rows"]
    for i, (start, s) in enumerate((start, s) for start in STARTS for s in SETTINGS):
        ppl = [r["ppl"] for r in rs if r["start"] == start and r["setting"] == s]
        a.scatter([i] * len(ppl), ppl, color=color(s), s=14, alpha=0.6)
        a.plot([i - 0.3, i + 0.3], [sum(ppl) / len(ppl)] * 2, color=color(s), lw=2, label=s if i < 3 else None)
        own = [r["ppl_own_pattern"] for r in rs if r["start"] == start and r["setting"] == s and "ppl_own_pattern" in r]
        a.scatter([i + 0.15] * len(own), own, color=color(s), marker="x", s=18,
                  label="tested with its own pattern" if i == 1 else None)
    a.set_xticks(range(2 * len(SETTINGS)), [f"{s}\nfrom {start}" for start in STARTS for s in SETTINGS], fontsize=7)
    label_axes(a, OUR_MODEL + quick_note(result), "", "sliding-window perplexity")
    runs = result["settings"]["runs"]
    for s in SETTINGS:
        keys = [r["run"] for r in rs if r["start"] == "full FT" and r["setting"] == s]
        pts = [[(m["step"], m["val_window_ppl"]) for m in runs[k]["curve"]] for k in keys]
        k = min(map(len, pts))
        b.plot([pts[0][j][0] for j in range(k)], [sum(p[j][1] for p in pts) / len(pts) for j in range(k)],
               marker=".", color=color(s), label=f"{s} from full FT")
    ends = [runs[r["run"]]["curve"][-1]["val_window_ppl"] for r in rs
            if r["start"] == "base" and r["setting"] == "full"]
    b.axhline(sum(ends) / len(ends), color="gray", ls="--", lw=0.8, label="the start (its last point)")
    label_axes(b, "the 400 steps from full FT's model (whole windows, full attention)", "step after the start",
               "validation perplexity")
    return fig


def verdict(result: dict, rows_: list[dict]) -> str:
    """Under the verdict rule (compare.resolve), from each start: short and S2-Attn against full attention, S2-Attn
    against short attention (tested with full attention, and each with its own pattern); and each continuation
    against the model it started from."""
    rs, parts = result["rows"], []
    for start in STARTS:
        get = {r["label"].split()[0]: r for r in rows_ if r["label"].endswith(f"from {start}")}
        s2_short, s2_short_own = (versus(rs, {"start": start, "setting": "s2"}, {"start": start, "setting": "short"},
                                         m) for m in ("ppl", "ppl_own_pattern"))
        gaps = ", ".join(f"{s} {pct(get[s]['ours_rel'])} ({than(get[s]['vs_ref'] or 'not resolved', 'full')}; last "
                         f"quarter {pct(get[s]['ours_lq_rel'])})" for s in ("short", "s2"))
        parts.append(f"from {start}: {gaps}, S2 {than(s2_short, 'short')} (each with its own pattern: "
                     f"{than(s2_short_own, 'short')}), full {get['full']['ours']:.3f}")
    start = {"start": "base", "setting": "full"}
    moved = ", ".join(f"{s} {than(versus(rs, {'start': 'full FT', 'setting': s}, start), 'it')}" for s in SETTINGS)
    paper = ", ".join(f"{s} {pct(paper_value(result, setting=s) / paper_value(result, setting='full') - 1)}"
                      for s in ("s2", "short"))
    return (f"Table 1 at 4x from two starts (not in the paper; {seeds_text(result)}; relative to full attention from "
            f"the same start, tested with full attention; {RULE}): " + "; ".join(parts)
            + f". 400 steps more from full FT's model ({mean(rs, 'ppl', **start):.3f}): {moved}. "
            f"Paper at 16384 (from Llama2 with position interpolation): {paper}.")
