"""(Not in the paper.) Table 1 at 4x and 8x from a start that already reads the whole window: full-attention FT's model
of Table 1 fine-tuned 400 steps more with full attention, short attention or S2-Attn. Does training in groups keep
long context where the model no longer has to recover from the interpolation (table1_lr: the gap opens while it
does)?"""

from __future__ import annotations

from .compare import (OUR_MODEL, RULE, figure, label_axes, mean, paper_value, pct, ppl_row, quick_note, reference,
                      rel, seeds_text, than, versus)
from .plan import Plan, group_of
from .runner import run_fields
from .table1 import PAPER_PPL, SETTINGS

NAME = "table1_from_full"
DESCRIPTION = ("Table 1 at 4x and 8x the base's context from full-attention FT's model of Table 1 (400 steps more "
               "with full attention, short attention or S2-Attn; not in the paper), tested with full attention and "
               "(short, S2) with their own pattern, beside Table 1's runs from the base")
ID_FIELDS = ("context", "start", "setting")
FACTORS = (4, 8)  # Table 1's contexts (x the base's) where the grouped models' gap is resolved on both splits
STARTS = ("base", "full FT")  # Table 1's runs, from the base; and from full-attention FT's model of Table 1
SEED_OFFSET = 1000  # the continuation's seed (its data order): seed + 1000, so it is not the start's data again
BEYOND_THE_CAP = True  # a continuation's tokens and its start's together exceed the regime's token cap on purpose
PAPER = {"source": "LongLoRA v3 Table 1 (PAPER.md §1), its 16384 and 32768 columns", "setup": "the paper has no such "
         "test: Table 1 at 4x and 8x Llama2's 4096 (from Llama2 7B with position interpolation, lr 2e-5) for "
         "reference.",
         "rows": [{"start": "base", "setting": s, "factor": f, "context": 4096 * f, "ppl": p[i + 1]}
                  for s, p in PAPER_PPL.items() for i, f in enumerate(FACTORS)]}


def rows(plan: Plan, runner, seeds) -> list[dict]:
    """For each context and seed, Table 1's three runs (start "base"), then each of its settings trained 400 steps more
    from the final model of its full-attention run (start "full FT"), with the regime's budget and rate, seed +
    SEED_OFFSET (a fresh data order), a fresh optimizer and warmup. A continuation's run key names its start by the
    start's directory in the cache."""
    out = []
    for n in (plan.context(f) for f in FACTORS):
        for seed in seeds:
            first = {s: runner.train(plan.config(n, method="full", attention=s, seed=seed)) for s in SETTINGS}
            for start in STARTS:
                for setting in SETTINGS:
                    if start == "base":
                        run = first[setting]
                    else:
                        cfg = plan.config(n, method="full", attention=setting, seed=seed + SEED_OFFSET)
                        run = runner.train(cfg.replace(base=first["full"]["dir"] + "/final"))
                    row = {"context": n, "start": start, "setting": setting, "seed": seed,
                           "group_size": group_of(run["config"]), **runner.ppl(run, n), **runner.last_quarter(run, n)}
                    if setting != "full":
                        row["ppl_own_pattern"] = runner.ppl(run, n, "train")["ppl"]
                    out.append({**row, **run_fields(run)})
    return out


def _factor(result: dict, n: int) -> int:
    return round(n / result["settings"]["base_context"])


def compare(result: dict) -> list[dict]:
    """Each context's and start's rows against full attention from the same start (tested with full attention), and
    with their own pattern."""
    rows_, out = result["rows"], []
    for n in sorted({r["context"] for r in rows_}):
        f = _factor(result, n)
        pref = paper_value(result, start="base", setting="full", factor=f)
        for start in STARTS:
            ref = reference(rows_, context=n, start=start, setting="full")
            for s in SETTINGS:
                paper = paper_value(result, start=start, setting=s, factor=f) if start == "base" else None
                row = ppl_row(f"{s} from {start} @ {n}", paper, pref, rows_, ref, context=n, start=start, setting=s)
                own = mean(rows_, "ppl_own_pattern", context=n, start=start, setting=s)
                out.append({**row, "ours_own": own, "ours_own_rel": rel(own, ref["ppl"])})
    return out


def plot(result: dict, rows_: list[dict]):
    """Left: the grouped models' gap to full attention from the same start, by context (from the base solid, from
    full FT's model dashed; the paper's Table 1 dotted); right: the continuations' validation curves (the mean over
    seeds; 4x solid, 8x dashed) and each start's last point on its own curve (the same whole-window measure)."""
    from ..plotting import color

    fig, (a, b) = figure()
    rs, runs = result["rows"], result["settings"]["runs"]
    contexts = sorted({r["context"] for r in rs})
    for s, marker in (("short", "s"), ("s2", "^")):
        for start, ls in zip(STARTS, ("-", "--")):
            gaps = [100 * next(r["ours_rel"] for r in rows_ if r["label"] == f"{s} from {start} @ {n}")
                    for n in contexts]
            a.plot(contexts, gaps, marker=marker, ls=ls, color=color(s), label=f"{s} from {start}")
        paper = [100 * next(r["paper_rel"] for r in rows_ if r["label"] == f"{s} from base @ {n}") for n in contexts]
        a.plot(contexts, paper, ls=":", lw=0.8, color=color(s), label=f"paper, {s} (16k / 32k)")
    a.axhline(0, color="k", lw=0.8)
    a.set_xticks(contexts, [f"{n} ({_factor(result, n)}x)" for n in contexts])
    label_axes(a, OUR_MODEL + quick_note(result), "context (tokens)", "perplexity vs full attention, same start (%)")
    for n, ls in zip(contexts, ("-", "--")):
        for s in SETTINGS:
            keys = [r["run"] for r in rs if (r["context"], r["start"], r["setting"]) == (n, "full FT", s)]
            pts = [[(m["step"], m["val_window_ppl"]) for m in runs[k]["curve"]] for k in keys]
            k = min(map(len, pts))
            b.plot([pts[0][j][0] for j in range(k)], [sum(p[j][1] for p in pts) / len(pts) for j in range(k)],
                   ls=ls, marker=".", color=color(s), label=f"{s} from full FT, {n}")
        ends = [runs[r["run"]]["curve"][-1]["val_window_ppl"] for r in rs
                if (r["context"], r["start"], r["setting"]) == (n, "base", "full")]
        b.axhline(sum(ends) / len(ends), color="gray", ls=ls, lw=0.8, label=f"the start at {n} (its last point)")
    label_axes(b, "the 400 steps from full FT's model (whole windows, full attention)", "step after the start",
               "validation perplexity", legend=6)
    return fig


def verdict(result: dict, rows_: list[dict]) -> str:
    """Under the verdict rule (compare.resolve), per context and start: short and S2-Attn against full attention,
    S2-Attn against short attention (tested with full attention, and each with its own pattern); and each
    continuation against the model it started from."""
    rs, parts, paper = result["rows"], [], []
    for n in sorted({r["context"] for r in rs}):
        for start in STARTS:
            get = {r["label"].split()[0]: r for r in rows_ if r["label"].endswith(f"from {start} @ {n}")}
            if start == "base":  # the paper's Table 1 at the same multiple of its base's context
                paper.append(f"{4096 * _factor(result, n)}: s2 {pct(get['s2']['paper_rel'])}, short "
                             f"{pct(get['short']['paper_rel'])}")
            where = {"context": n, "start": start}
            s2_short, s2_short_own = (versus(rs, {**where, "setting": "s2"}, {**where, "setting": "short"}, m)
                                      for m in ("ppl", "ppl_own_pattern"))
            gaps = ", ".join(f"{s} {pct(get[s]['ours_rel'])} ({than(get[s]['vs_ref'] or 'not resolved', 'full')}; "
                             f"last quarter {pct(get[s]['ours_lq_rel'])})" for s in ("short", "s2"))
            parts.append(f"{n} from {start}: {gaps}, S2 {than(s2_short, 'short')} (each with its own pattern: "
                         f"{than(s2_short_own, 'short')}), full {get['full']['ours']:.3f}")
        start = {"context": n, "start": "base", "setting": "full"}
        moved = ", ".join(f"{s} {than(versus(rs, {**start, 'start': 'full FT', 'setting': s}, start), 'it')}"
                          for s in SETTINGS)
        parts.append(f"{n}, 400 steps more from full FT's model ({mean(rs, 'ppl', **start):.3f}): {moved}")
    return (f"Table 1 from two starts (not in the paper; {seeds_text(result)}; relative to full attention from the "
            f"same start, tested with full attention; {RULE}): " + "; ".join(parts)
            + f". Paper (from Llama2 with position interpolation) at {'; '.join(paper)}.")
