"""Table 6: the attention patterns of the ablation (S2 across heads / layers, only P1, only P2, dilated, block sparse,
stride sparse), LoRA+ at 8x (the paper's 32k), each tested with its own pattern and with full attention."""

from __future__ import annotations

from .compare import (OUR_MODEL, PAPER_MODEL, RULE, figure, on_test, paper_value, pct, ppl_row, quick_note,
                      reference, seeds_text, versus)
from .plan import Plan
from .runner import run_fields

NAME = "table6"
DESCRIPTION = ("Table 6: attention patterns (S2 across heads / layers, only P1, only P2, dilated, block sparse, "
               "stride sparse), LoRA+ at 8x, each tested with its own pattern and with full attention")
ID_FIELDS = ("pattern", "test_full_attention")
T6_PATTERNS = ("s2", "s2_layers", "short", "shift_all", "dilated", "block_sparse", "stride_sparse")
T6_NAMES = {"s2": "S2 cross heads", "s2_layers": "S2 cross layers", "short": "S2 only P1", "shift_all": "S2 only P2",
            "dilated": "dilated cross heads", "block_sparse": "block sparse cross heads",
            "stride_sparse": "stride sparse cross heads"}
PAPER = {"source": "LongLoRA v3 Table 6 (PAPER.md §1)", "setup": "Llama2 7B fine-tuned to 32768 with LoRA+ "
         "(\"improved LoRA\"); PG19 validation perplexity; tested with the training pattern (false) or full "
         "attention (true).",
         "rows": [{"pattern": p, "test_full_attention": full, "ppl": v}
                  for full, values in ((False, (8.64, 8.63, 9.17, 9.64, 8.75, 11.49, 32.81)),
                                       (True, (8.12, 9.70, 8.39, 9.81, 11.78, 8.30, 24.03)))
                  for p, v in zip(T6_PATTERNS, values)]}


def rows(plan: Plan, runner, seeds) -> list[dict]:
    out, n = [], plan.context(8)
    for seed in seeds:
        for pattern in T6_PATTERNS:
            run = runner.train(plan.config(n, method="lora_plus", attention=pattern, seed=seed))
            for full in (False, True):
                attention = "full" if full else "train"
                out.append({"pattern": pattern, "paper_name": T6_NAMES[pattern], "test_full_attention": full,
                            "context": n, "seed": seed, **runner.ppl(run, n, attention),
                            **runner.last_quarter(run, n, attention), **runner.test_split(run, n, attention),
                            **run_fields(run)})
    return out


def compare(result: dict) -> list[dict]:
    rows_, out = result["rows"], []
    for full in (False, True):
        ref = reference(rows_, pattern="s2", test_full_attention=True)
        pref = paper_value(result, pattern="s2", test_full_attention=True)
        for p in dict.fromkeys(r["pattern"] for r in rows_):
            label = f"{p} tested {'full' if full else 'own'}"
            out.append(ppl_row(label, paper_value(result, pattern=p, test_full_attention=full), pref, rows_, ref,
                               pattern=p, test_full_attention=full))
    return out


def plot(result: dict, rows_: list[dict]):
    """Per pattern, in its colour: tested with full attention (solid: the verdict's) and with its own pattern
    (hatched), relative to S2-Attn tested with full attention; the paper (left) and ours (right), sliding-window
    perplexity."""
    from ..plotting import color
    from .compare import fonts, paired_bars, rel_sd

    get = {r["label"]: r for r in rows_}
    patterns = list(dict.fromkeys(r["label"].split()[0] for r in rows_))
    colors = [color(p) for p in patterns]
    names = ("tested with full attention", "tested with its own pattern")
    fig, axes = figure()
    for ax, key, title in ((axes[0], "paper_rel", PAPER_MODEL), (axes[1], "ours_rel", OUR_MODEL + quick_note(result))):
        paired_bars(ax, patterns, [get[f"{p} tested full"][key] for p in patterns],
                    [get[f"{p} tested own"][key] for p in patterns], colors, names,
                    [rel_sd(get[f"{p} tested full"]) for p in patterns] if key == "ours_rel" else None)
        ax.set_title(title)
        ax.set_ylabel("perplexity vs S2 tested full (%)")
    axes[1].set_ylabel("sliding-window ppl vs S2 tested full (%)")
    return fonts(fig)


def verdict(result: dict, rows_: list[dict]) -> str:
    """Under the verdict rule (compare.resolve), tested with full attention: every other pattern against S2-Attn (the
    paper: S2-Attn beats them all); and S2-Attn tested with its own pattern against itself tested with full
    attention."""
    rows, get = result["rows"], {r["label"]: r for r in rows_}
    full = {"test_full_attention": True}
    others = [r["label"].split()[0] for r in rows_
              if r["label"].endswith("tested full") and r["label"] != "s2 tested full"]
    res = {p: versus(rows, {"pattern": p, **full}, {"pattern": "s2", **full}) for p in others}
    paper = {p: get[f"{p} tested full"]["paper_rel"] for p in others}
    p_best = min(paper, key=paper.get)
    by = {k: [p for p in others if res[p] == k] for k in ("lower", "not resolved", "higher")}
    own = versus(rows, {"pattern": "s2", "test_full_attention": False}, {"pattern": "s2", **full})

    def listed(ps):
        return ", ".join(f"{p} {pct(get[f'{p} tested full']['ours_rel'])}" for p in ps) or "none"
    return (f"Table 6 ({seeds_text(result)}; {RULE}): tested with full attention, the paper's S2-Attn beats every "
            f"other pattern (next best {p_best}, {pct(paper[p_best])}); ours, against S2-Attn, lower (better): "
            f"{listed(by['lower'])}; not resolved: {listed(by['not resolved'])}; higher: {listed(by['higher'])}"
            + (", unlike the paper" if by["lower"] else ", as in the paper" if not by["not resolved"] else
               ", as in the paper where resolved" if by["higher"] else ": not resolved")
            + f"; S2-Attn tested with its own pattern is {pct(get['s2 tested own']['ours_rel'])} from itself tested "
            f"with full attention ({own}; paper {pct(get['s2 tested own']['paper_rel'])}). " + on_test(rows_))
