"""(Not in the paper; issue 16.) Table 1's regime at 2x and 8x with sink tokens and two training-side remedies:
full-attention FT, short attention, S2-Attn (Table 1's runs, reused), short_sink and s2_sink (every query also reads
the first 4 tokens, as SinkLoRA's global tokens), S2-Attn with every k-th step full (k chosen on validation), and
S2-Attn with groups growing to the whole window over the second half of the steps; each tested with full attention
on the validation and the test split, the training FLOPs relative to full attention (ours and Llama-2-7B's at the
paper's context); and the diagnostics of sinks.py (Table 1's models tested with keys hidden, the attention mass on
the first tokens)."""

from __future__ import annotations

from ..config import LlamaConfig
from ..flops import run_flops, step_keys
from ..trainconfig import attention_at_step
from .compare import OUR_MODEL, figure, label_axes, mean, pct, quick_note, rel, resolve, sd, seeds_text, values
from .plan import Plan, group_of
from .runner import run_fields

NAME = "table1_sink"
DESCRIPTION = ("Table 1 at 2x / 8x with sink tokens and two remedies (not in the paper): full FT, short, S2-Attn, "
               "short_sink, s2_sink, S2-Attn + every k-th step full, S2-Attn + growing groups; full FT with PI, tested "
               "with full attention; Table 1's models also tested with keys hidden (sinks or distance?)")
ID_FIELDS = ("setting", "context", "test")
FACTORS = (2, 8)
SETTINGS = ("full", "short", "s2", "short_sink", "s2_sink", "s2_full_steps", "s2_grow")
DIAGNOSED = ("base+PI", "full", "short", "s2", "short_sink", "s2_sink")  # tested with keys hidden
TESTS = ("full", "no_first 4", "no_first 16", "window 0.5", "window_sinks 0.5 4")  # sinks.py
FULL_EVERY = (2, 4, 8)  # candidates for "every k-th step full": 50%, 25%, 12.5% of the steps
SELECT_FACTOR, SELECT_SEED = 8, 0  # … chosen at 8x (where S2-Attn's gap is largest in Table 1) on seed 0's run
SELECT_WITHIN = 0.01  # the largest k whose validation perplexity is within 1% of the best candidate's
MASS_K, MASS_DOCUMENTS = 4, 4  # attention mass on the first 4 tokens, over the first 4 validation documents
PAPER_CONTEXT = {2: 8192, 8: 32768}  # the FLOPs at Llama-2-7B's scale: the paper's context of each factor
PAPER = {"source": "LongLoRA v3 Table 1 (PAPER.md §1); SinkLoRA (Zhang 2024) for the sink idea",
         "setup": "the paper has no sink or remedy rows: Table 1's full / short / S2-Attn at 8192 and 32768 "
         "(2x / 8x) for reference. SinkLoRA reports S2-Attn closing 39% of the gap that its sink variant closes 92% "
         "of (Llama 2 7B, its own set-up).",
         "rows": [{"setting": s, "context": c, "test": "full", "ppl": p} for s, ps in
                  {"full": (8.02, 8.04), "short": (8.29, 9.47), "s2": (8.04, 8.08)}.items()
                  for c, p in zip((8192, 32768), ps)]}


def config(plan: Plan, n: int, setting: str, seed: int, every: int | None = None):
    """The TrainConfig of one setting at context n (full fine-tuning, Table 1's groups of n/4)."""
    if setting == "s2_full_steps":
        return plan.config(n, attention="s2", seed=seed).replace(full_attention_every=every)
    if setting == "s2_grow":
        return plan.config(n, attention="s2", seed=seed).replace(group_schedule="grow")
    return plan.config(n, attention=setting, seed=seed)


def flops(cfg) -> dict:
    """Training FLOPs (forward passes) relative to full attention at every step, each step attending as
    `attention_at_step` says: ours (the tiny model at the run's context) and Llama-2-7B's at the paper's context of
    the same factor (8192 for 2x, 32768 for 8x; none for the quick contexts)."""
    out = {}
    paper = PAPER_CONTEXT.get(round(cfg.rope_factor))
    for key, preset, context in (("flops_rel", "tiny", cfg.seq_len), ("flops_rel_7b", "llama2-7b", paper)):
        if context is None:
            continue
        c = cfg.replace(seq_len=context)
        keys = [step_keys(pattern, context, G, c.n_sink) for pattern, G in
                (attention_at_step(c, step) for step in range(c.steps))]
        out[key] = run_flops(LlamaConfig.from_preset(preset), context, keys)["relative_to_full"]
    return out


def choose_every(plan: Plan, runner) -> tuple[int, list[dict]]:
    """k of "every k-th step full", chosen on the validation split before the table's other runs: each candidate of
    FULL_EVERY trained at SELECT_FACTOR on seed SELECT_SEED; the largest k (the fewest full steps) whose sliding-window
    perplexity is within SELECT_WITHIN of the best candidate's. Returns (k, the candidates' rows)."""
    n, candidates = plan.context(SELECT_FACTOR), []
    for k in FULL_EVERY:
        run = runner.train(config(plan, n, "s2_full_steps", SELECT_SEED, k))
        candidates.append({"setting": "s2_full_steps", "every": k, "context": n, "seed": SELECT_SEED,
                           "test": "full", "selection": True, **runner.ppl(run, n), **run_fields(run)})
    best = min(c["ppl"] for c in candidates)
    return max(c["every"] for c in candidates if c["ppl"] <= best * (1 + SELECT_WITHIN)), candidates


def _tested(runner, run, n: int, setting: str, rope_factor: float | None = None) -> list[dict]:
    """The rows of one model: tested with full attention (validation, test split, attention mass), then with the
    keys hidden by each test of TESTS (the DIAGNOSED models only)."""
    full = {"test": "full", **runner.ppl(run, n, rope_factor=rope_factor),
            **runner.last_quarter(run, n, rope_factor=rope_factor)}
    full.update(runner.test_split(run, n, rope_factor=rope_factor))
    if setting not in DIAGNOSED:
        return [full]
    full["first_mass"] = runner.first_token_mass(run, n, MASS_K, MASS_DOCUMENTS, rope_factor=rope_factor)
    return [full] + [{"test": test, **runner.ppl(run, n, test, rope_factor),
                      **runner.last_quarter(run, n, test, rope_factor)} for test in TESTS[1:]]


def rows(plan: Plan, runner, seeds) -> list[dict]:
    every, candidates = choose_every(plan, runner)
    out = []
    for seed in seeds:
        for factor in FACTORS:
            n = plan.context(factor)
            for setting in SETTINGS:
                cfg = config(plan, n, setting, seed, every)
                run = runner.train(cfg)
                common = {"setting": setting, "context": n, "seed": seed, "group_size": group_of(run["config"]),
                          "every": every if setting == "s2_full_steps" else None, **flops(cfg), **run_fields(run)}
                out += [{**common, **r} for r in _tested(runner, run, n, setting)]
            if seed == seeds[0]:  # the starting point: the base with the run's interpolation, before any step
                factor = plan.rope_factor(n)
                out += [{"setting": "base+PI", "context": n, "seed": None, **r}
                        for r in _tested(runner, "base", n, "base+PI", rope_factor=factor)]
    return out + candidates  # reproduce() keeps the candidates apart, under "selection"


# reading the result --------------------------------------------------------------------------------------------
def compare(result: dict) -> list[dict]:
    """One row per context and setting, tested with full attention: perplexity (validation, mean and sd over seeds),
    relative to full FT, the share of S2-Attn's gap closed, the last quarter, the test split, the FLOPs."""
    rows_, out = [r for r in result["rows"] if r["test"] == "full"], []
    for n in sorted({r["context"] for r in rows_}):
        ref = {m: mean(rows_, m, setting="full", context=n) for m in ("ppl", "ppl_last_quarter", "ppl_test")}
        s2 = mean(rows_, setting="s2", context=n)
        for s in SETTINGS:
            ppl = values(rows_, setting=s, context=n)
            if not ppl:
                continue
            m = sum(ppl) / len(ppl)
            first = next(r for r in rows_ if r["setting"] == s and r["context"] == n)
            out.append({
                "label": f"{s} @ {n}", "setting": s, "context": n, "seeds": len(ppl), "ours": m,
                "ours_sd": sd(ppl), "ours_rel": rel(m, ref["ppl"]),
                "gap_closed": None if s2 is None or s2 == ref["ppl"] else (s2 - m) / (s2 - ref["ppl"]),
                "vs_full": resolve(ppl, values(rows_, setting="full", context=n)),
                "vs_s2": resolve(ppl, values(rows_, setting="s2", context=n)),
                "ours_lq_rel": rel(mean(rows_, "ppl_last_quarter", setting=s, context=n), ref["ppl_last_quarter"]),
                "test_rel": rel(mean(rows_, "ppl_test", setting=s, context=n), ref["ppl_test"]),
                "flops_rel": first.get("flops_rel"), "flops_rel_7b": first.get("flops_rel_7b"),
                "every": first.get("every")})
    return out


def diagnostics(result: dict) -> list[dict]:
    """Each diagnosed model (and the base + PI) under each test: perplexity and last quarter, mean over seeds, and
    relative to the same model tested with full attention (negative: hiding those keys helps)."""
    rows_ = result["rows"] + result.get("starting_point", [])
    out = []
    for n in sorted({r["context"] for r in rows_}):
        for s in DIAGNOSED:
            full = {m: mean(rows_, m, setting=s, context=n, test="full") for m in ("ppl", "ppl_last_quarter")}
            for test in TESTS:
                ppl = values(rows_, setting=s, context=n, test=test)
                if not ppl:
                    continue
                lq = mean(rows_, "ppl_last_quarter", setting=s, context=n, test=test)
                out.append({"label": f"{s} @ {n}: {test}", "setting": s, "context": n, "test": test,
                            "ours": sum(ppl) / len(ppl), "ours_rel": rel(sum(ppl) / len(ppl), full["ppl"]),
                            "vs_full_test": resolve(ppl, values(rows_, setting=s, context=n, test="full")),
                            "ours_lq": lq, "ours_lq_rel": rel(lq, full["ppl_last_quarter"]), "seeds": len(ppl)})
    return out


def mass(result: dict) -> dict:
    """{(setting, context): first_mass averaged over seeds} of the models tested with full attention."""
    rows_ = result["rows"] + result.get("starting_point", [])
    out = {}
    for r in rows_:
        if r.get("first_mass"):
            out.setdefault((r["setting"], r["context"]), []).append(r["first_mass"])
    return {key: {f: _average_nested([m[f] for m in ms]) for f in ("per_head", "by_position")}
            for key, ms in out.items()}


def _average_nested(xs: list):
    if isinstance(xs[0], list):
        return [_average_nested(list(col)) for col in zip(*xs)]
    return sum(xs) / len(xs)


def plot(result: dict, rows_: list[dict]):
    """Left: perplexity relative to full FT per setting and context (error bars: the sd over seeds, relative).
    Right: at the longest context, the gap against the training FLOPs at Llama-2-7B's scale (the trade-off)."""
    from ..plotting import color

    fig, (a, b) = figure()
    contexts = sorted({r["context"] for r in rows_})
    width = 0.8 / len(SETTINGS)
    for i, s in enumerate(SETTINGS):
        pts = [next((r for r in rows_ if r["setting"] == s and r["context"] == n), None) for n in contexts]
        xs = [c + (i - len(SETTINGS) / 2 + 0.5) * width for c in range(len(contexts))]
        ys = [100 * p["ours_rel"] if p else 0.0 for p in pts]
        errs = [100 * (p["ours_sd"] or 0.0) / p["ours"] * (1 + p["ours_rel"]) if p else 0.0 for p in pts]
        a.bar(xs, ys, width, yerr=errs, capsize=2, color=color(s), label=s, edgecolor="black", linewidth=0.4)
    a.set_xticks(range(len(contexts)), [f"{n} ({n // contexts[0] * FACTORS[0]}x)" for n in contexts])
    a.axhline(0, color="black", lw=0.8)
    label_axes(a, OUR_MODEL + quick_note(result), "target context", "perplexity vs full FT (%)", legend=7)
    longest = [r for r in rows_ if r["context"] == contexts[-1]]
    for r in longest:
        x = r.get("flops_rel_7b") or r.get("flops_rel")
        b.errorbar([100 * x], [100 * r["ours_rel"]], yerr=[100 * (r["ours_sd"] or 0) / r["ours"] * (1 + r["ours_rel"])],
                   marker="o", color=color(r["setting"]), label=r["setting"], capsize=2)
    b.axhline(0, color="black", lw=0.8)
    flops_of = "7B at the paper's context" if longest and longest[0].get("flops_rel_7b") else "ours"
    label_axes(b, f"the trade-off at {contexts[-1]}", f"training FLOPs vs full attention (%, {flops_of})",
               "perplexity vs full FT (%)", legend=7)
    return fig


def verdict(result: dict, rows_: list[dict]) -> str:
    sel = result.get("selection", [])
    every = next((r["every"] for r in rows_ if r["setting"] == "s2_full_steps"), None)
    parts = []
    for n in sorted({r["context"] for r in rows_}):
        here = {r["setting"]: r for r in rows_ if r["context"] == n}
        better = [s for s in SETTINGS[3:] if s in here and here[s]["vs_s2"] == "lower"]
        parts.append(f"at {n}: S2-Attn {pct(here['s2']['ours_rel'])}, short {pct(here['short']['ours_rel'])}; "
                     + ", ".join(f"{s} {pct(here[s]['ours_rel'])} (gap closed {_share(here[s]['gap_closed'])}, "
                                 f"FLOPs {_share(here[s]['flops_rel_7b'] or here[s]['flops_rel'])})"
                                 for s in SETTINGS[3:] if s in here)
                     + f"; better than S2-Attn: {', '.join(better) or 'none resolved'}")
    chosen = f"every {every}th step full (chosen on validation among k = " \
             f"{', '.join(str(c['every']) for c in sel)})" if every else ""
    return (f"Table 1 with sinks and remedies ({seeds_text(result)}; perplexity vs full-attention FT, FLOPs at "
            f"Llama-2-7B's scale relative to full attention; {chosen}): " + "; ".join(parts) + ". "
            + diagnosis(result))


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def diagnosis(result: dict) -> str:
    """Which keys break the grouped models under full attention: the first tokens (hiding them helps) or the far
    keys (a window helps, and putting the first tokens back in it does not undo it)."""
    d = {(r["setting"], r["context"], r["test"]): r for r in diagnostics(result)}
    parts = []
    for (s, n, test), r in sorted(d.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if s in ("short", "s2") and test == "full":
            get = {t: d.get((s, n, t)) for t in TESTS}
            parts.append(f"{s} @ {n}: " + ", ".join(f"{t} {pct(g['ours_rel'])} ({g['vs_full_test']})"
                                                    for t, g in get.items() if g and t != "full"))
    return "Tested with keys hidden (vs the same model under full attention): " + "; ".join(parts) + "."


def plot_diagnostics(result: dict):
    """One panel per context: each diagnosed model's perplexity under each test, relative to the same model under
    full attention (below zero: hiding those keys helps it)."""
    from ..plotting import color

    d = diagnostics(result)
    contexts = sorted({r["context"] for r in d})
    fig, axes = figure(ncols=len(contexts), width=5.5 * len(contexts))
    tests = TESTS[1:]
    width = 0.8 / len(DIAGNOSED)
    for ax, n in zip(axes, contexts):
        for i, s in enumerate(DIAGNOSED):
            pts = {r["test"]: r for r in d if r["setting"] == s and r["context"] == n}
            xs = [t + (i - len(DIAGNOSED) / 2 + 0.5) * width for t in range(len(tests))]
            ax.bar(xs, [100 * pts[t]["ours_rel"] if t in pts else 0.0 for t in tests], width, color=color(s),
                   label=s, edgecolor="black", linewidth=0.4)
        ax.set_xticks(range(len(tests)), [t.replace("window_sinks", "window+sinks") for t in tests], fontsize=8)
        ax.axhline(0, color="black", lw=0.8)
        label_axes(ax, f"{n} tokens: keys hidden at test time" + quick_note(result), "test",
                   "perplexity vs the same model, full attention (%)", legend=7)
    fig.tight_layout()
    return fig


def plot_mass(result: dict, context: int | None = None, settings=("base+PI", "full", "short", "s2", "s2_sink")):
    """Attention on the first MASS_K tokens under full attention at `context` (default the longest): a heatmap per
    model (layers x heads, queries of the window's second half, in %; colour from 0 to 100%), and the mean over
    layers and heads against the query's position."""
    from ..plotting import color

    m = mass(result)
    context = context or max(n for _, n in m)
    settings = [s for s in settings if (s, context) in m]
    fig, axes = figure(ncols=len(settings) + 1, width=2.3 * len(settings) + 4.5, height=3.0)
    for ax, s in zip(axes, settings):
        grid = m[(s, context)]["per_head"]
        ax.imshow(grid, vmin=0, vmax=1, cmap="Blues", aspect="auto")
        for li, row in enumerate(grid):
            for hi, v in enumerate(row):  # in %: a sink head would read 50-90
                ax.text(hi, li, f"{100 * v:.0f}" if v >= 0.01 else f"{100 * v:.1f}", ha="center", va="center",
                        fontsize=6, color="white" if v > 0.6 else "black")
        ax.set_title(f"{s}: max {100 * max(map(max, grid)):.1f}%", fontsize=9)
        ax.set_xlabel("head")
        ax.set_yticks(range(len(grid)))
        ax.grid(False)
    axes[0].set_ylabel("layer")
    last = axes[-1]
    for s in settings:
        pos = m[(s, context)]["by_position"]
        last.plot([(i + 0.5) * context / len(pos) for i in range(len(pos))], pos, marker=".", color=color(s), label=s)
    label_axes(last, f"mean over layers and heads, {context} tokens", "query position",
               f"attention on the first {MASS_K} tokens (log scale)", legend=7)
    last.set_yscale("log")
    fig.tight_layout()
    return fig
