"""Figure 4: passkey retrieval against length, the base and the 16x LoRA+ model, each with and without "extended PI"
(the interpolation factor times 1.5, as the paper's 32k -> 48k)."""

from __future__ import annotations

from .compare import average, figure, label_axes, mean, quick_note, seeds_text
from .plan import Plan
from .runner import run_fields

NAME = "figure4"
DESCRIPTION = ("Figure 4: passkey retrieval accuracy against length, base and 16x LoRA+ model, each with and "
               "without extended PI (x1.5)")
ID_FIELDS = ("model", "target")
EXTENDED_PI = 1.5  # Figure 4's "extended PI": 32k -> 48k in the paper, the interpolation factor times 1.5
MIN_PASSKEY_TOKENS = 256  # the passkey prompt without filler is ~240 byte tokens
PAPER = {"source": "LongLoRA v3 Figure 4 and App. A.2 (PAPER.md §1)", "setup": "Llama2 7B fine-tuned with "
         "LongLoRA at 32768; passkey tested from 1k to 34k, 10 trials per length; 'extended PI' = max "
         "position embeddings 48k in PI, no further fine-tuning.",
         "note": "no table of values in the paper; approximate values read off the plot (not exact)",
         "rows": [{"model": "extended", "length": 32768, "accuracy": 1.0},
                  {"model": "extended", "length": 33792, "accuracy": 0.8},
                  {"model": "extended", "length": 34816, "accuracy": 0.0},
                  {"model": "extended + extended PI", "length": 33792, "accuracy": 0.9},
                  {"model": "extended + extended PI", "length": 49152, "accuracy": 0.2},
                  {"model": "base", "length": 4096, "accuracy": 1.0},
                  {"model": "base", "length": 5120, "accuracy": 0.0},
                  {"model": "base + extended PI", "length": 6144, "accuracy": 0.4},
                  {"model": "base + extended PI", "length": 8192, "accuracy": 0.3}],
         "text": "no retrieval accuracy degradation until 33k or 34k; with extended PI 60%-90% over 33k-45k; "
                 "Llama2 7B drops sharply after 4k, even with PI extended"}


def passkey_lengths(plan: Plan) -> list[int]:
    """Every 2L from 2L to 1.5 x the 16x model's context (24L), and L itself, from ~256 tokens (the prompt's floor)."""
    L = plan.context(1)
    top = int(EXTENDED_PI * 16 * L)
    lengths = sorted({L, *range(2 * L, top + 1, 2 * L)})
    lengths = [n for n in lengths if n >= MIN_PASSKEY_TOKENS] or [MIN_PASSKEY_TOKENS]
    if plan.quick:
        lengths = sorted({lengths[0], max(lengths[0], 16 * L)})
    return lengths


def rows(plan: Plan, runner, seeds) -> list[dict]:
    out, n = [], plan.context(16)
    lengths, factor = passkey_lengths(plan), n / plan.base_context
    for seed in seeds:
        run = runner.train(plan.config(n, method="lora_plus", attention="s2", seed=seed))  # = table2's LoRA+
        for model, source, rope in (("base", "base", 1.0), ("base + extended PI", "base", EXTENDED_PI),
                                    ("extended", run, factor), ("extended + extended PI", run, EXTENDED_PI * factor)):
            trained = plan.base_context if source == "base" else n
            for r in runner.passkey(source, lengths, plan.passkey_trials, rope):
                out.append({"model": model, "rope_factor": rope, "trained_context": trained, "seed": seed, **r,
                            **({} if source == "base" else run_fields(run))})
    return out


def compare(result: dict) -> list[dict]:
    rows_, out = result["rows"], []
    for model in dict.fromkeys(r["model"] for r in rows_):
        for length in sorted({r["length"] for r in rows_ if r["model"] == model}):
            out.append({"label": model, "length": int(length),
                        "ours": mean(rows_, "accuracy", model=model, length=length)})
    return out


# the models' colours (none in plotting.SETTING_COLORS): the base gray, the extended model LoRA+'s green; extended PI
# dashed with hollow markers. Ours lie on top of each other at 0%: the markers shrink line by line so each shows
F4_STYLE = {"base": ("tab:gray", "-", "o", 9), "base + extended PI": ("tab:gray", "--", "s", 7),
            "extended": ("tab:green", "-", "^", 5.5), "extended + extended PI": ("tab:green", "--", "v", 4)}


def plot(result: dict, rows_: list[dict]):
    """Passkey accuracy against prompt length: the paper's points read off its Figure 4 (left) and ours (right), one
    colour per model and a dashed line for extended PI, in both panels."""
    from .compare import fonts

    fig, (a, b) = figure()
    series = ([(m, sorted((r["length"], r["accuracy"]) for r in result["paper"]["rows"] if r["model"] == m))
               for m in dict.fromkeys(r["model"] for r in result["paper"]["rows"])],
              [(m, [(r["length"], r["ours"]) for r in rows_ if r["label"] == m])
               for m in dict.fromkeys(r["label"] for r in rows_)])
    for ax, lines in zip((a, b), series):
        for model, pts in sorted(lines, key=lambda ml: list(F4_STYLE).index(ml[0])):
            colour, ls, marker, size = F4_STYLE[model]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], color=colour, ls=ls, marker=marker, ms=size,
                    mfc="white" if ls == "--" else colour, label=model)
    titles = ("paper: Llama2 7B, LongLoRA at 32k (read off the plot)",
              "ours: tiny byte-level LLaMA, 16x LoRA+" + quick_note(result))
    for ax, title in zip((a, b), titles):
        ax.set_ylim(-5, 105)
        label_axes(ax, title, "prompt length (tokens)", "passkey accuracy (%, the paper's prompt)", legend=8)
    return fonts(fig)


def verdict(result: dict, rows_: list[dict]) -> str:
    trained = result["rows"][0]
    ext = [r for r in rows_ if r["label"] == "extended"]
    n = max((r["trained_context"] for r in result["rows"] if r["model"] == "extended"), default=None)
    inside = [r["ours"] for r in ext if r["length"] <= n]
    outside = [r["ours"] for r in ext if r["length"] > n]
    L = trained["trained_context"]
    base_in = [r["ours"] for r in rows_ if r["label"] == "base" and r["length"] <= L]
    base = [r["ours"] for r in rows_ if r["label"] == "base" and r["length"] > L]
    text = (f"Figure 4 ({seeds_text(result)}): the extended model retrieves the passkey {100 * average(inside):.0f}% "
            f"of the time up to its trained {n} tokens and {100 * average(outside):.0f}% beyond; the base "
            f"{100 * average(base_in):.0f}% within its own {L} tokens and {100 * average(base):.0f}% beyond (paper: "
            "100% to 32k, the base 100% within its 4k and 0% past it)")
    if max(r["ours"] for r in rows_) == 0:
        text += ": no model here retrieves the key at any length, so the finding cannot show at this scale"
    return text + "."
