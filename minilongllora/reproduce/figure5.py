"""Figure 5: validation perplexity against fine-tuning steps, full fine-tuning vs LoRA+, S2-Attn at 2x (the paper's 8k). Ours is the
trainer's whole-window validation perplexity (`val_window_ppl`; `val_ppl` in records made before its rename)."""

from __future__ import annotations

from .compare import OUR_MODEL, PAPER_MODEL, figure, label_axes, mean, pct, quick_note, rel, seeds_text
from .plan import Plan
from .record import window_ppl

NAME = "figure5"
DESCRIPTION = "Figure 5: validation perplexity against fine-tuning steps, full FT vs LoRA+, S2-Attn at 2x"
ID_FIELDS = ("setting", "step")
PAPER = {"source": "LongLoRA v3 Figure 5 (PAPER.md §1)", "setup": "Llama2 7B with S2-Attn, target 8192, "
         "RedPajama, PG19 validation perplexity every 100 of 1000 steps (values read from the plot labels).",
         "rows": [{"setting": s, "step": 100 * i, "val_ppl": v} for s, vs in
                  (("full", (15.82, 8.17, 8.1, 8.07, 8.06, 8.03, 7.99, 7.99, 7.96, 7.95, 7.94)),
                   ("lora_plus", (15.82, 8.63, 8.16, 8.15, 8.14, 8.12, 8.11, 8.1, 8.08, 8.04, 8.02)))
                  for i, v in enumerate(vs)]}


def rows(plan: Plan, runner, seeds) -> list[dict]:
    out, n = [], plan.context(2)
    for seed in seeds:
        for setting in ("full", "lora_plus"):
            cfg = plan.config(n, method=setting, attention="s2", seed=seed)
            run = runner.train(cfg)
            start = runner.window_ppl_at_start(cfg)
            out.append({"setting": setting, "step": 0, "tokens": 0, "val_window_ppl": start, "context": n,
                        "seed": seed, "run": run["key"]})
            out += [{"setting": setting, "step": m["step"], "tokens": m["tokens"], "val_window_ppl": window_ppl(m),
                     "context": n, "seed": seed, "run": run["key"]} for m in run["metrics"]
                    if window_ppl(m) is not None]
    return out


def compare(result: dict) -> list[dict]:
    rows_, out = result["rows"], []
    metric = "val_window_ppl" if any("val_window_ppl" in r for r in rows_) else "val_ppl"  # before the rename
    for s in dict.fromkeys(r["setting"] for r in rows_):
        start = mean(rows_, metric, setting=s, step=0)
        for step in sorted({r["step"] for r in rows_ if r["setting"] == s}):
            v = mean(rows_, metric, setting=s, step=step)
            out.append({"label": s, "step": step, "ours": v, "ours_rel_start": rel(v, start)})
    return out


F5_NAMES = {"full": ("full FT", "full_ft"), "lora_plus": ("LoRA+", "lora_plus")}  # label, plotting.SETTING_COLORS
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
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color(key), label=name)
        label_axes(ax, title, "fine-tuning step", ylabel)
        values = [p[1] for pts in lines.values() for p in pts]
        log_axis(ax, "y", ticks=[t for t in F5_TICKS if min(values) <= t <= max(values)] or None)
    return fonts(fig)


def verdict(result: dict, rows_: list[dict]) -> str:
    full, lora = ({r["step"]: r["ours"] for r in rows_ if r["label"] == s} for s in ("full", "lora_plus"))
    p_full, p_lora = ({r["step"]: r["val_ppl"] for r in result["paper"]["rows"] if r["setting"] == s}
                      for s in ("full", "lora_plus"))
    end, best = max(full), min(full, key=full.get)
    early = sorted(full)[min(2, len(full) - 1)]  # the first logged steps after 0: where the paper's curves differ
    return (f"Figure 5 ({seeds_text(result)}): paper, LoRA+ is {pct(p_lora[100] / p_full[100] - 1)} above full FT at "
            f"step 100 and {pct(p_lora[1000] / p_full[1000] - 1)} at step 1000, both falling throughout; ours, LoRA+ "
            f"is {pct(lora[early] / full[early] - 1)} above full FT at step {early} and "
            f"{pct(lora[end] / full[end] - 1)} at step {end} (final {full[end]:.2f} vs {lora[end]:.2f}), and full "
            f"FT's best perplexity is at step {best} ({full[best]:.2f}), "
            + ("so the curves turn up before the end." if best < end else "still falling at the end."))
