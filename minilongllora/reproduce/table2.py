"""Table 2: full fine-tuning vs LoRA r = 8, 16, 32, 64 vs LoRA r=8 + norm / + embed / + norm & embed (LoRA+), S2-Attn,
at 8x the base's context (the paper's 32k of Llama 2's 4k).

Not in the paper: LoRA r=8 alone and LoRA+ also at ten times the regime's learning rate (`lora_lr10`,
`lora+norm+embed_lr10`), the usual LoRA practice, to test whether LoRA lags full fine-tuning for want of learning
rate (the regime gives every method the paper's one rate); and the diagnostic of attention (`without_s2`): LoRA+ at
1, 2.5, 5 and 10 times the regime's rate, each trained with S2-Attn and with full attention, and full FT with full
attention at 1 and 10 times it: is LoRA+'s gap LoRA's or S2-Attn's?"""

from __future__ import annotations

from .compare import (OUR_MODEL, PAPER_MODEL, RULE, bars, figure, fonts, label_axes, on_test, paired_bars,
                      paper_value, pct, ppl_row, quick_note, reference, rel_sd, seeds_text, than, versus)
from .plan import LR, Plan
from .record import window_ppl
from .runner import run_fields

NAME = "table2"
DESCRIPTION = ("Table 2: full FT vs LoRA r = 8, 16, 32, 64 vs LoRA r=8 + norm / + embed / + norm & embed, S2-Attn, "
               "at 8x the base's context")
ID_FIELDS = ("setting", "rank")
FULL_ATTN = "_full_attn"  # the suffix of the settings trained with full attention (every other trains with S2-Attn)
LORA_PLUS_RATES = (1, 2.5, 5, 10)  # the diagnostic of attention: LoRA+'s rates, as multiples of the regime's


def lora_plus(times: float) -> str:
    """LoRA+'s setting at `times` the regime's learning rate (trained with S2-Attn)."""
    return "lora+norm+embed" if times == 1 else f"lora+norm+embed_lr{times:g}"


T2_SETTINGS = (("full", None, dict(method="full")),
               *(("lora", r, dict(method="lora", rank=r)) for r in (8, 16, 32, 64)),
               ("lora+norm", 8, dict(method="lora_plus", train_embed=False, train_norm=True)),
               ("lora+embed", 8, dict(method="lora_plus", train_embed=True, train_norm=False)),
               ("lora+norm+embed", 8, dict(method="lora_plus")),
               ("lora_lr10", 8, dict(method="lora", rank=8, lr=10 * LR["lora"])),  # the diagnostic, not in the paper
               ("lora+norm+embed_lr10", 8, dict(method="lora_plus", lr=10 * LR["lora_plus"])),
               # the diagnostic of attention (not in the paper, `without_s2`): LoRA+ at the rates between, and full FT
               # and LoRA+ at each rate trained with full attention instead of S2-Attn
               *((lora_plus(t), 8, dict(method="lora_plus", lr=t * LR["lora_plus"])) for t in (2.5, 5)),
               *((s + FULL_ATTN, r, dict(kw, attention="full")) for s, r, kw in (
                   ("full", None, dict(method="full")),  # Table 1's 8x full-attention run
                   ("full_lr10", None, dict(method="full", lr=10 * LR["full"])),
                   *((lora_plus(t), 8, dict(method="lora_plus", lr=t * LR["lora_plus"])) for t in LORA_PLUS_RATES))))
# the settings only the diagnostic of attention reads (Table 2's own rows and its lr10 rows are `compare`'s)
WITHOUT_S2_ONLY = {s for s, _, _ in T2_SETTINGS if s.endswith(FULL_ATTN)} | {lora_plus(2.5), lora_plus(5)}
PAPER = {"source": "LongLoRA v3 Table 2 (PAPER.md §1)", "setup": "Llama2 7B with S2-Attn, target 32768, "
         "RedPajama, PG19 validation perplexity.",
         "rows": [{"setting": "full", "rank": None, "ppl": 8.08}]
         + [{"setting": "lora", "rank": r, "ppl": p} for r, p in
            ((8, 11.44), (16, 11.82), (32, 11.92), (64, 11.96), (128, 11.97), (256, 11.98))]
         + [{"setting": "lora+norm", "rank": 8, "ppl": 10.49}, {"setting": "lora+embed", "rank": 8, "ppl": 8.29},
            {"setting": "lora+norm+embed", "rank": 8, "ppl": 8.12}]}
# the verdict: LoRA+ "closes most of the gap" when it is resolved below LoRA alone (r = 8) and its gap to full FT is
# under half of LoRA alone's (the paper: +0.5% against +42%)
CLOSES_THE_GAP = 0.5

# the paper's Fig. 2(c), "Parameter shares for Llama 7B" with LoRA+, as printed (its rounding is the precision)
PAPER_FIG2C = {"trainable Norm": "0.004%", "trainable Embedding": "1.94%", "frozen Head": "1.94%",
               "trainable LoRA": "0.12%", "frozen linear projections": "96%"}

def rows(plan: Plan, runner, seeds) -> list[dict]:
    out, n = [], plan.context(8)
    for seed in seeds:
        for setting, rank, kw in T2_SETTINGS:
            cfg = plan.config(n, seed=seed, **{"attention": "s2", **kw})
            run = runner.train(cfg)
            out.append({"setting": setting, "rank": rank, "context": n, "seed": seed, "method": cfg.method,
                        "attention": cfg.attention, "lr": cfg.lr, "trainable_params": runner.trainable(cfg),
                        **runner.ppl(run, n), **runner.last_quarter(run, n), **runner.test_split(run, n),
                        **run_fields(run)})
    return out


def compare(result: dict) -> list[dict]:
    rows_ = result["rows"]
    ref, pref = reference(rows_, setting="full"), paper_value(result, setting="full")
    out = []
    for s, rank in dict.fromkeys((r["setting"], r["rank"]) for r in rows_ if r["setting"] not in WITHOUT_S2_ONLY):
        label = s if rank is None or s == "full" else f"{s} r={rank}"
        out.append(ppl_row(label, paper_value(result, setting=s, rank=rank), pref, rows_, ref, setting=s, rank=rank))
    return out


# ------------------------------------------------------------------------------------------------------- plotting
# the rows' colours: plotting.SETTING_COLORS where it names the setting; the two single additions have none there
T2_COLORS = {"full": "full_ft", "lora": "lora", "lora+norm+embed": "lora_plus", "lora+norm": "lora_plus_norm",
             "lora+embed": "lora_plus_embed"}
T2_OTHER_COLORS = {"lora_lr10": "dimgray", "lora+norm+embed_lr10": "darkgreen"}


def plot(result: dict, rows_: list[dict]):
    """The paper's perplexity against full FT (left); ours (right), the sliding-window perplexity (the verdict's
    metric), with the first three quarters of the window hatched beside it."""
    from ..plotting import color

    fig, (a, b) = figure()
    labels = [r["label"] for r in rows_]
    settings = [r["label"].split()[0] for r in rows_]
    colors = [color(T2_COLORS[s]) if s in T2_COLORS else T2_OTHER_COLORS[s] for s in settings]
    bars(a, labels, [r["paper_rel"] for r in rows_], PAPER_MODEL, "perplexity vs full FT (%)", colors)
    paired_bars(b, labels, [r["ours_rel"] for r in rows_], [r["ours_3q_rel"] for r in rows_], colors,
                ("sliding window, stride 256 (the verdict)", "first three quarters of the window"),
                [rel_sd(r) for r in rows_])
    b.set_title(OUR_MODEL + quick_note(result))
    b.set_ylabel("perplexity vs full FT (%)")
    return fonts(fig)


def verdict(result: dict, rows_: list[dict]) -> str:
    """Under the verdict rule (compare.resolve), sliding-window perplexity: LoRA alone (each rank) against full FT,
    rank 64 against rank 8, LoRA + norm & embed against full FT and against LoRA alone, + embed against + norm."""
    rows, get = result["rows"], {r["label"]: r for r in rows_}
    full, r8, plus = {"setting": "full"}, {"setting": "lora", "rank": 8}, {"setting": "lora+norm+embed", "rank": 8}
    ranks = [r["label"] for r in rows_ if r["label"].startswith("lora r=")]
    lora = {k: versus(rows, {"setting": "lora", "rank": int(k.split("=")[1])}, full) for k in ranks}
    ours, paper = ({k: get[k][f] for k in get} for f in ("ours_rel", "paper_rel"))
    both, alone = "lora+norm+embed r=8", "lora r=8"
    plus_vs_lora = versus(rows, plus, r8)
    closed = 1 - ours[both] / ours[alone] if ours[alone] else None
    top, top_rank = ranks[-1].split()[1], int(ranks[-1].split("=")[1])
    embed_vs_norm = versus(rows, {"setting": "lora+embed", "rank": 8}, {"setting": "lora+norm", "rank": 8})
    return (f"Table 2 ({seeds_text(result)}; {RULE}): paper, LoRA alone {pct(min(paper[k] for k in ranks))}…"
            f"{pct(max(paper[k] for k in ranks))} from full FT whatever the rank, + norm "
            f"{pct(paper['lora+norm r=8'])}, + embed {pct(paper['lora+embed r=8'])}, + norm & embed "
            f"{pct(paper[both])}; ours, LoRA alone "
            + ", ".join(f"{k.split()[1]} {pct(ours[k])} ({than(lora[k], 'full FT')})" for k in ranks)
            + f" ({top} against r=8: {versus(rows, {'setting': 'lora', 'rank': top_rank}, r8)}), + norm "
            f"{pct(ours['lora+norm r=8'])}, + embed {pct(ours['lora+embed r=8'])} (against + norm: {embed_vs_norm}), "
            f"+ norm & embed {pct(ours[both])} (against full FT: {versus(rows, plus, full)}; against LoRA alone r=8: "
            f"{plus_vs_lora}"
            + (f", {100 * closed:.0f}% of LoRA alone's gap closed" if closed is not None else "") + "): "
            + ("trainable embedding and norms close most of LoRA's gap, as in the paper."
               if plus_vs_lora == "lower" and closed is not None and closed > 1 - CLOSES_THE_GAP else
               "trainable embedding and norms help, but most of LoRA's gap remains, unlike the paper."
               if plus_vs_lora == "lower" else
               "trainable embedding and norms do not help that we can resolve, unlike the paper.")
            + _at_lr10(rows, get) + _without_s2(rows, result) + " " + on_test(rows_))


def _at_lr10(rows: list[dict], get: dict) -> str:
    """The diagnostic rows (not in the paper), when the file has them: LoRA alone and LoRA+ at ten times the lr, over
    the whole window and split into its first three quarters and its last quarter, against the regime's rate."""
    if "lora_lr10 r=8" not in get:
        return ""
    alone, plus = ({"setting": s, "rank": 8} for s in ("lora_lr10", "lora+norm+embed_lr10"))
    full = {"setting": "full"}
    a10, p10, a, p = (get[k] for k in ("lora_lr10 r=8", "lora+norm+embed_lr10 r=8", "lora r=8",
                                       "lora+norm+embed r=8"))
    return (f" At ten times the learning rate (not in the paper): LoRA alone r=8 {pct(a10['ours_rel'])} "
            f"(against full FT: {versus(rows, alone, full)}), + norm & embed {pct(p10['ours_rel'])} "
            f"(against full FT: {versus(rows, plus, full)}; against LoRA alone at that rate: "
            f"{versus(rows, plus, alone)}); on the first three quarters of the window they are at "
            f"{pct(a10['ours_3q_rel'])} and {pct(p10['ours_3q_rel'])} (at the regime's rate {pct(a['ours_3q_rel'])} "
            f"and {pct(p['ours_3q_rel'])}), on the last quarter at {pct(a10['ours_lq_rel'])} and "
            f"{pct(p10['ours_lq_rel'])} ({pct(a['ours_lq_rel'])} and {pct(p['ours_lq_rel'])})"
            + (": at the higher rate LoRA adapts where the context is short and breaks where it is long."
               if a10["ours_3q_rel"] < a["ours_3q_rel"] and a10["ours_lq_rel"] > a["ours_lq_rel"] else ".")
            )


# ------------------------------------------------------------------------------- the diagnostic of attention
# each method at each rate (a multiple of the regime's), trained with S2-Attn (no suffix) and with full attention
# (FULL_ATTN); full FT at ten times the rate has no S2-Attn run (table1_lr: grouped training breaks at that rate)
DESIGN = (("full FT", {1: "full", 10: "full_lr10"}), ("LoRA+", {t: lora_plus(t) for t in LORA_PLUS_RATES}))
ATTENTIONS = (("S2-Attn", ""), ("full attention", FULL_ATTN))


def without_s2(result: dict) -> list[dict]:
    """(Not in the paper.) Full FT and LoRA+ at each rate of DESIGN, trained with S2-Attn and with full attention, each
    against full FT trained with full attention at the regime's rate (Table 1's reference at 8x): `ppl_row`s with
    `method`, `times` (the rate as a multiple of the regime's), `attention` and `setting`; [] for a file made before
    these rows."""
    rows_ = result["rows"]
    if not any(r["setting"].endswith(FULL_ATTN) for r in rows_):
        return []
    ref = reference(rows_, setting="full" + FULL_ATTN)
    return [{**ppl_row(f"{method}{'' if t == 1 else f', lr x{t:g}'}, {attention}", None, None, rows_, ref,
                       setting=name + suffix),
             "method": method, "times": t, "attention": attention, "setting": name + suffix}
            for method, names in DESIGN for t, name in names.items() for attention, suffix in ATTENTIONS
            if any(r["setting"] == name + suffix for r in rows_)]


def plot_without_s2(result: dict):
    """Left: perplexity against the learning rate (a multiple of the regime's), full FT and LoRA+, each trained with
    S2-Attn and with full attention (± one sd over seeds); right: the loss by position in the window (16 bins, mean
    over seeds) of LoRA+ with S2-Attn at each rate above the regime's, with full attention at ten times it, and of full
    FT with full attention at the regime's rate; and far right, the same runs' validation curves during fine-tuning."""
    from ..plotting import color

    rows_, cmp = result["rows"], without_s2(result)
    if not cmp:
        raise ValueError(f"{result['name']}: no row trained with full attention (a file made before them)")
    fig, (a, b, d) = figure(ncols=3, width=16.0, height=4.4)
    hues = {"S2-Attn": color("s2"), "full attention": color("full")}
    for method, _ in DESIGN:
        for attention, _ in ATTENTIONS:
            line = [c for c in cmp if (c["method"], c["attention"]) == (method, attention)]
            if line:
                a.errorbar([c["times"] for c in line], [c["ours"] for c in line], [c["ours_sd"] or 0 for c in line],
                           marker="o" if method == "LoRA+" else "s", ls="-" if method == "LoRA+" else "--",
                           color=hues[attention], capsize=3, label=f"{method}, {attention}")
    a.set_xscale("log")
    a.set_xticks(LORA_PLUS_RATES, [f"{t:g}x" for t in LORA_PLUS_RATES])
    a.minorticks_off()
    label_axes(a, "trained with S2-Attn or with full attention" + quick_note(result),
               f"learning rate (multiple of the regime's {LR['lora_plus']:g})",
               "sliding-window perplexity (full attention)", log=True)
    n, runs = rows_[0]["context"], result["settings"]["runs"]
    shades = {2.5: "#9ecae1", 5: "#4292c6", 10: "#08306b"}
    for name, label, style in (("full" + FULL_ATTN, "full FT, full attention", dict(color="gray", ls="--")),
                               *((lora_plus(t), f"LoRA+, lr x{t:g}, S2-Attn", dict(color=shade))
                                 for t, shade in shades.items()),
                               (lora_plus(10) + FULL_ATTN, "LoRA+, lr x10, full attention", dict(color=color("full")))):
        members = [r for r in rows_ if r["setting"] == name and r.get("loss_bins")]
        if not members:
            continue
        k = len(members[0]["loss_bins"])
        b.plot([(j + 0.5) / k for j in range(k)], [sum(m["loss_bins"][j] for m in members) / len(members)
                                                   for j in range(k)], marker=".", label=label, **style)
        curve = [runs[m["run"]]["curve"] for m in members]  # every seed's validation curve, the mean by step
        d.plot([pt["step"] for pt in curve[0]], [sum(window_ppl(cv[j]) for cv in curve) / len(curve)
                                                 for j in range(len(curve[0]))], marker=".", label=label, **style)
    label_axes(b, "loss by position in the window", f"position in the window (fraction of {n} tokens)",
               "next-token loss (nats)")
    label_axes(d, "during fine-tuning", "fine-tuning step", "validation perplexity (whole windows, full attention)",
               log=True)
    fig.tight_layout()
    return fonts(fig)


def _without_s2(rows: list[dict], result: dict) -> str:
    """The diagnostic of attention in words, when the file has it: LoRA+ at each rate with S2-Attn against with full
    attention; each attention's best rate, chosen on validation, against full FT with full attention."""
    cmp = {c["setting"]: c for c in without_s2(result)}
    if not cmp:
        return ""
    f, f10 = "full" + FULL_ATTN, "full_lr10" + FULL_ATTN
    rates = [t for t in LORA_PLUS_RATES if lora_plus(t) in cmp and lora_plus(t) + FULL_ATTN in cmp]
    best = {att: min((lora_plus(t) + suffix for t in rates), key=lambda s: cmp[s]["ours"]) for att, suffix in
            ATTENTIONS}
    s2, full = best["S2-Attn"], best["full attention"]

    def vs(a: str, b: str) -> str:
        return versus(rows, {"setting": a}, {"setting": b})

    def at(s: str) -> str:
        return f"{cmp[s]['ours']:.2f}"

    def s2_against(s: str) -> str:
        res = vs(s, s + FULL_ATTN)
        return res if res == "not resolved" else f"S2-Attn {res}"

    def rate(s: str) -> str:
        return f"{cmp[s]['times']:g}x"

    regime, s2_costs = "full FT at the regime's rate", vs(s2, full) == "higher"
    return (f" Trained with full attention instead of S2-Attn (not in the paper; full FT with full attention "
            f"{at(f)} at the regime's rate, {at(f10)} at ten times it), LoRA+ with S2-Attn / with full attention at "
            + ", ".join(f"{t:g}x the rate {at(lora_plus(t))} / {at(lora_plus(t) + FULL_ATTN)} "
                        f"({s2_against(lora_plus(t))})" for t in rates)
            + f"; chosen on validation, its best rate is {rate(full)} with full attention ({at(full)}, "
            f"{pct(cmp[full]['ours_rel'])}: {than(vs(full, f), regime)}; against full FT at ten times the rate "
            f"{pct(cmp[full]['ours'] / cmp[f10]['ours'] - 1)}: {vs(full, f10)}) and {rate(s2)} with S2-Attn "
            f"({at(s2)}, {pct(cmp[s2]['ours_rel'])}: {than(vs(s2, full), 'LoRA+ with full attention at its best')}; "
            f"test split {pct(cmp[s2]['ours_test_rel'])} against {pct(cmp[full]['ours_test_rel'])})"
            + (": with full attention LoRA+ trains at LoRA's usual rate, with S2-Attn none of these rates brings it "
               "there." if s2_costs and vs(full, f) != "higher" else
               ": S2-Attn costs LoRA+ at its best rate." if s2_costs else "."))
