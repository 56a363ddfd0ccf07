"""Reading the reproductions: ours beside the paper's numbers, a plot and a sentence per table (notebooks 08-15).

`reproduce.py` writes one JSON per table (`notebooks/results/NAME.json`); this module only reads them. Absolute
perplexities cannot be compared (the paper: Llama2 7B, 32k-token vocabulary, PG19 books; ours: a 3.4M-parameter
byte-level model on Python sources), so every table is also given *relative* to its reference row (full-attention
fine-tuning, or S2-Attn across heads in Table 6): `rel = ppl / ppl_reference - 1`, the quantity the paper's
conclusions are about ("S2-Attn is within 0.3% of full attention", "short attention is 3-18% worse").

    load(name)          the results dict of `reproduce(name)` (raises with the command that makes it, if missing)
    compare(result)     rows: the row's label, the paper's ppl and rel, ours (mean over seeds) and rel
    format_rows(rows)   a fixed-width text table of `compare`'s rows
    plot(result)        a matplotlib Figure: the paper's panel and ours, side by side, in the same layout
    verdict(result)     one sentence with the numbers: does the table's finding show at this scale?
    curves(result)      {run label: [(step, validation perplexity)]}: every run's recovery during fine-tuning
    plot_curves(result) those curves on one axis
    plot_loss_by_position(result)  loss against position in the window, per setting (table1, table1_lr)
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

RESULTS_DIR = "notebooks/results"
PAPER_MODEL = "paper: Llama2 7B, PG19"
OUR_MODEL = "ours: tiny byte-level LLaMA, pystdlib"


def load(name: str, directory: str | Path = RESULTS_DIR, quick: bool = False) -> dict:
    """The results file of table `name` (NAME.json, or NAME.quick.json with quick=True) in `directory`."""
    path = Path(directory) / (f"{name}.quick.json" if quick else f"{name}.json")
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path}: make them with `python -m minilongllora reproduce {name}"
                                f"{' --quick' if quick else ''} --out {directory}`")
    return json.loads(path.read_text())


def _mean(rows: list[dict], metric: str = "ppl", **match) -> float | None:
    """Mean of `metric` over the rows (seeds) whose fields equal `match`; None when no row matches."""
    values = [r[metric] for r in rows if all(r.get(k) == v for k, v in match.items())
              and isinstance(r.get(metric), (int, float))]
    return sum(values) / len(values) if values else None


def _rel(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference - 1


def _seeds(result: dict) -> int:
    return len(result["settings"].get("seeds", [0]))


# ------------------------------------------------------------------------------------------------------ compare
def _first3q(rows: list[dict], **match) -> float | None:
    """Perplexity over the first three quarters of the window (tokens 0 … 3n/4, from `loss_quarters`)."""
    losses = [sum(r["loss_quarters"][:3]) / 3 for r in rows if all(r.get(k) == v for k, v in match.items())
              and r.get("loss_quarters")]
    return math.exp(sum(losses) / len(losses)) if losses else None


def _ppl_row(label: str, paper: float | None, paper_ref: float | None, ours_rows: list[dict], ours_ref: dict,
             **match) -> dict:
    ours, ours_lq = _mean(ours_rows, "ppl", **match), _mean(ours_rows, "ppl_last_quarter", **match)
    ours_3q = _first3q(ours_rows, **match)
    return {"label": label, "paper": paper, "paper_rel": _rel(paper, paper_ref), "ours": ours,
            "ours_rel": _rel(ours, ours_ref["ppl"]), "ours_lq": ours_lq, "ours_lq_rel": _rel(ours_lq, ours_ref["lq"]),
            "ours_3q": ours_3q, "ours_3q_rel": _rel(ours_3q, ours_ref["3q"])}


def _ref(rows: list[dict], **match) -> dict:
    return {"ppl": _mean(rows, "ppl", **match), "lq": _mean(rows, "ppl_last_quarter", **match),
            "3q": _first3q(rows, **match)}


def _paper(result: dict, metric: str = "ppl", **match) -> float | None:
    return _mean(result["paper"]["rows"], metric, **match)


def compare(result: dict) -> list[dict]:
    """The table's rows, ours beside the paper's: label, paper, paper_rel, ours, ours_rel, ours_lq, ours_lq_rel
    (ppl tables), or the table's own columns (table11: TFLOPs; figure4: accuracy; figure5: val_ppl by step)."""
    name, rows, paper = result["name"], result["rows"], result["paper"]["rows"]
    out = []
    if name == "table1":
        ours_contexts = sorted({r["context"] for r in rows})
        paper_contexts = sorted({r["context"] for r in paper})
        for n, pn in zip(ours_contexts, paper_contexts):
            ref, pref = _ref(rows, setting="full", context=n), _paper(result, setting="full", context=pn)
            for s in ("full", "short", "s2"):
                out.append(_ppl_row(f"{s} @ {n} (paper {pn})", _paper(result, setting=s, context=pn), pref, rows, ref,
                                    setting=s, context=n))
    elif name == "table1_lr":
        pref = _paper(result, setting="full")
        for lr in sorted({r["lr"] for r in rows}):
            ref = _ref(rows, setting="full", lr=lr)
            for s in ("full", "short", "s2"):
                row = _ppl_row(f"{s} lr={lr:g}", _paper(result, setting=s), pref, rows, ref, setting=s, lr=lr)
                own = _mean(rows, "ppl_own_pattern", setting=s, lr=lr)
                out.append({**row, "ours_own": own, "ours_own_rel": _rel(own, ref["ppl"])})
    elif name == "table1_window":
        n = max(r["window"] for r in rows)
        ref, pref = _ref(rows, setting="full", window=n), _paper(result, setting="full")
        for s in ("full", "short", "s2"):
            for w in sorted({r["window"] for r in rows}):
                label = f"{s} tested " + ("full" if w == n else f"window {w}")
                out.append(_ppl_row(label, _paper(result, setting=s) if w == n else None, pref, rows, ref,
                                    setting=s, window=w))
    elif name == "table2":
        ref, pref = _ref(rows, setting="full"), _paper(result, setting="full")
        for s, rank in dict.fromkeys((r["setting"], r["rank"]) for r in rows):
            label = s if rank is None or s == "full" else f"{s} r={rank}"
            out.append(_ppl_row(label, _paper(result, setting=s, rank=rank), pref, rows, ref, setting=s, rank=rank))
    elif name == "table6":
        for full in (False, True):
            ref = _ref(rows, pattern="s2", test_full_attention=True)
            pref = _paper(result, pattern="s2", test_full_attention=True)
            for p in dict.fromkeys(r["pattern"] for r in rows):
                label = f"{p} tested {'full' if full else 'own'}"
                out.append(_ppl_row(label, _paper(result, pattern=p, test_full_attention=full), pref, rows, ref,
                                    pattern=p, test_full_attention=full))
    elif name == "table7":
        ref, pref = _ref(rows, group="full"), _paper(result, group="full", context=8192)
        for g in dict.fromkeys(r["group"] for r in rows):
            size = next(r["group_size"] for r in rows if r["group"] == g)
            out.append(_ppl_row(f"{g}" + (f" ({size} tokens)" if size else ""),
                                _paper(result, group=g, context=8192), pref, rows, ref, group=g))
    elif name == "table8":
        ref, pref = _ref(rows, variant="full"), _paper(result, variant="full")
        for v in dict.fromkeys(r["variant"] for r in rows):
            out.append(_ppl_row(v, _paper(result, variant=v), pref, rows, ref, variant=v))
    elif name == "table11":
        for r in rows:
            for s2 in (False, True):
                kind = "s2" if s2 else "full"
                p = next((q for q in paper if q["context"] == r["context"] and q["s2"] == s2), None)
                out.append({"label": f"{r['context']} {'S2-Attn' if s2 else 'full'}", "attn": r[f"attn_{kind}"],
                            "proj": r["proj"], "ffn": r["ffn"], "others": r["others"], "total": r[f"total_{kind}"],
                            "paper_total": p["total"] if p else None})
    elif name == "figure4":
        for model in dict.fromkeys(r["model"] for r in rows):
            for length in sorted({r["length"] for r in rows if r["model"] == model}):
                out.append({"label": model, "length": int(length),
                            "ours": _mean(rows, "accuracy", model=model, length=length)})
    elif name == "figure5":
        for s in dict.fromkeys(r["setting"] for r in rows):
            start = _mean(rows, "val_ppl", setting=s, step=0)
            for step in sorted({r["step"] for r in rows if r["setting"] == s}):
                v = _mean(rows, "val_ppl", setting=s, step=step)
                out.append({"label": s, "step": step, "ours": v, "ours_rel_start": _rel(v, start)})
    else:
        raise ValueError(f"unknown table {name!r}")
    return out


def format_rows(rows: list[dict], digits: int = 3) -> str:
    """A fixed-width text table of `compare`'s rows (relative columns in %)."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])

    def cell(key, value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{100 * value:+.1f}%" if "rel" in key else f"{value:.{digits}f}"
        return str(value)

    table = [[cell(k, r.get(k)) for k in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths)))]
    lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(t, widths))) for t in table]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- plot
def _figure(ncols: int = 2, width: float = 11.0, height: float = 3.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def _plain_log(ax) -> None:
    """A log y axis labelled 4, 6, 10, 20 rather than 4×10⁰ …"""
    from matplotlib.ticker import FormatStrFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _bars(ax, labels: list[str], values: list[float | None], title: str, ylabel: str, colors=None):
    xs = range(len(labels))
    heights = [math.nan if v is None else 100 * v for v in values]
    ax.bar(xs, [0 if math.isnan(h) else h for h in heights], color=colors or "C0")
    for x, h in zip(xs, heights):
        ax.annotate("n/a" if math.isnan(h) else f"{h:+.1f}", (x, 0 if math.isnan(h) else h), ha="center",
                    va="bottom" if math.isnan(h) or h >= 0 else "top", fontsize=7)
    ax.set_xticks(list(xs), labels, rotation=35, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)


def plot(result: dict):
    """The paper's numbers (left) and ours (right) in the same layout; returns a matplotlib Figure."""
    name, rows = result["name"], compare(result)
    quick = " (quick: numbers meaningless)" if result.get("quick") else ""
    if name == "table1":
        fig, (a, b) = _figure()
        for ax, key, title in ((a, "paper", PAPER_MODEL), (b, "ours", OUR_MODEL + quick)):
            for s, marker in (("full", "o"), ("short", "s"), ("s2", "^")):
                pts = [r for r in rows if r["label"].startswith(s + " ")]
                xs = [int(r["label"].split("(paper ")[1][:-1]) if key == "paper" else int(r["label"].split()[2])
                      for r in pts]
                ax.plot(xs, [r[key] for r in pts], marker=marker, label=s)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("target context (tokens)")
            ax.set_ylabel("perplexity, tested with full attention")
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=8)
    elif name == "table1_lr":
        fig, (a, b) = _figure()
        lrs = sorted({r["lr"] for r in result["rows"]})
        for s, marker in (("short", "s"), ("s2", "^")):
            pts = [r for r in rows if r["label"].startswith(s + " ")]
            a.plot(lrs, [100 * r["ours_rel"] for r in pts], marker=marker, label=f"{s}, tested with full attention")
            a.plot(lrs, [100 * r["ours_own_rel"] for r in pts], marker=marker, ls="--",
                   label=f"{s}, tested with its own pattern")
        p_s2 = next(r["paper_rel"] for r in rows if r["label"].startswith("s2 "))
        p_short = next(r["paper_rel"] for r in rows if r["label"].startswith("short "))
        a.axhline(100 * p_short, color="C0", lw=0.8, ls=":", label=f"paper, short @ 8192 ({100 * p_short:+.1f}%)")
        a.axhline(100 * p_s2, color="C2", lw=0.8, ls=":", label=f"paper, S2 @ 8192 ({100 * p_s2:+.1f}%)")
        a.set_ylabel("perplexity vs full-attention FT at the same rate (%)")
        a.set_title(OUR_MODEL + quick, fontsize=9)
        for s, marker in (("full", "o"), ("short", "s"), ("s2", "^")):
            pts = [r for r in rows if r["label"].startswith(s + " ")]
            b.plot(lrs, [r["ours"] for r in pts], marker=marker, label=s)
        b.set_ylabel("perplexity, tested with full attention")
        b.set_title("absolute perplexity (ours)", fontsize=9)
        for ax in (a, b):
            ax.set_xscale("log")
            ax.set_xlabel("learning rate (250 steps, constant after 20 warmup)")
            ax.legend(fontsize=7)
    elif name == "table1_window":
        fig, (a, b) = _figure()
        windows = sorted({r["window"] for r in result["rows"]})
        for s, marker in (("full", "o"), ("short", "s"), ("s2", "^")):
            for ax, metric in ((a, "ppl"), (b, "ppl_last_quarter")):
                ax.plot(windows, [_mean(result["rows"], metric, setting=s, window=w) for w in windows],
                        marker=marker, label=s)
        group = next((r["group_size"] for r in result["rows"] if r.get("group_size")), None)
        for ax, title in ((a, OUR_MODEL + quick + ": sliding-window ppl"), (b, "last quarter of each window")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(windows, [str(w) for w in windows])
            if group:  # the grouped models' training groups: no distance beyond this was trained
                ax.axvline(group, color="gray", ls=":", lw=0.8, label=f"training group ({group})")
            ax.set_xlabel(f"attention window at test time (keys; {windows[-1]} = full attention)")
            ax.set_ylabel("perplexity")
            _plain_log(ax)
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=8)
    elif name in ("table2", "table6", "table7", "table8"):
        fig, (a, b) = _figure()
        labels = [r["label"] for r in rows]
        colors = ["C1" if "own" in lab else "C0" for lab in labels] if name == "table6" else None
        ref = {"table2": "full FT", "table6": "S2 tested full", "table7": "full attention",
               "table8": "full attention"}[name]
        _bars(a, labels, [r["paper_rel"] for r in rows], PAPER_MODEL, f"perplexity vs {ref} (%)", colors)
        _bars(b, labels, [r["ours_rel"] for r in rows], OUR_MODEL + quick, f"perplexity vs {ref} (%)", colors)
    elif name == "table11":
        fig, (a, b) = _figure()
        labels = [r["label"] for r in rows]
        bottom = [0.0] * len(rows)
        for kind in ("attn", "proj", "ffn", "others"):
            a.bar(range(len(rows)), [r[kind] for r in rows], bottom=bottom, label=kind)
            bottom = [x + r[kind] for x, r in zip(bottom, rows)]
        a.set_xticks(range(len(rows)), labels, rotation=35, ha="right", fontsize=8)
        a.set_ylabel("TFLOPs (forward, batch 1)")
        a.set_yscale("log")
        a.set_title("ours: Llama-2-7B's shapes, by kind", fontsize=9)
        a.legend(fontsize=8)
        paired = [(r["label"], r["paper_total"], r["total"]) for r in rows if r["paper_total"] is not None]
        xs = range(len(paired))
        b.bar([x - 0.2 for x in xs], [p[1] for p in paired], width=0.4, label="paper")
        b.bar([x + 0.2 for x in xs], [p[2] for p in paired], width=0.4, label="ours")
        b.set_xticks(list(xs), [p[0] for p in paired], fontsize=8)
        b.set_ylabel("total TFLOPs")
        b.set_title("the paper's printed row (8192) beside ours", fontsize=9)
        b.legend(fontsize=8)
    elif name == "figure4":
        fig, (a, b) = _figure()
        for model in dict.fromkeys(r["model"] for r in result["paper"]["rows"]):
            pts = sorted((r["length"], r["accuracy"]) for r in result["paper"]["rows"] if r["model"] == model)
            a.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=model)
        for model in dict.fromkeys(r["label"] for r in rows):
            pts = [r for r in rows if r["label"] == model]
            b.plot([r["length"] for r in pts], [100 * r["ours"] for r in pts], marker="o", label=model)
        for ax, title in ((a, PAPER_MODEL + " (read off the plot, approximate)"), (b, OUR_MODEL + quick)):
            ax.set_xlabel("prompt length (tokens)")
            ax.set_ylabel("passkey accuracy (%)")
            ax.set_ylim(-5, 105)
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=7)
    elif name == "figure5":
        fig, (a, b) = _figure()
        for s in dict.fromkeys(r["setting"] for r in result["paper"]["rows"]):
            pts = sorted((r["step"], r["val_ppl"]) for r in result["paper"]["rows"] if r["setting"] == s)
            a.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
        for s in dict.fromkeys(r["label"] for r in rows):
            pts = [r for r in rows if r["label"] == s]
            b.plot([r["step"] for r in pts], [r["ours"] for r in pts], marker="o", label=s)
        for ax, title in ((a, PAPER_MODEL), (b, OUR_MODEL + quick)):
            ax.set_xlabel("fine-tuning step")
            ax.set_ylabel("validation perplexity (full attention)")
            _plain_log(ax)
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=8)
    else:
        raise ValueError(f"unknown table {name!r}")
    fig.suptitle(textwrap.fill(result["description"], 140), fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------------- verdict
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _worst(rows: list[dict], prefix: str, key: str = "ours_rel") -> tuple[float, float]:
    values = [r[key] for r in rows if r["label"].startswith(prefix) and r[key] is not None]
    return min(values), max(values)


def verdict(result: dict) -> str:
    """One sentence: the table's finding in the paper, and whether ours shows it (numbers, not adjectives)."""
    name, rows = result["name"], compare(result)
    seeds = f"{_seeds(result)} seed{'s' if _seeds(result) > 1 else ''}"
    if result.get("quick"):
        return f"{name}: quick run (2 steps), the numbers mean nothing; the committed full result is {name}.json."
    if name == "table1":
        s2_lo, s2_hi = _worst(rows, "s2 ")
        sh_lo, sh_hi = _worst(rows, "short ")
        p_s2 = _worst(rows, "s2 ", "paper_rel")
        p_sh = _worst(rows, "short ", "paper_rel")
        agrees = s2_hi < 0.5 * sh_lo
        return (f"Table 1 ({seeds}): paper, S2-Attn {_pct(p_s2[0])}…{_pct(p_s2[1])} and short attention "
                f"{_pct(p_sh[0])}…{_pct(p_sh[1])} from full-attention fine-tuning; ours, S2-Attn {_pct(s2_lo)}…"
                f"{_pct(s2_hi)} and short {_pct(sh_lo)}…{_pct(sh_hi)}: "
                + ("S2-Attn closes most of the gap, as in the paper." if agrees else
                   "S2-Attn does NOT close the gap at this scale (it is no better than short attention)."))
    if name == "table1_lr":
        parts = []
        for lr in sorted({r["lr"] for r in result["rows"]}):
            get = {r["label"].split()[0]: r for r in rows if r["label"].endswith(f"lr={lr:g}")}
            parts.append(f"lr {lr:g}: S2 {_pct(get['s2']['ours_rel'])} (own pattern {_pct(get['s2']['ours_own_rel'])})"
                         f", short {_pct(get['short']['ours_rel'])}, full FT ppl {get['full']['ours']:.2f}")
        return (f"Table 1 at 4x by learning rate ({seeds}; relative to full-attention FT at the same rate, tested with "
                "full attention): " + "; ".join(parts) + " (paper at 8192: S2 +0.2%, short +3.4%).")
    if name == "table1_window":
        rs, n = result["rows"], max(r["window"] for r in result["rows"])
        half = max(w for w in {r["window"] for r in rs} if w < n)

        def ppl(s, w, metric="ppl"):
            return _mean(rs, metric, setting=s, window=w)

        gap = ppl("s2", n) / ppl("full", n) - 1  # S2-Attn's failure under full attention (Table 1's cell)
        rescued = ppl("s2", half) < 0.5 * (ppl("s2", n) + ppl("full", n))  # the window closes half of it or more
        return (f"Table 1's models at 4x by test-time window ({seeds}; not in the paper): S2-Attn tested with full "
                f"attention {ppl('s2', n):.2f}, with a window of {half} keys {ppl('s2', half):.2f} "
                f"({_pct(ppl('s2', half) / ppl('s2', n) - 1)}; last quarter {ppl('s2', n, 'ppl_last_quarter'):.2f} → "
                f"{ppl('s2', half, 'ppl_last_quarter'):.2f}), short {ppl('short', n):.2f} → {ppl('short', half):.2f}, "
                f"full-attention FT {ppl('full', n):.2f} → {ppl('full', half):.2f}: "
                + ("S2-Attn is within 5% of full attention here, so there is no failure for a window to explain."
                   if gap < 0.05 else
                   "hiding the keys further back than the window rescues the grouped models, so those far keys are what "
                   "breaks them under full attention." if rescued else
                   "a window does not rescue the grouped models, so the far keys alone do not explain their failure."))
    if name == "table2":
        get = {r["label"]: r for r in rows}
        lora = [r["ours_rel"] for r in rows if r["label"].startswith("lora r=")]
        lora_3q = [r["ours_3q_rel"] for r in rows if r["label"].startswith("lora r=")]
        p_lora = [r["paper_rel"] for r in rows if r["label"].startswith("lora r=")]
        both, both_3q = get["lora+norm+embed r=8"]["ours_rel"], get["lora+norm+embed r=8"]["ours_3q_rel"]
        behind = min(lora_3q) > 0.1
        closes = both_3q < 0.5 * min(lora_3q)
        return (f"Table 2 ({seeds}): paper, LoRA alone {_pct(min(p_lora))}…{_pct(max(p_lora))} from full FT and LoRA "
                f"+ norm & embed {_pct(get['lora+norm+embed r=8']['paper_rel'])}; ours, over the first three quarters "
                f"of the window, LoRA alone {_pct(min(lora_3q))}…{_pct(max(lora_3q))} and + norm & embed "
                f"{_pct(both_3q)} (sliding-window ppl, which scores the ends of windows where S2-Attn fails: "
                f"{_pct(min(lora))}…{_pct(max(lora))} and {_pct(both)}): "
                + ("LoRA alone falls far behind full fine-tuning, as in the paper" if behind else
                   "LoRA alone does not fall far behind full fine-tuning, unlike the paper")
                + (", and trainable embedding and norms close most of the gap, as in the paper." if closes else
                   ", but trainable embedding and norms do not close the gap here."))
    if name == "table6":
        get = {r["label"]: r for r in rows}
        own = get["s2 tested own"]["ours_rel"]
        others = {r["label"].split()[0]: r["ours_rel"] for r in rows if r["label"].endswith("tested full")
                  and not r["label"].startswith("s2 ")}
        paper = {r["label"].split()[0]: r["paper_rel"] for r in rows if r["label"].endswith("tested full")
                 and not r["label"].startswith("s2 ")}
        best, p_best = min(others, key=lambda k: others[k]), min(paper, key=lambda k: paper[k])
        better = sorted(k for k, v in others.items() if v < 0)
        return (f"Table 6 ({seeds}): tested with full attention, the paper's S2-Attn beats every other pattern "
                f"(next best {p_best}, {_pct(paper[p_best])}); ours, the best other pattern is {best} at "
                f"{_pct(others[best])} from S2-Attn, and {len(better)} of {len(others)} patterns beat S2-Attn"
                + (f" ({', '.join(better)}), unlike the paper" if better else ", as in the paper")
                + f"; S2-Attn tested with its own pattern is {_pct(own)} from itself tested with full attention "
                f"(paper {_pct(get['s2 tested own']['paper_rel'])}).")
    if name == "table7":
        sized = [r for r in rows if not r["label"].startswith("full")]  # 1/2, 1/4, 1/6, 1/8: shrinking groups
        grows = all(a["ours_rel"] <= b["ours_rel"] for a, b in zip(sized, sized[1:]))
        grows_3q = all(a["ours_3q_rel"] <= b["ours_3q_rel"] for a, b in zip(sized, sized[1:]))
        return (f"Table 7 ({seeds}): paper, groups 1/2…1/8 cost {_pct(sized[0]['paper_rel'])}…"
                f"{_pct(sized[-1]['paper_rel'])} over full attention, growing as groups shrink; ours "
                + ", ".join(f"{r['label'].split()[0]} {_pct(r['ours_rel'])}" for r in sized)
                + " (first three quarters of the window: "
                + ", ".join(f"{_pct(r['ours_3q_rel'])}" for r in sized) + "): the cost "
                + ("grows as groups shrink, as in the paper, " if grows and grows_3q else
                   "does not grow steadily as groups shrink, unlike the paper, ")
                + ("but it is tens of times the paper's (the failure of Table 1)." if sized[0]["ours_rel"] > 0.1
                   else "and is of the paper's size."))
    if name == "table8":
        variants = [r for r in rows if r["label"] != "full"]
        spread = max(r["ours_rel"] for r in variants) - min(r["ours_rel"] for r in variants)
        return (f"Table 8 ({seeds}): paper, the four variants are within 0.4% of full attention and 0.2% of each other; "
                "ours " + ", ".join(f"{r['label']} {_pct(r['ours_rel'])}" for r in variants)
                + f" (spread {100 * spread:.1f} points): "
                + ("as in the paper, the way of shifting barely matters." if spread < 0.02 and
                   max(r["ours_rel"] for r in variants) < 0.02 else
                   "unlike the paper, the variants differ and none is close to full attention."
                   if min(r["ours_rel"] for r in variants) > 0.02 else
                   "unlike the paper, the variants differ."))
    if name == "table11":
        row = next(r for r in rows if r["label"] == "8192 full")
        s2 = next(r for r in rows if r["label"] == "8192 S2-Attn")
        return (f"Table 11: at 8192 tokens ours {row['total']:.1f} / {s2['total']:.1f} TFLOPs (full / S2-Attn), the "
                f"paper {row['paper_total']} / {s2['paper_total']}.")
    if name == "figure4":
        trained = result["rows"][0]
        ext = [r for r in rows if r["label"] == "extended"]
        n = max((r["trained_context"] for r in result["rows"] if r["model"] == "extended"), default=None)
        inside = [r["ours"] for r in ext if r["length"] <= n]
        outside = [r["ours"] for r in ext if r["length"] > n]
        L = trained["trained_context"]
        base_in = [r["ours"] for r in rows if r["label"] == "base" and r["length"] <= L]
        base = [r["ours"] for r in rows if r["label"] == "base" and r["length"] > L]
        text = (f"Figure 4 ({seeds}): the extended model retrieves the passkey {100 * _avg(inside):.0f}% of the time "
                f"up to its trained {n} tokens and {100 * _avg(outside):.0f}% beyond; the base "
                f"{100 * _avg(base_in):.0f}% within its own {L} tokens and {100 * _avg(base):.0f}% beyond (paper: "
                "100% to 32k, the base 100% within its 4k and 0% past it)")
        if max(r["ours"] for r in rows) == 0:
            text += ": no model here retrieves the key at any length, so the finding cannot show at this scale"
        return text + "."
    if name == "figure5":
        full, lora = ({r["step"]: r["ours"] for r in rows if r["label"] == s} for s in ("full", "lora_plus"))
        p_full, p_lora = ({r["step"]: r["val_ppl"] for r in result["paper"]["rows"] if r["setting"] == s}
                          for s in ("full", "lora_plus"))
        end, best = max(full), min(full, key=full.get)
        early = sorted(full)[min(2, len(full) - 1)]  # the first logged steps after 0: where the paper's curves differ
        return (f"Figure 5 ({seeds}): paper, LoRA+ is {_pct(p_lora[100] / p_full[100] - 1)} above full FT at step 100 "
                f"and {_pct(p_lora[1000] / p_full[1000] - 1)} at step 1000, both falling throughout; ours, LoRA+ is "
                f"{_pct(lora[early] / full[early] - 1)} above full FT at step {early} and "
                f"{_pct(lora[end] / full[end] - 1)} at step {end} (final {full[end]:.2f} vs {lora[end]:.2f}), and full "
                f"FT's best perplexity is at step {best} ({full[best]:.2f}), "
                + ("so the curves turn up before the end." if best < end else "still falling at the end."))
    raise ValueError(f"unknown table {name!r}")


def _avg(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# -------------------------------------------------------------------------------------------------------- curves
def _run_label(config: dict) -> str:
    method = {"full": "full FT", "lora": "LoRA", "lora_plus": "LoRA+"}[config["method"]]
    parts = [method, {"full": "full attention", "s2": "S2-Attn"}.get(config["attention"], config["attention"])]
    if config["attention"] == "s2" and config.get("s2_variant", "split") != "split":
        parts.append(config["s2_variant"])
    ratio = config.get("group_size_ratio", 0.25)
    if config["attention"] != "full" and abs(ratio - 0.25) > 1e-9:  # Table 7: the group size tells the runs apart
        parts.append(f"group {max(2, int(config['seq_len'] * ratio))}")
    if config["method"] != "full" and config.get("lora_r") != 8:
        parts.append(f"r={config['lora_r']}")
    parts += [f"{config['seq_len']} tokens", f"lr {config['lr']:g}"]
    return ", ".join(parts)


def curves(result: dict) -> dict[str, list[tuple[int, float]]]:
    """Every run of the table: its validation perplexity (full attention, train's whole-window mean) every
    steps/10 steps, from step 0 (the base with the run's interpolation, where the table recorded it) to the end."""
    configs = {c["run"]: c for c in result["settings"]["train_configs"]}
    out = {}
    for key, run in result["settings"]["runs"].items():
        label = _run_label(configs[key])
        if configs[key].get("train_embed") is False or configs[key].get("train_norm") is False:
            label += f" (embed {configs[key]['train_embed']}, norm {configs[key]['train_norm']})"
        out[label] = [(m["step"], m["val_ppl"]) for m in run["curve"]]
    return out


def plot_curves(result: dict, select=None):
    """Validation perplexity against fine-tuning step, one line per run (`select(label)` keeps a subset)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, pts in curves(result).items():
        if select is None or select(label):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
    _plain_log(ax)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("validation perplexity (full attention)")
    ax.set_title(f"{result['name']}: validation perplexity during fine-tuning", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def describe(result: dict) -> str:
    """What was run: the command, the budget (runs, steps, tokens), the wall time, the commit and the machine."""
    s, m = result["settings"], result["machine"]
    b = s.get("budget", {})
    lines = [f"{result['name']}{' (quick)' if result.get('quick') else ''}: {result['description']}",
             f"command: {result['command']}",
             f"ran {result['started'][:16].replace('T', ' ')} at commit {(result.get('git_commit') or '?')[:10]}, "
             f"{result['seconds'] / 60:.1f} min wall on {m['cpu_count']} CPU cores ({m['torch']}, "
             f"{m['torch_threads']} threads)"]
    if b.get("runs"):
        per = ", ".join(f"{c}: {v['batch_size']} x {c} tokens" for c, v in b["per_context"].items())
        lines.append(f"budget: {b['runs']} runs of {b['steps']} steps ({per}; {b['tokens_all_runs'] / 1e6:.1f}M "
                     f"tokens in all), lr {b['lr']}, {b['schedule']}, {b['precision']}; base {s['base']} "
                     f"(context {s['base_context']}); seeds {s['seeds']}")
        lines.append(f"training time: {b['train_seconds_all_runs'] / 60:.1f} min for the table's runs "
                     f"({b['train_seconds_new_runs'] / 60:.1f} min new in this command, the rest reused from the "
                     "cache)")
    return "\n".join(textwrap.fill(line, 118, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False)
                     for line in lines)


def plot_loss_by_position(result: dict, panel: str = "context", line: str = "setting"):
    """Mean next-token loss (full attention) against position in the window: 16 bins (`loss_bins`) where the results
    have them, else the 4 quarters; one panel per value of `panel` ("context" in table1 and table7, "lr" in
    table1_lr), one line per value of `line` ("setting"; "group" in table7): where in the window short or S2-Attn
    training loses against full attention. A dotted line marks the group size where a panel has one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["rows"] + result.get("starting_point", [])  # table1: the base with PI, before fine-tuning
    values = sorted({r[panel] for r in rows})
    lines = list(dict.fromkeys(r[line] for r in rows))
    if "base+PI" in lines:  # the starting point first, drawn in gray
        lines = ["base+PI"] + [x for x in lines if x != "base+PI"]
    fig = Figure(figsize=(max(3.6 * len(values), 5.0), 3.4), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(values), sharey=True, squeeze=False)[0]
    for ax, value in zip(axes, values):
        groups = set()
        for i, name in enumerate(lines):
            members = [r for r in rows if r[panel] == value and r.get(line) == name]
            if not members:
                continue
            key = "loss_bins" if all("loss_bins" in m for m in members) else "loss_quarters"
            k, n = len(members[0][key]), members[0]["context"]
            mean = [sum(m[key][j] for m in members) / len(members) for j in range(k)]
            style = dict(color="gray", ls="--", lw=1) if name == "base+PI" else {}
            marker = "x" if name == "base+PI" else "os^vD<>p"[(i - ("base+PI" in lines)) % 8]
            ax.plot([(j + 0.5) / k for j in range(k)], mean, marker=marker, ms=4, label=str(name), **style)
            groups |= {m["group_size"] for m in members if m.get("group_size")}
        group = groups.pop() if len(groups) == 1 else None
        if group:
            ax.axvline(group / n, color="gray", ls=":", lw=0.8)
        ax.set_xlabel("position in the window (fraction of n)")
        title = f"n = {n}" + (f", group {group}" if group else "") + ("" if panel == "context" else f"; {panel} {value:g}")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean next-token loss (nats)" + ("" if panel == "window" else ", full attention"))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['name']}: loss by position in the window", fontsize=9)
    fig.tight_layout()
    return fig
