"""Figure 4: passkey retrieval against length, the base and the 8x LoRA+ model (the paper's 32k of Llama 2's 4k),
each with and without "extended PI" (the interpolation factor times 1.5, as the paper's 32k -> 48k), with the code
prompt the base learned to retrieve from (passkey.py: a key line, real code as filler, `assert KEY == `) and with the
paper's prompt (English filler, which a byte-level model of Python sources does not follow).

Not in the paper: the 8x model of full fine-tuning (Table 2's full row), with its own interpolation, beside the LoRA+
one: does extension itself keep retrieval, whatever LoRA+'s pace? And the same run with the base's own share of
code-passkey documents in its fine-tuning data (PASSKEY_SHARE, each whole in one row): is the skill lost to the
interpolation, or to fine-tuning on data that never asks for it?"""

from __future__ import annotations

from .compare import average, figure, label_axes, quick_note, seeds_text
from .plan import Plan
from .runner import run_fields

NAME = "figure4"
DESCRIPTION = ("Figure 4: passkey retrieval accuracy against length, base and 8x LoRA+ model, each with and "
               "without extended PI (x1.5), code prompt and the paper's; not in the paper, the 8x full-FT model, "
               "without and with 2% passkey documents in its fine-tuning data")
ID_FIELDS = ("model", "format", "target")
FACTOR = 8  # the extended model: the paper's 32768 = 8x Llama 2's 4096
PASSKEY_SHARE = 0.02  # the base's pretraining share of code-passkey documents (data/tiny-base/pretrain_metrics.json)
FORMATS = ("code", "paper")  # passkey.PASSKEY_FORMATS: the code prompt first (the one the base retrieves from)
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
    """Every 2L from 2L to 1.5 x the extended model's context (12L), and L itself, from ~256 tokens (the prompt's
    floor)."""
    L = plan.context(1)
    top = int(EXTENDED_PI * FACTOR * L)
    lengths = sorted({L, *range(2 * L, top + 1, 2 * L)})
    lengths = [n for n in lengths if n >= MIN_PASSKEY_TOKENS] or [MIN_PASSKEY_TOKENS]
    if plan.quick:
        lengths = sorted({lengths[0], max(lengths[0], FACTOR * L)})
    return lengths


def rows(plan: Plan, runner, seeds) -> list[dict]:
    out, n = [], plan.context(FACTOR)
    lengths, factor = passkey_lengths(plan), n / plan.base_context
    for seed in seeds:
        run = runner.train(plan.config(n, method="lora_plus", attention="s2", seed=seed))  # = table2's LoRA+
        full = runner.train(plan.config(n, method="full", attention="s2", seed=seed))  # = table2's full FT
        keep = runner.train(plan.config(n, method="full", attention="s2", seed=seed).replace(
            passkey_share=PASSKEY_SHARE, passkey_placement="row"))  # the same, its data as the base's
        for model, source, rope in (("base", "base", 1.0), ("base + extended PI", "base", EXTENDED_PI),
                                    ("extended", run, factor), ("extended + extended PI", run, EXTENDED_PI * factor),
                                    ("extended (full FT)", full, factor),
                                    ("extended (full FT, passkey docs)", keep, factor)):
            trained = plan.base_context if source == "base" else n
            if source == "base" and seed != seeds[0]:  # the base is not trained: tested once
                continue
            for fmt in FORMATS:
                for r in runner.passkey(source, lengths, plan.passkey_trials, rope, fmt):
                    out.append({"model": model, "format": fmt, "rope_factor": rope, "trained_context": trained,
                                "seed": seed if source != "base" else None, **r,
                                **({} if source == "base" else run_fields(source))})
    return out


def _format(row: dict) -> str:
    return row.get("format", "paper")  # files made before the code prompt: the paper's


def compare(result: dict) -> list[dict]:
    """Accuracy per model, prompt format and length, the mean over seeds (the base, untrained, is tested once)."""
    rows_, out = result["rows"], []
    for fmt in dict.fromkeys(_format(r) for r in rows_):
        for model in dict.fromkeys(r["model"] for r in rows_):
            for length in sorted({r["length"] for r in rows_ if r["model"] == model and _format(r) == fmt}):
                accs = [r["accuracy"] for r in rows_ if r["model"] == model and r["length"] == length
                        and _format(r) == fmt]
                out.append({"label": model, "format": fmt, "length": length, "ours": sum(accs) / len(accs)})
    return out


# the models' colours (none in plotting.SETTING_COLORS): the base gray, the extended model LoRA+'s green; extended PI
# dashed with hollow markers. Ours lie on top of each other at 0%: the markers shrink line by line so each shows
F4_STYLE = {"base": ("tab:gray", "-", "o", 9), "base + extended PI": ("tab:gray", "--", "s", 7),
            "extended": ("tab:green", "-", "^", 5.5), "extended + extended PI": ("tab:green", "--", "v", 4),
            "extended (full FT)": ("black", "-", "D", 3),  # not in the paper: the 8x full-FT model of Table 2
            "extended (full FT, passkey docs)": ("tab:blue", "-", "P", 5)}  # and it with 2% passkey documents


def plot(result: dict, rows_: list[dict]):
    """Passkey accuracy against prompt length: the paper's points read off its Figure 4 (left) and ours (right), one
    colour per model and a dashed line for extended PI, in both panels."""
    from .compare import fonts

    fig, (a, b) = figure()
    series = ([(m, sorted((r["length"], r["accuracy"]) for r in result["paper"]["rows"] if r["model"] == m))
               for m in dict.fromkeys(r["model"] for r in result["paper"]["rows"])],
              [(m, [(r["length"], r["ours"]) for r in rows_ if r["label"] == m and r["format"] == rows_[0]["format"]])
               for m in dict.fromkeys(r["label"] for r in rows_)])
    for ax, lines in zip((a, b), series):
        for model, pts in sorted(lines, key=lambda ml: list(F4_STYLE).index(ml[0])):
            colour, ls, marker, size = F4_STYLE[model]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], color=colour, ls=ls, marker=marker, ms=size,
                    mfc="white" if ls == "--" else colour, label=model)
    n = max((r["trained_context"] for r in result["rows"] if r["model"] == "extended"), default=0)
    fmt = rows_[0]["format"]
    titles = ("paper: Llama2 7B, LongLoRA at 32k (read off the plot)",
              f"ours: tiny byte-level LLaMA, LoRA+ at {n}" + quick_note(result))
    for ax, title, prompt in zip((a, b), titles, ("the paper's", "code" if fmt == "code" else "the paper's")):
        ax.set_ylim(-5, 105)
        label_axes(ax, title, "prompt length (tokens)", f"passkey accuracy (%, {prompt} prompt)", legend=8)
    return fonts(fig)


def verdict(result: dict, rows_: list[dict]) -> str:
    n = max((r["trained_context"] for r in result["rows"] if r["model"] == "extended"), default=None)
    L = next(r["trained_context"] for r in result["rows"] if r["model"] == "base")
    parts = []
    for fmt in dict.fromkeys(r["format"] for r in rows_):
        get = {m: [r for r in rows_ if r["label"] == m and r["format"] == fmt] for m in F4_STYLE}
        ext, base = get["extended"], get["base"]
        part = (f"{'the code prompt' if fmt == 'code' else 'the paper' + chr(39) + 's prompt'}: the extended model "
                f"{_share([r['ours'] for r in ext if r['length'] <= n])} up to its trained {n} tokens and "
                f"{_share([r['ours'] for r in ext if r['length'] > n])} beyond "
                f"({_share([r['ours'] for r in get['extended + extended PI'] if r['length'] > n])} with extended "
                f"PI), the base {_share([r['ours'] for r in base if r['length'] <= L])} within its own {L} and "
                f"{_share([r['ours'] for r in base if r['length'] > L])} beyond")
        for model, what in (("extended (full FT)", "full-FT model"),
                            ("extended (full FT, passkey docs)", f"full-FT model with {PASSKEY_SHARE:.0%} passkey "
                             "documents")):
            if get[model]:  # files made before these rows have none
                pts = [(r["length"], r["ours"]) for r in get[model]]
                part += (f"; the {n}-token {what} (not in the paper) {_share([a for x, a in pts if x <= L])} "
                         f"within {L}, {_share([a for x, a in pts if L < x <= n])} from there to {n} and "
                         f"{_share([a for x, a in pts if x > n])} beyond")
        if max(r["ours"] for r in rows_ if r["format"] == fmt) == 0:
            part += " (no model retrieves the key at any length)"
        parts.append(part)
    return (f"Figure 4 ({seeds_text(result)}; mean passkey accuracy; the paper: 100% to 32k, the base 100% within "
            "its 4k and 0% past it, extended PI 60-90% at 33-45k): " + "; ".join(parts) + ".")


def _share(values: list[float]) -> str:
    return "n/a" if not values else f"{100 * average(values):.0f}%"
