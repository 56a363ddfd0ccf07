"""Table 8: S2-Attn variants roll (Algorithm 1), roll_up (Var 1), split (Var 2), swap (Var 3), and full attention,
full fine-tuning at 2x (the paper's 8k)."""

from __future__ import annotations

from .compare import RULE, on_test, paper_value, pct, ppl_row, reference, relative_bars, seeds_text, than, versus
from .plan import Plan
from .runner import run_fields

NAME = "table8"
DESCRIPTION = ("Table 8: S2-Attn variants roll (Algorithm 1), roll_up (Var 1), split (Var 2), swap (Var 3) and full "
               "attention, full FT at 2x")
ID_FIELDS = ("variant",)
T8_VARIANTS = (("full", "full attention"), ("roll", "Ours (Algorithm 1)"), ("roll_up", "Var 1 (shift up)"),
               ("split", "Var 2 (individual groups for the shifted tokens)"), ("swap", "Var 3 (swap)"))
PAPER = {"source": "LongLoRA v3 Table 8 (PAPER.md §1)", "setup": "Llama2 7B at 8192, PG19 validation "
         "perplexity. Ours = Algorithm 1 (roll), Var 1 = shift up (roll_up), Var 2 = individual groups for the "
         "shifted tokens (split), Var 3 = swap.",
         "rows": [{"variant": v, "ppl": p} for v, p in
                  (("full", 8.02), ("roll", 8.04), ("roll_up", 8.04), ("split", 8.03), ("swap", 8.05))]}


def rows(plan: Plan, runner, seeds) -> list[dict]:
    out, n = [], plan.context(2)
    for seed in seeds:
        for variant, name in T8_VARIANTS:
            cfg = plan.config(n, method="full", attention="full" if variant == "full" else "s2",
                              variant="split" if variant == "full" else variant, seed=seed)
            run = runner.train(cfg)
            out.append({"variant": variant, "paper_name": name, "context": n, "seed": seed, **runner.ppl(run, n),
                        **runner.last_quarter(run, n), **runner.test_split(run, n), **run_fields(run)})
    return out


def compare(result: dict) -> list[dict]:
    rows_ = result["rows"]
    ref, pref = reference(rows_, variant="full"), paper_value(result, variant="full")
    return [ppl_row(v, paper_value(result, variant=v), pref, rows_, ref, variant=v)
            for v in dict.fromkeys(r["variant"] for r in rows_)]


def plot(result: dict, rows_: list[dict]):
    """The paper's perplexity against full attention (left) and ours, sliding-window (right), each variant in its
    colour."""
    from ..plotting import color
    from .compare import fonts

    fig = relative_bars(result, rows_, "full attention", [color(r["label"]) for r in rows_])
    fig.axes[1].set_ylabel("sliding-window perplexity vs full attention (%)")
    return fonts(fig)


def verdict(result: dict, rows_: list[dict]) -> str:
    """Under the verdict rule (compare.resolve): each variant against full attention, and the worst variant against
    the best (the paper: all four within 0.4% of full attention and 0.2% of each other)."""
    rows = result["rows"]
    variants = [r for r in rows_ if r["label"] != "full"]
    vs_full = {r["label"]: versus(rows, {"variant": r["label"]}, {"variant": "full"}) for r in variants}
    best, worst = (f(variants, key=lambda r: r["ours_rel"])["label"] for f in (min, max))
    between = versus(rows, {"variant": worst}, {"variant": best})
    above = sum(v == "higher" for v in vs_full.values())
    return (f"Table 8 ({seeds_text(result)}; {RULE}): paper, the four variants are within 0.4% of full attention "
            "and 0.2% of each other; ours, against full attention, "
            + ", ".join(f"{r['label']} {pct(r['ours_rel'])} ({than(vs_full[r['label']], 'full')})" for r in variants)
            + f"; the worst ({worst}) against the best ({best}): {between}, so "
            + ("as in the paper, the way of shifting makes no difference we can resolve"
               if between == "not resolved" else "unlike the paper, the way of shifting matters")
            + (f", and {above} of {len(variants)} variants cost more than full attention."
               if above else ", and none costs more than full attention that we can resolve.") + " " + on_test(rows_))
