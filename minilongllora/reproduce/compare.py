"""What the table modules share to put ours beside the paper: means over seeds, values relative to a reference row,
and the plotting helpers.

Absolute perplexities cannot be compared (the paper: Llama2 7B, 32k-token vocabulary, PG19 books; ours: a
3.3M-parameter byte-level model on Python sources), so every table is also given *relative* to its reference row
(full-attention fine-tuning, or S2-Attn across heads in Table 6): `rel = ppl / ppl_reference - 1`, the quantity the
paper's conclusions are about ("S2-Attn is within 0.3% of full attention", "short attention is 3-18% worse").
"""

from __future__ import annotations

import math

PAPER_MODEL = "paper: Llama2 7B, PG19"
OUR_MODEL = "ours: tiny byte-level LLaMA, pystdlib"


def mean(rows: list[dict], metric: str = "ppl", **match) -> float | None:
    """Mean of `metric` over the rows (seeds) whose fields equal `match`; None when no row matches."""
    values = [r[metric] for r in rows if all(r.get(k) == v for k, v in match.items())
              and isinstance(r.get(metric), (int, float))]
    return sum(values) / len(values) if values else None


def values(rows: list[dict], metric: str = "ppl", **match) -> list[float]:
    """`metric` of every row (one per seed) whose fields equal `match`."""
    return [r[metric] for r in rows if all(r.get(k) == v for k, v in match.items())
            and isinstance(r.get(metric), (int, float))]


def sd(xs: list[float]) -> float | None:
    """Sample standard deviation over seeds; None below two seeds."""
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def resolve(a: list[float], b: list[float]) -> str:
    """The verdict rule (README "The regime"): "lower" or "higher" (a's mean against b's) only when the means differ
    by more than twice the larger standard error (sd / sqrt(seeds)); "not resolved" otherwise, and with fewer than
    two seeds on either side (no spread, no verdict)."""
    if len(a) < 2 or len(b) < 2:
        return "not resolved"
    se = max(sd(a) / math.sqrt(len(a)), sd(b) / math.sqrt(len(b)))
    diff = sum(a) / len(a) - sum(b) / len(b)
    if abs(diff) <= 2 * se:
        return "not resolved"
    return "lower" if diff < 0 else "higher"


RULE = "a difference called only when the means differ by more than twice the larger standard error"


def versus(rows: list[dict], a: dict, b: dict, metric: str = "ppl") -> str:
    """`resolve` between the rows (one per seed) whose fields equal `a` and those whose fields equal `b`."""
    return resolve(values(rows, metric, **a), values(rows, metric, **b))


def than(resolution: str, other: str) -> str:
    """"lower than full", "higher than full" or "not resolved": a resolution in words."""
    return resolution if resolution == "not resolved" else f"{resolution} than {other}"


def rel(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference - 1


def seeds_text(result: dict) -> str:
    n = len(result["settings"].get("seeds", [0]))
    return f"{n} seed{'s' if n > 1 else ''}"


def first3q(rows: list[dict], **match) -> float | None:
    """Perplexity over the first three quarters of the window (tokens 0 … 3n/4, from `loss_quarters`)."""
    losses = [sum(r["loss_quarters"][:3]) / 3 for r in rows if all(r.get(k) == v for k, v in match.items())
              and r.get("loss_quarters")]
    return math.exp(sum(losses) / len(losses)) if losses else None


def reference(rows: list[dict], **match) -> dict:
    """The reference row's perplexities (all tokens, last quarter, first three quarters, the test split) and its
    per-seed values (for the verdict rule)."""
    return {"ppl": mean(rows, "ppl", **match), "lq": mean(rows, "ppl_last_quarter", **match),
            "3q": first3q(rows, **match), "test": mean(rows, "ppl_test", **match),
            "values": values(rows, "ppl", **match), "test_values": values(rows, "ppl_test", **match)}


def _vs(a: list[float], ref: list[float]) -> str | None:
    """`resolve` of a row against its reference ("reference" for the reference itself; None without values)."""
    if not a or not ref:
        return None
    return "reference" if a == ref else resolve(a, ref)


def ppl_row(label: str, paper: float | None, paper_ref: float | None, ours_rows: list[dict], ours_ref: dict,
            **match) -> dict:
    """One row of a perplexity table: the paper's value and ours, each also relative to its reference row; vs_ref and
    test_vs_ref: the verdict rule against the reference row on the validation and on the test split."""
    ours, ours_lq = mean(ours_rows, "ppl", **match), mean(ours_rows, "ppl_last_quarter", **match)
    ours_3q, ours_test = first3q(ours_rows, **match), mean(ours_rows, "ppl_test", **match)
    return {"label": label, "paper": paper, "paper_rel": rel(paper, paper_ref), "ours": ours,
            "ours_sd": sd(values(ours_rows, "ppl", **match)), "ours_rel": rel(ours, ours_ref["ppl"]),
            "ours_lq": ours_lq, "ours_lq_sd": sd(values(ours_rows, "ppl_last_quarter", **match)),
            "ours_lq_rel": rel(ours_lq, ours_ref["lq"]), "ours_3q": ours_3q,
            "ours_3q_rel": rel(ours_3q, ours_ref["3q"]),
            "seeds": len(values(ours_rows, "ppl", **match)), "vs_ref": _vs(values(ours_rows, "ppl", **match),
                                                                          ours_ref.get("values", [])),
            "ours_test": ours_test, "ours_test_rel": rel(ours_test, ours_ref.get("test")),
            "test_vs_ref": _vs(values(ours_rows, "ppl_test", **match), ours_ref.get("test_values", []))}


def on_test(rows: list[dict]) -> str:
    """One sentence: do the compared rows (`ppl_row`s) come out against their reference on the test split as on the
    validation split, under the verdict rule? The test split is never read to choose a setting (issue 15 item 4)."""
    pairs = [(r["label"], r["vs_ref"], r["test_vs_ref"]) for r in rows
             if r.get("test_vs_ref") not in (None, "reference") and r.get("vs_ref") is not None]
    if not pairs:
        return "The test split is not in this file (made before it was added)."
    differ = [f"{label} ({v} on validation, {t} on test)" for label, v, t in pairs if v != t]
    if not differ:
        return f"The test split resolves all {len(pairs)} comparisons with the reference as the validation split does."
    return (f"The test split resolves {len(pairs) - len(differ)} of {len(pairs)} comparisons with the reference as "
            "the validation split does; not " + ", ".join(differ) + ".")


def paper_value(result: dict, metric: str = "ppl", **match) -> float | None:
    return mean(result["paper"]["rows"], metric, **match)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def span(rows: list[dict], prefix: str, key: str = "ours_rel") -> tuple[float, float]:
    """(smallest, largest) `key` over the compared rows whose label starts with `prefix`."""
    values = [r[key] for r in rows if r["label"].startswith(prefix) and r[key] is not None]
    return min(values), max(values)


def average(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# ------------------------------------------------------------------------------------------------------- plotting
def figure(ncols: int = 2, width: float = 11.0, height: float = 3.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]  # an array even for one column
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def plain_log(ax) -> None:
    """A log y axis labelled 4, 6, 10, 20 rather than 4×10⁰ …"""
    from matplotlib.ticker import FormatStrFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def rel_sd(row: dict) -> float | None:
    """A compared row's standard deviation over seeds as a fraction of its reference row's mean (None: one seed)."""
    if row.get("ours_sd") is None or not row.get("ours") or row.get("ours_rel") is None:
        return None
    return row["ours_sd"] / row["ours"] * (1 + row["ours_rel"])


def bars(ax, labels: list[str], values: list[float | None], title: str, ylabel: str, colors=None, errors=None):
    """Bars of fractions, drawn in %, annotated; `errors` (fractions or None): +- one standard deviation over seeds."""
    xs = range(len(labels))
    heights = [math.nan if v is None else 100 * v for v in values]
    yerr = None if not errors or not any(errors) else [100 * (e or 0.0) for e in errors]
    ax.bar(xs, [0 if math.isnan(h) else h for h in heights], color=colors or "C0", yerr=yerr, capsize=3,
           error_kw={"lw": 0.8})
    for x, h, e in zip(xs, heights, yerr or [0.0] * len(heights)):  # above the error bar
        ax.annotate("n/a" if math.isnan(h) else f"{h:+.1f}", (x, 0 if math.isnan(h) else h + math.copysign(e, h)),
                    ha="center", va="bottom" if math.isnan(h) or h >= 0 else "top", fontsize=7)
    ax.set_xticks(list(xs), labels, rotation=35, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)


def relative_bars(result: dict, rows: list[dict], reference_name: str, colors=None):
    """The paper's relative values (left) and ours (right) as bars: tables 2, 6, 7 and 8."""
    fig, (a, b) = figure()
    labels = [r["label"] for r in rows]
    bars(a, labels, [r["paper_rel"] for r in rows], PAPER_MODEL, f"perplexity vs {reference_name} (%)", colors)
    ylabel = f"perplexity vs {reference_name} (%)"
    bars(b, labels, [r["ours_rel"] for r in rows], OUR_MODEL + quick_note(result), ylabel, colors,
         [rel_sd(r) for r in rows])
    return fig


def quick_note(result: dict) -> str:
    return " (quick: numbers meaningless)" if result.get("quick") else ""


def label_axes(ax, title: str, xlabel: str, ylabel: str, *, log: bool = False, legend: int = 8) -> None:
    """Labels, title and legend of one panel; a plain-numbered log y axis with log=True."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        plain_log(ax)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=legend)


def fonts(fig):
    """Panel titles (10 pt) never smaller than axis labels (9 pt) or the figure's title (9 pt), ticks 8 pt."""
    for ax in fig.axes:
        ax.title.set_fontsize(10)
        ax.xaxis.label.set_fontsize(9)
        ax.yaxis.label.set_fontsize(9)
        ax.tick_params(labelsize=8)
    return fig


def paired_bars(ax, labels: list[str], solid: list, hatched: list, colors: list[str], names: tuple[str, str],
                errors=None):
    """Two bars per label, in its colour: `solid` (fractions, drawn in %, annotated: the verdict's metric; `errors`,
    fractions or None: +- one standard deviation over seeds) and, hatched beside it, `hatched`; `names` are their
    legend entries."""
    from matplotlib.patches import Patch

    xs = range(len(labels))
    solid_h, hatched_h = ([0.0 if v is None else 100 * v for v in values] for values in (solid, hatched))
    yerr = None if not errors or not any(errors) else [100 * (e or 0.0) for e in errors]
    ax.bar([x - 0.2 for x in xs], solid_h, width=0.4, color=colors, yerr=yerr, capsize=3, error_kw={"lw": 0.8})
    ax.bar([x + 0.2 for x in xs], hatched_h, width=0.4, color="white", edgecolor=colors, hatch="////", lw=0.8)
    for x, h, e in zip(xs, solid_h, yerr or [0.0] * len(solid_h)):  # above the error bar
        ax.annotate(f"{h:+.1f}", (x - 0.2, h + math.copysign(e, h)), ha="center", va="bottom" if h >= 0 else "top",
                    fontsize=7)
    ax.set_xticks(list(xs), labels, rotation=35, ha="right")
    ax.axhline(0, color="black", lw=0.8)
    lo, hi = min(0.0, *solid_h, *hatched_h), max(0.0, *solid_h, *hatched_h)
    ax.set_ylim(lo - 0.08 * (hi - lo), hi + 0.35 * (hi - lo))  # room for the legend above the bars
    ax.legend(handles=[Patch(facecolor="dimgray", label=names[0]),
                       Patch(facecolor="white", edgecolor="dimgray", hatch="////", label=names[1])],
              fontsize=8, loc="upper left")
