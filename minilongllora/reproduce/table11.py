"""Table 11: the FLOPs of Llama-2-7B by kind at 8192 … 65536 tokens, full attention vs S2-Attn (from the shapes,
`flops.py`: seconds, no training)."""

from __future__ import annotations

from .compare import figure
from .plan import Plan

NAME = "table11"
DESCRIPTION = ("Table 11: TFLOPs of Llama-2-7B by kind at 8192 / 16384 / 32768 / 65536 tokens, full attention vs "
               "S2-Attn (from the shapes)")
ID_FIELDS = ("context",)
T11_CONTEXTS = (8192, 16384, 32768, 65536)
PAPER = {"source": "LongLoRA v3 Table 11 (PAPER.md §1)", "setup": "Llama2-7B, batch 1, prefill, TFLOPs by "
         "kind (Attn, Proj, FFN, Others), full attention vs S2-Attn, 8192 / 16384 / 32768 / 65536 tokens, "
         "measured with torchprofile.",
         "note": "PAPER.md deliberately does not copy Table 11's numbers (derive them from the shapes); the "
                 "8192 row below is the one tests/test_flops.py checks as printed in the paper.",
         "rows": [{"context": 8192, "s2": False, "attn": 35.2, "proj": 35.2, "ffn": 70.9, "others": 2.2,
                   "total": 143.5},
                  {"context": 8192, "s2": True, "attn": 8.8, "proj": 35.2, "ffn": 70.9, "others": 2.2,
                   "total": 117.1}]}
# the paper's measured cost of training Llama-2-7B, 1000 iterations on 8×A100 (App. B.5): (hours, peak GB) per context;
# None where the paper prints OOM. Table 12 trains with Flash-Attention2; Table 13 without it, both with LoRA+.
PAPER_TABLE12 = {  # "full_ft": full fine-tuning; "lora": full attention; "longlora": S2-Attn + LoRA+
    "full_ft": {8192: (7.4, 46.3), 16384: (16.3, 57.4), 32768: (39.8, 68.8), 65536: None},
    "lora": {8192: (6.0, 25.7), 16384: (14.0, 34.7), 32768: (36.5, 46.5), 65536: (92.5, 71.1)},
    "longlora": {8192: (5.2, 25.6), 16384: (11.3, 34.6), 32768: (24.6, 46.4), 65536: (52.4, 69.8)},
}
PAPER_TABLE13 = {"full": {8192: (17.5, 55.5), 16384: None}, "s2": {8192: (8.2, 30.3), 16384: (20.8, 57.1)}}


def speedups(rows: list[dict]) -> dict[int, dict]:
    """Per context: the speed-up of S2-Attn that the FLOPs predict (total_full / total_s2 of `flops_breakdown` rows;
    training ≈ 3 × forward for every term, so the factor cancels) beside the paper's measured hours, LoRA / LongLoRA
    (Table 12) and full / S2 without Flash-Attention2 (Table 13); None where the paper has no number."""
    out = {}
    for r in rows:
        n = r["context"]
        lora, longlora = PAPER_TABLE12["lora"].get(n), PAPER_TABLE12["longlora"].get(n)
        full, s2 = PAPER_TABLE13["full"].get(n), PAPER_TABLE13["s2"].get(n)
        out[n] = {"predicted": r["total_full"] / r["total_s2"],
                  "table12": lora[0] / longlora[0] if lora and longlora else None,
                  "table13": full[0] / s2[0] if full and s2 else None}
    return out


def rows(plan: Plan, runner, seeds) -> list[dict]:
    from ..config import LlamaConfig
    from ..flops import flops_breakdown

    config = LlamaConfig.from_preset("llama2-7b")
    return [{"preset": "llama2-7b", **flops_breakdown(config, n), "unit": "TFLOPs"} for n in T11_CONTEXTS]


def compare(result: dict) -> list[dict]:
    out = []
    for r in result["rows"]:
        for s2 in (False, True):
            kind = "s2" if s2 else "full"
            p = next((q for q in result["paper"]["rows"] if q["context"] == r["context"] and q["s2"] == s2), None)
            out.append({"label": f"{r['context']} {'S2-Attn' if s2 else 'full'}", "attn": r[f"attn_{kind}"],
                        "proj": r["proj"], "ffn": r["ffn"], "others": r["others"], "total": r[f"total_{kind}"],
                        "paper_total": p["total"] if p else None})
    return out


def plot(result: dict, rows_: list[dict]):
    """Left: each context and attention's TFLOPs by kind, side by side on a log axis (every kind visible, even
    `others` at 1-2% of the total). Right: the paper's printed totals beside ours."""
    from ..plotting import color, log_axis
    from .compare import fonts

    fig, (a, b) = figure()
    kinds, width = ("attn", "proj", "ffn", "others"), 0.2
    for k, kind in enumerate(kinds):
        a.bar([x + (k - 1.5) * width for x in range(len(rows_))], [r[kind] for r in rows_], width=width,
              color=color(kind), label=kind)
    a.set_xticks(range(len(rows_)), [r["label"] for r in rows_], rotation=35, ha="right")
    log_axis(a, "y", ticks=(1, 3, 10, 30, 100, 300, 1000, 3000))
    a.set_ylabel("TFLOPs (forward, batch 1)")
    a.set_title("ours: Llama-2-7B's shapes, by kind")
    a.legend(fontsize=8, ncols=4, loc="upper left")
    paired = [(r["label"], r["paper_total"], r["total"]) for r in rows_ if r["paper_total"] is not None]
    xs = range(len(paired))
    for dx, j, who, colour in ((-0.2, 1, "paper", color("paper")), (0.2, 2, "ours", "tab:gray")):
        b.bar([x + dx for x in xs], [p[j] for p in paired], width=0.4, color=colour, label=who)
        for x, p in zip(xs, paired):
            b.annotate(f"{p[j]:.1f}", (x + dx, p[j]), ha="center", va="bottom", fontsize=7)
    b.set_xticks(list(xs), [p[0] for p in paired])
    b.set_ylabel("total TFLOPs (forward, batch 1)")
    b.set_title("the paper's printed row (8192) beside ours")
    b.legend(fontsize=8, loc="lower right")
    return fonts(fig)


def verdict(result: dict, rows_: list[dict]) -> str:
    row = next(r for r in rows_ if r["label"] == "8192 full")
    s2 = next(r for r in rows_ if r["label"] == "8192 S2-Attn")
    return (f"Table 11: at 8192 tokens ours {row['total']:.1f} / {s2['total']:.1f} TFLOPs (full / S2-Attn), the "
            f"paper {row['paper_total']} / {s2['paper_total']}.")
