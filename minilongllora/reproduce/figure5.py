"""Figure 5: validation perplexity against fine-tuning steps, full fine-tuning vs LoRA+, S2-Attn at 2x (the paper's
8k). Ours is the trainer's whole-window validation perplexity (`val_window_ppl`; `val_ppl` in records made before
its rename).

Not in the paper: LoRA+ also at ten times the regime's learning rate (`lora_plus_lr10`), the usual LoRA practice
(LoRA rates ~10x full fine-tuning's), to test whether LoRA+ lags full fine-tuning for want of learning rate; and at
that rate trained with full attention instead of S2-Attn (`lora_plus_lr10_full_attn`): is its turn LoRA's or
S2-Attn's?"""

from __future__ import annotations

from .compare import (OUR_MODEL, PAPER_MODEL, RULE, figure, label_axes, mean, pct, quick_note, rel, resolve, sd,
                      seeds_text, than, values)
from .plan import LR, Plan
from .record import window_ppl

NAME = "figure5"
DESCRIPTION = "Figure 5: validation perplexity against fine-tuning steps, full FT vs LoRA+, S2-Attn at 2x"
ID_FIELDS = ("setting", "step")
SETTINGS = {"full": ("full", 1.0, "s2"), "lora_plus": ("lora_plus", 1.0, "s2"),
            "lora_plus_lr10": ("lora_plus", 10.0, "s2"), "lora_plus_lr10_full_attn": ("lora_plus", 10.0, "full")}
# setting -> (method, learning rate as a multiple of the regime's LR[method], training attention); the last two are
# the diagnostics
PAPER = {"source": "LongLoRA v3 Figure 5 (PAPER.md §1)", "setup": "Llama2 7B with S2-Attn, target 8192, "
         "RedPajama, PG19 validation perplexity every 100 of 1000 steps (values read from the plot labels).",
         "rows": [{"setting": s, "step": 100 * i, "val_ppl": v} for s, vs in
                  (("full", (15.82, 8.17, 8.1, 8.07, 8.06, 8.03, 7.99, 7.99, 7.96, 7.95, 7.94)),
                   ("lora_plus", (15.82, 8.63, 8.16, 8.15, 8.14, 8.12, 8.11, 8.1, 8.08, 8.04, 8.02)))
                  for i, v in enumerate(vs)]}


def rows(plan: Plan, runner, seeds) -> list[dict]:
    out, n = [], plan.context(2)
    for seed in seeds:
        for setting, (method, times, attention) in SETTINGS.items():
            cfg = plan.config(n, method=method, attention=attention, seed=seed, lr=times * LR[method])
            run = runner.train(cfg)
            start = runner.window_ppl_at_start(cfg)
            fields = {"context": n, "seed": seed, "lr": cfg.lr, "attention": attention, "run": run["key"]}
            out.append({"setting": setting, "step": 0, "tokens": 0, "val_window_ppl": start, **fields})
            out += [{"setting": setting, "step": m["step"], "tokens": m["tokens"], "val_window_ppl": window_ppl(m),
                     **fields} for m in run["metrics"]
                    if window_ppl(m) is not None]
            # the final model as every table tests it: sliding-window perplexity, validation and test split
            out[-1].update(**runner.ppl(run, n), **runner.test_split(run, n))
    return out


def compare(result: dict) -> list[dict]:
    rows_, out = result["rows"], []
    metric = "val_window_ppl" if any("val_window_ppl" in r for r in rows_) else "val_ppl"  # before the rename
    for s in dict.fromkeys(r["setting"] for r in rows_):
        start = mean(rows_, metric, setting=s, step=0)
        for step in sorted({r["step"] for r in rows_ if r["setting"] == s}):
            v, vs = mean(rows_, metric, setting=s, step=step), values(rows_, metric, setting=s, step=step)
            out.append({"label": s, "step": step, "ours": v, "ours_sd": sd(vs), "ours_rel_start": rel(v, start),
                        "seeds": len(vs)})
    return out


F5_NAMES = {"full": ("full FT", "full_ft"), "lora_plus": ("LoRA+", "lora_plus"),  # label, plotting.SETTING_COLORS
            "lora_plus_lr10": ("LoRA+ at 10x lr (not in the paper)", "lora_plus_lr10"),
            "lora_plus_lr10_full_attn": ("LoRA+ at 10x lr, full attention (not in the paper)",
                                         "lora_plus_lr10_full_attn")}
F5_TICKS = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 40, 60, 80, 100)  # the log axis's labels, where the data reach


def plot(result: dict, rows_: list[dict]):
    """Validation perplexity against the fine-tuning step: the paper's PG19 perplexity (left) and ours (right), the
    trainer's whole-window validation perplexity (full attention), one colour per method in both panels."""
    from ..plotting import color, log_axis
    from .compare import fonts

    fig, (a, b) = figure()
    series = ({s: sorted((r["step"], r["val_ppl"]) for r in result["paper"]["rows"] if r["setting"] == s)
               for s in dict.fromkeys(r["setting"] for r in result["paper"]["rows"])},
              {s: [(r["step"], r["ours"]) for r in rows_ if r["label"] == s]
               for s in dict.fromkeys(r["label"] for r in rows_)})
    labels = ("PG19 validation perplexity", "validation perplexity (whole windows, full attention)")
    for ax, lines, title, ylabel in zip((a, b), series, (PAPER_MODEL, OUR_MODEL + quick_note(result)), labels):
        for s, pts in lines.items():
            name, key = F5_NAMES.get(s, (s, s))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color(key), label=name,
                    linestyle="--" if "_lr10" in s else "-")
            spread = [r.get("ours_sd") for r in rows_ if r["label"] == s] if lines is series[1] else []
            if any(spread):  # ours over seeds: the mean and a band of +- one standard deviation
                lo, hi = ([p[1] + k * (e or 0.0) for p, e in zip(pts, spread)] for k in (-1, 1))
                ax.fill_between([p[0] for p in pts], lo, hi, color=color(key), alpha=0.25, linewidth=0)
        label_axes(ax, title, "fine-tuning step", ylabel)
        values = [p[1] for pts in lines.values() for p in pts]
        log_axis(ax, "y", ticks=[t for t in F5_TICKS if min(values) <= t <= max(values)] or None)
    return fonts(fig)


def verdict(result: dict, rows_: list[dict]) -> str:
    """The paper's two observations under the verdict rule (compare.resolve): LoRA+ against full FT a tenth of the
    way in and at the end, and whether a curve has turned up (its last step against its best)."""
    rows, metric = result["rows"], ("val_window_ppl" if any("val_window_ppl" in r for r in result["rows"])
                                    else "val_ppl")
    curves = {s: {r["step"]: r for r in rows_ if r["label"] == s} for s in SETTINGS}
    full, lora, lr10, lr10_full = (curves[s] for s in SETTINGS)
    p_full, p_lora = ({r["step"]: r["val_ppl"] for r in result["paper"]["rows"] if r["setting"] == s}
                      for s in ("full", "lora_plus"))
    end = max(full)
    early = min((s for s in full if s > 0), key=lambda s: abs(s - end / 10))  # the paper's step 100 of 1000

    def vs_full(step, setting="lora_plus"):
        gap = curves[setting][step]["ours"] / full[step]["ours"] - 1
        res = resolve(values(rows, metric, setting=setting, step=step), values(rows, metric, setting="full", step=step))
        return f"{pct(gap)} ({than(res, 'full FT')}) at step {step}"

    def turn(setting):
        """Where the curve is best, and whether its last point is resolved above that (it turned up)."""
        curve = curves[setting]
        best = min(curve, key=lambda k: curve[k]["ours"])
        if best == end:
            return "best at its last step"
        res = resolve(values(rows, metric, setting=setting, step=end), values(rows, metric, setting=setting, step=best))
        return f"best at step {best} ({pm(curve[best])}), its last step against that: {res}"

    prev = max(k for k in lora if k < end)
    return (f"Figure 5 ({seeds_text(result)}; {RULE}): paper, LoRA+ is {pct(p_lora[100] / p_full[100] - 1)} above "
            f"full FT at step 100 and {pct(p_lora[1000] / p_full[1000] - 1)} at step 1000, both falling throughout; "
            f"ours, LoRA+ is {vs_full(early)} and {vs_full(end)} (final {pm(full[end])} vs {pm(lora[end])}); full FT "
            f"{turn('full')}; LoRA+ moved {pct(lora[end]['ours'] / lora[prev]['ours'] - 1)} over its last "
            f"{end - prev} steps"
            + ("" if not lr10 else f"; at ten times the learning rate (not in the paper) LoRA+ is "
               f"{vs_full(early, 'lora_plus_lr10')} and {vs_full(end, 'lora_plus_lr10')} ({pm(lr10[end])}), "
               f"{turn('lora_plus_lr10')}")
            + ("" if not lr10_full else f"; trained with full attention instead at that rate (not in the paper), "
               f"{vs_full(early, 'lora_plus_lr10_full_attn')} and {vs_full(end, 'lora_plus_lr10_full_attn')} "
               f"({pm(lr10_full[end])}), {turn('lora_plus_lr10_full_attn')}") + "."
            + _final(rows, end))


def _final(rows: list[dict], end: int) -> str:
    """The final models by sliding-window perplexity (every table's metric), validation and test split, each setting
    against full FT under the verdict rule; a note in files made before these were recorded."""
    if not values(rows, "ppl_test", setting="full", step=end):
        return " The test split is not in this file (made before it was added)."

    def against_full(setting, metric, split):
        gap = rel(mean(rows, metric, setting=setting, step=end), mean(rows, metric, setting="full", step=end))
        res = resolve(values(rows, metric, setting=setting, step=end), values(rows, metric, setting="full", step=end))
        return f"{pct(gap)} on {split} ({than(res, 'full FT')})"

    parts = [f"{F5_NAMES[s][0]} {against_full(s, 'ppl', 'validation')}, {against_full(s, 'ppl_test', 'test')}"
             for s in SETTINGS if s != "full" and values(rows, "ppl", setting=s, step=end)]
    return " The final models by sliding-window perplexity, against full FT: " + "; ".join(parts) + "."


def pm(row: dict) -> str:
    """A compared row's mean, and its standard deviation over seeds when there is one."""
    return f"{row['ours']:.2f}" + (f" ± {row['ours_sd']:.2f}" if row.get("ours_sd") is not None else "")
