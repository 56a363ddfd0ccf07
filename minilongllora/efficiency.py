"""Figures and tables of cost (notebooks 02 and 06): attention FLOPs against context length, Table 11 as bars, the
speed-up the FLOPs predict beside the paper's hours (Tables 12, 13, App. B.5), and this project's CPU benchmark files
(`benchmarks/results/`, written by `benchmarks/bench_attention.py` and `bench_vs_hf.py`) read and drawn.

The benchmark readers only format what a file holds: they never measure, and a file from a `--quick` run is labelled
a smoke test. `tests/test_plotting.py` checks them on small hand-made files.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .flops import flops_breakdown
from .reproduce.table11 import PAPER_TABLE13, speedups
from .plotting import color, log_axis, plain_number

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
KINDS = (("attn", "Attn: q·kᵀ and probs·v"), ("proj", "Proj: q, k, v, o"), ("ffn", "FFN: SwiGLU MLP"),
         ("others", "Others: LM head, norms, RoPE"))
MODEL_STYLES = {"tiny": ("o", "-"), "small": ("s", "--")}  # marker, line style: the colour is the setting's


def _label_panels(axes, sizes, what: str, ylabels, titles, legend_size=None) -> None:
    """The three panels (time, speed-up, memory) of a benchmark figure: log-2 lengths on x, labels, grid, legend."""
    for ax, ylabel, title in zip(axes, ylabels, titles):
        log_axis(ax, "x", sizes, base=2)
        ax.set(xlabel="sequence length n (tokens)", ylabel=ylabel, title=f"{what}: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)


def draw_flops_growth(config, contexts: list[int]):
    """Left: forward FLOPs of attention (full, groups of n/4) and of everything else against n. Right: the size of
    one layer's score matrices in bf16, what naive attention stores (Flash-Attention2 never does)."""
    rows = [flops_breakdown(config, c) for c in contexts]
    ctx = np.array(contexts, dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(ctx, [r["attn_full"] for r in rows], "o-", color=color("full"), label="attention, full")
    ax1.plot(ctx, [r["attn_s2"] for r in rows], "s-", color=color("s2"), label="attention, groups of n/4 (S2-Attn)")
    ax1.plot(ctx, [r["proj"] + r["ffn"] + r["others"] for r in rows], "^--", color=color("others"),
             label="projections + MLP + rest (same for both)")
    if {2048, 8192} <= set(contexts):  # the abstract's 16x: (8192 / 2048)², and what groups of n/4 save
        full = {r["context"]: r["attn_full"] for r in rows}
        ax1.annotate("", xy=(8192, full[8192]), xytext=(8192, full[2048]),
                     arrowprops={"arrowstyle": "->", "color": color("predicted")})
        ax1.hlines(full[2048], 2048, 8192, color=color("predicted"), ls=":")
        ax1.text(8192 * 1.1, full[2048] * 2.5, "×16 from 2k to 8k", color=color("predicted"))
    ax1.set_ylabel(f"forward TFLOPs ({config_name(config)}, batch 1)")
    ax1.set_title("Attention FLOPs grow as n², groups divide them by 4")
    gib = config.n_heads * 2 / 2**30  # bf16 bytes per score, in GiB, for all heads
    ax2.plot(ctx, gib * ctx**2, "o-", color=color("full"), label="full: n × n per head")
    ax2.plot(ctx, gib * ctx * (ctx / 4), "s-", color=color("s2"), label="groups: n/G blocks of G × G, G = n/4")
    ax2.axhline(80e9 / 2**30, color="gray", ls=":", label="80 GB = 74.5 GiB (one A100)")
    ax2.set_ylabel("score matrices of one layer (GiB, bf16)")
    ax2.set_title(f"Size of the score matrices ({config.n_heads} heads)")
    for ax in (ax1, ax2):
        log_axis(ax, "x", contexts, base=2)
        log_axis(ax, "y")
        ax.set_xlabel("context length n (tokens)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def config_name(config) -> str:
    return "Llama-2-7B" if (config.dim, config.n_layers) == (4096, 32) else f"dim {config.dim}"


def draw_flops_bars(rows: list[dict]):
    """Table 11 as stacked bars (linear axis, so the small terms stay visible), full attention beside S2-Attn
    (hatched); right, the same as % of the full-attention total at that context."""
    contexts = [r["context"] for r in rows]
    total_full = np.array([r["total_full"] for r in rows])
    x, w = np.arange(len(rows)), 0.38
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4))
    for ax, percent in zip(axes, (False, True)):
        for offset, s2 in ((-w / 2 - 0.01, False), (w / 2 + 0.01, True)):
            bottom = np.zeros(len(rows))
            for key, label in KINDS:
                vals = np.array([r[("attn_s2" if s2 else "attn_full") if key == "attn" else key] for r in rows])
                vals = 100 * vals / total_full if percent else vals
                ax.bar(x + offset, vals, w, bottom=bottom, color=color(key), edgecolor="white", lw=0.5,
                       hatch="///" if s2 else None, label=None if s2 else label)
                bottom += vals
            for xi, b in zip(x + offset, bottom):
                ax.text(xi, b, f"{b:.0f}%" if percent else f"{b:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(np.concatenate([x - w / 2, x + w / 2]), [f"full\n{plain_number(c)}" for c in contexts]
                      + [f"S2\n{plain_number(c)}" for c in contexts])
        ax.set_xlabel("attention and context length (tokens)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("forward TFLOPs (Llama-2-7B, batch 1)")
    axes[0].set_title("Table 11 as bars (hatched: S2-Attn)")
    axes[1].set_ylabel("% of the full-attention total")
    axes[1].set_title("The same, as % of full attention's total")
    axes[1].set_ylim(0, 112)
    axes[0].legend(loc="upper left")
    fig.tight_layout()
    return fig


def draw_speedups(rows: list[dict]):
    """The speed-up of S2-Attn the FLOPs predict against the paper's measured hours (Tables 12 and 13)."""
    s = speedups(rows)
    ctx = sorted(s)
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    ax.plot(ctx, [s[c]["predicted"] for c in ctx], "o--", color=color("predicted"), label="FLOP-predicted (Table 11)")
    ax.plot(ctx, [s[c]["table12"] for c in ctx], "s-", color=color("paper"), label="paper, Flash-Attention2 (Table 12)")
    no_flash = [c for c in ctx if s[c]["table13"] is not None]
    ax.plot(no_flash, [s[c]["table13"] for c in no_flash], "D", color=color("paper"), mfc="white", ms=8,
            label="paper, no Flash-Attention2 (Table 13)")
    ax.axhline(1, color="gray", lw=0.8)
    log_axis(ax, "x", ctx, base=2)
    ax.set_ylim(0.8, 2.4)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("speed-up of S2-Attn (full / S2)")
    ax.set_title("Training speed-up: FLOPs vs the paper's hours")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def table13_memory() -> str:
    """Table 13's peak memory at 8192 without Flash-Attention2, full attention against S2-Attn."""
    return f"{PAPER_TABLE13['full'][8192][1]} GB with full attention, {PAPER_TABLE13['s2'][8192][1]} GB with S2-Attn"


# the benchmark files ----------------------------------------------------------------------------------------------
def load_results(name: str, root: Path | str = RESULTS) -> dict:
    """The JSON a benchmark script wrote into benchmarks/results/, or {} when there is none yet."""
    path = Path(root) / name
    return json.loads(path.read_text()) if path.is_file() else {}


def describe(name: str, section: dict, machine: dict) -> str:
    """One run's metadata in a few lines: command, date, machine, threads, load, and whether it was --quick."""
    if not section:
        return f"{name}: not in benchmarks/results/ (yet); run the benchmark script to write it"

    def get(key, default="?"):  # the section first, then its settings, then the machine
        return section.get(key, section.get("settings", {}).get(key, machine.get(key, default)))

    versions = f"torch {get('torch')}, threads {get('threads')}"
    if "transformers" in machine:
        versions += f", transformers {machine['transformers']}, peft {machine['peft']}"
    lines = [name, f"  command: {get('command')}", f"  date:    {get('date')}",
             f"  machine: {machine.get('processor', '?')}, {machine.get('cpus_usable', '?')} usable CPUs",
             f"  {versions}"]
    load = get("loadavg_at_start", None)
    if load:
        lines.append(f"  1-min load average at start: {load[0]:.2f}")
    if get("busy_warning", None):  # the script's own note, without its "WARNING:" prefix
        lines.append(f"  busy machine: {get('busy_warning').removeprefix('WARNING: ')}")
    if get("quick", False):
        lines.append("  NOTE: a --quick run (smoke test: a couple of tiny sizes, few repeats): placeholders, not data")
    return "\n".join(lines)


def _mb(r: dict, keys, width: int = 8, digits: int = 0) -> str:
    return " ".join(f"{r[k]:>{width}.{digits}f}" if k in r else f"{'-':>{width}}" for k in keys)


def attention_table(bench: dict) -> str:
    """Section `attention` of attention_cpu.json: ms per forward + backward, speed-up, predictions, memory."""
    rows = sorted(bench.get("attention", {}).get("rows", []), key=lambda r: r["n"])
    if not rows:
        return "no `attention` section in attention_cpu.json"
    lines = [(f"{'n':>6} {'full ms':>9} {'S2 ms':>9} {'speed-up':>8} {'pred FLOP':>9} {'pred causal':>11} "
              f"{'full MB':>8} {'S2 MB':>8}")]
    lines += [f"{r['n']:>6} {r['full_ms']:>9.1f} {r['s2_ms']:>9.1f} {r['speedup']:>7.2f}x "
              f"{r['predicted_speedup_flops']:>8.2f}x {r['predicted_speedup_causal']:>10.2f}x "
              + _mb(r, ("full_mb", "s2_mb"), digits=1) for r in rows]
    return "\n".join(lines)


def draw_attention_bench(bench: dict):
    """Attention alone: time, speed-up against its two predictions, and peak extra memory, per length."""
    rows = sorted(bench.get("attention", {}).get("rows", []), key=lambda r: r["n"])
    if not rows:
        return None
    n = [r["n"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.9))
    for setting, key, marker in (("full", "full", "o-"), ("s2", "s2", "s-")):
        label = "full causal (SDPA)" if setting == "full" else "S2-Attn (split, G = n/4)"
        axes[0].plot(n, [r[f"{key}_ms"] for r in rows], marker, color=color(setting), label=label)
        mem = [r for r in rows if f"{key}_mb" in r]
        axes[2].plot([r["n"] for r in mem], [r[f"{key}_mb"] for r in mem], marker, color=color(setting), label=label)
    axes[1].plot(n, [r["speedup"] for r in rows], "o-", color=color("s2"), label="measured")
    axes[1].plot(n, [r["predicted_speedup_flops"] for r in rows], "--", color=color("predicted"),
                 label="predicted: dense FLOPs (n/G)")
    axes[1].plot(n, [r["predicted_speedup_causal"] for r in rows], ":", color=color("predicted"), lw=2,
                 label="predicted: causal query-key pairs")
    axes[1].axhline(1, color="gray", lw=0.8)
    axes[1].set_ylim(0, max(6, 1.15 * max(r["speedup"] for r in rows)))
    log_axis(axes[0], "y")
    _label_panels(axes, n, "Attention alone", ("ms per forward + backward (median)", "speed-up (full / S2)",
                  "peak extra memory (MB)"), ("time", "speed-up of S2-Attn", "memory"))
    fig.suptitle(f"bench_attention.py, section attention, run of {bench['attention'].get('date', '?')[:10]}"
                 + (" (--quick: not data)" if bench["attention"].get("quick") else ""))
    fig.tight_layout()
    return fig


def step_table(bench: dict) -> str:
    """Section `step` of attention_cpu.json: seconds per training step, speed-up and its predictions, per model."""
    step = bench.get("step", {})
    s = step.get("settings", {})
    lines = [(f"method {s.get('method', '?')}, {s.get('dtype', '?')}, median of {s.get('repeats', '?')} steps, "
              f"threads {s.get('threads', '?')}")]
    for name, m in step.get("models", {}).items():
        c = m.get("config", {})
        shape = f"dim {c.get('dim', '?')}, {c.get('n_layers', '?')} layers, {c.get('n_heads', '?')} heads"
        lines += ["", f"{name}: {shape}",
                  (f"{'n':>6} {'full s':>8} {'S2 s':>8} {'speed-up':>8} {'pred 3xfwd':>10} "
                   f"{'pred work':>9} {'full MB':>8} {'S2 MB':>8}")]
        lines += [f"{r['n']:>6} {r['full_s']:>8.3f} {r['s2_s']:>8.3f} {r['speedup']:>7.2f}x "
                  f"{r['predicted_speedup_3xfwd']:>9.2f}x {r['predicted_speedup_work']:>8.2f}x "
                  + _mb(r, ("full_mb", "s2_mb")) for r in sorted(m.get("rows", []), key=lambda r: r["n"])]
        lines += [f"{skip['n']:>6}  skipped: {skip['reason']}" for skip in m.get("skipped", [])]
    return "\n".join(lines) if step else "no `step` section in attention_cpu.json"


def _model_lines(ax, name: str, rows: list[dict], series) -> None:
    """One model's rows on `ax`: series = [(key, setting, label, dashes)], the model's own marker."""
    marker, model_ls = MODEL_STYLES.get(name, ("^", "-"))
    for key, setting, label, ls in series:
        have = [r for r in rows if key in r]
        ax.plot([r["n"] for r in have], [r[key] for r in have], marker=marker, ls=model_ls if ls == "-" else ls,
                color=color(setting),
                label=f"{name}, {label}")


def draw_step_bench(bench: dict):
    """A whole training step: seconds, speed-up against its predictions, memory; colour = setting, marker = model."""
    models = {k: m for k, m in bench.get("step", {}).get("models", {}).items() if m.get("rows")}
    if not models:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 4.1))
    for name, m in models.items():
        rows = sorted(m["rows"], key=lambda r: r["n"])
        _model_lines(axes[0], name, rows, [("full_s", "full", "full attention", "-"), ("s2_s", "s2", "S2-Attn", "-")])
        _model_lines(axes[1], name, rows, [("speedup", "s2", "measured", "-"),
                                           ("predicted_speedup_3xfwd", "predicted", "predicted (3xfwd)", "--"),
                                           ("predicted_speedup_work", "predicted", "predicted (work)", ":")])
        _model_lines(axes[2], name, rows, [("full_mb", "full", "full attention", "-"), ("s2_mb", "s2", "S2-Attn", "-")])
    sizes = sorted({r["n"] for m in models.values() for r in m["rows"]})
    axes[1].axhline(1, color="gray", lw=0.8)
    log_axis(axes[0], "y")
    _label_panels(axes, sizes, "Whole step", ("seconds per step (median)", "speed-up (full / S2)",
                  "peak extra memory of one step (MB)"), ("time", "speed-up", "memory"), legend_size=7)
    step = bench["step"]
    fig.suptitle(f"bench_attention.py, section step ({step.get('settings', {}).get('method', '?')}), run of "
                 f"{step.get('date', '?')[:10]}" + (" (--quick: not data)" if step.get("quick") else ""))
    fig.tight_layout()
    return fig


def vs_hf_table(vs_hf: dict) -> str:
    """vs_hf_cpu.json: tokens/s of transformers + peft and of ours (full, S2-Attn), ratios, memory, loss agreement."""
    lines = []
    for name, m in vs_hf.get("models", {}).items():
        lines += [f"{name}:", (f"{'n':>6} {'hf tok/s':>9} {'full tok/s':>10} {'S2 tok/s':>9} {'full/hf':>8} "
                               f"{'S2/hf':>7} {'hf MB':>8} {'full MB':>8} {'S2 MB':>8} {'loss diff':>9}")]
        lines += [f"{r['n']:>6} {r['hf_tokens_per_s']:>9.0f} {r['ours_full_tokens_per_s']:>10.0f} "
                  f"{r['ours_s2_tokens_per_s']:>9.0f} {r['ours_full_vs_hf']:>7.2f}x {r['ours_s2_vs_hf']:>6.2f}x "
                  + _mb(r, ("hf_mb", "ours_full_mb", "ours_s2_mb")) + f" {r['loss_abs_diff']:>9.1e}"
                  for r in sorted(m.get("rows", []), key=lambda r: r["n"])]
        lines += [f"{skip['n']:>6}  skipped: {skip['reason']}" for skip in m.get("skipped", [])] + [""]
    return "\n".join(lines).strip() or "no vs_hf_cpu.json results"


def draw_vs_hf(vs_hf: dict):
    """Tokens/s of ours over transformers + peft (one run), and peak extra memory of one LoRA+ step."""
    models = {k: m for k, m in vs_hf.get("models", {}).items() if m.get("rows")}
    if not models:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
    for name, m in models.items():
        rows = sorted(m["rows"], key=lambda r: r["n"])
        _model_lines(axes[0], name, rows, [("ours_full_vs_hf", "full", "ours full attention", "-"),
                                           ("ours_s2_vs_hf", "s2", "ours S2-Attn", "-")])
        _model_lines(axes[1], name, rows, [("hf_mb", "hf", "transformers + peft", ":"),
                                           ("ours_full_mb", "full", "ours, full", "-"),
                                           ("ours_s2_mb", "s2", "ours, S2-Attn", "-")])
    axes[0].axhline(1, color=color("hf"), lw=0.8, label="transformers + peft = 1")
    axes[0].set_ylim(0, max([2] + [1.15 * r["ours_s2_vs_hf"] for m in models.values() for r in m["rows"]]))
    sizes = sorted({r["n"] for m in models.values() for r in m["rows"]})
    for ax, ylabel, title in zip(axes, ("tokens/s relative to transformers + peft", "peak extra memory (MB)"),
                                 ("ours over transformers + peft", "memory")):
        log_axis(ax, "x", sizes, base=2)
        ax.set(xlabel="sequence length n (tokens)", ylabel=ylabel, title=f"LoRA+ step: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    settings = vs_hf.get("settings", {})
    fig.suptitle(f"bench_vs_hf.py, run of {vs_hf.get('machine', {}).get('date', '?')[:10]}, "
                 f"{settings.get('dtype', '?')}, {settings.get('threads', '?')} thread(s)"
                 + (" (--quick: not data)" if settings.get("quick") else ""))
    fig.tight_layout()
    return fig
