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
    fig, (a, b) = figure()
    labels = [r["label"] for r in rows_]
    bottom = [0.0] * len(rows_)
    for kind in ("attn", "proj", "ffn", "others"):
        a.bar(range(len(rows_)), [r[kind] for r in rows_], bottom=bottom, label=kind)
        bottom = [x + r[kind] for x, r in zip(bottom, rows_)]
    a.set_xticks(range(len(rows_)), labels, rotation=35, ha="right", fontsize=8)
    a.set_ylabel("TFLOPs (forward, batch 1)")
    a.set_yscale("log")
    a.set_title("ours: Llama-2-7B's shapes, by kind", fontsize=9)
    a.legend(fontsize=8)
    paired = [(r["label"], r["paper_total"], r["total"]) for r in rows_ if r["paper_total"] is not None]
    xs = range(len(paired))
    b.bar([x - 0.2 for x in xs], [p[1] for p in paired], width=0.4, label="paper")
    b.bar([x + 0.2 for x in xs], [p[2] for p in paired], width=0.4, label="ours")
    b.set_xticks(list(xs), [p[0] for p in paired], fontsize=8)
    b.set_ylabel("total TFLOPs")
    b.set_title("the paper's printed row (8192) beside ours", fontsize=9)
    b.legend(fontsize=8)
    return fig


def verdict(result: dict, rows_: list[dict]) -> str:
    row = next(r for r in rows_ if r["label"] == "8192 full")
    s2 = next(r for r in rows_ if r["label"] == "8192 S2-Attn")
    return (f"Table 11: at 8192 tokens ours {row['total']:.1f} / {s2['total']:.1f} TFLOPs (full / S2-Attn), the "
            f"paper {row['paper_total']} / {s2['paper_total']}.")
