"""FLOPs of one forward pass (the prefill / "context stage", batch 1) from a config's shapes: the paper's Table 11.

LongLoRA App. B.5 breaks the FLOPs of Llama-2-7B into Attn (the attention kernel: q·kᵀ and probs·v), Proj (the q, k, v
and o projections), FFN (the three SwiGLU matrices) and Others (LM head, norms, RoPE, activations, residual adds).
The paper measured with the tracer torchprofile, which counts multiply-accumulates (MACs) of matrix products and of
elementwise multiplications, and reports FLOPs = 2 × MACs; additions, divisions, SiLU and the softmax are not counted.
We count the same way from the shapes: a matrix product of (m × k) by (k × n) costs 2·m·k·n FLOPs, an elementwise
product of N numbers 2·N. Attention is counted as the dense products it runs, without halving for the causal mask:

    full attention:  4 · n² · h · d_head per layer         (q·kᵀ: 2·n·n·d per head, probs·v: the same)
    S2-Attn:         4 · n · G · h · d_head per layer       (n / G groups of G tokens; G = n/4 by default)

so S2-Attn divides the attention term by n / G = 4 and leaves every other term unchanged. A sink pattern's queries
also span the n_sink sink keys: 4 · n · (G + n_sink) · h · d_head. `run_flops` adds up a whole run whose steps
attend differently (the remedies of issue 16: full-attention steps, growing groups) against full attention at every
step; backward costs about twice the forward for every term, so the ratios hold for training too.
"""

from __future__ import annotations

from .attention import group_size
from .config import LlamaConfig
from .errors import UserInputError
from .patterns import SINK_PATTERNS

TERA = 1e12


def flops_breakdown(config: LlamaConfig, context: int, group_size_ratio: float | None = None) -> dict:
    """TFLOPs of a forward pass over `context` tokens, by kind, for full attention and S2-Attn (Table 11's columns)."""
    if context <= 0:
        raise UserInputError(f"context must be a positive number of tokens, got {context}")
    ratio = config.group_size_ratio if group_size_ratio is None else group_size_ratio
    n, L, dim, ffn = context, config.n_layers, config.dim, config.ffn_dim
    kv_dim = config.n_kv_heads * config.head_dim
    group = group_size(n, ratio)
    attn_full = L * 4 * n * n * dim  # h · d_head = dim
    attn_s2 = L * 4 * n * group * dim
    proj = L * 2 * n * dim * (dim + 2 * kv_dim + dim)  # q, k, v (GQA-sized), o
    ffn_flops = L * 2 * (3 * n * dim * ffn + n * ffn)  # gate, up, down, and the product silu(gate) · up
    others = 2 * (
        n * dim * config.vocab_size  # LM head
        + (2 * L + 1) * 2 * n * dim  # RMSNorms: x · rsqrt(mean x²), then · weight
        + L * 2 * n * (dim + kv_dim)  # RoPE: q · cos and rotate_half(q) · sin, the same for k
    )
    row = {"context": context, "attn_full": attn_full, "attn_s2": attn_s2, "proj": proj, "ffn": ffn_flops,
           "others": others}
    row["total_full"] = attn_full + proj + ffn_flops + others
    row["total_s2"] = attn_s2 + proj + ffn_flops + others
    return {k: (v if k == "context" else v / TERA) for k, v in row.items()}


def step_keys(pattern: str, context: int, group: int, n_sink: int = 0) -> int:
    """Keys each query spans in the products counted above: the whole context for full attention, its group for a
    grouped pattern, plus the n_sink sink keys for a sink pattern."""
    if pattern == "full":
        return context
    return group + (n_sink if pattern in SINK_PATTERNS else 0)


def run_flops(config: LlamaConfig, context: int, keys_per_step: list[int]) -> dict:
    """TFLOPs of a run's forward passes, one sequence of `context` tokens per step, step s's queries spanning
    keys_per_step[s] keys (`step_keys`): each step's, their sum, the sum with full attention at every step, and the
    ratio (a remedy is worth having only if it keeps most of S2-Attn's saving)."""
    row = flops_breakdown(config, context)
    others = row["proj"] + row["ffn"] + row["others"]
    per_key = row["attn_full"] / context  # the attention term is linear in the keys per query
    steps = [others + per_key * keys for keys in keys_per_step]
    full = len(steps) * row["total_full"]
    return {"step_tflops": steps, "tflops": sum(steps), "tflops_full": full, "relative_to_full": sum(steps) / full}


def format_flops_table(rows: list[dict]) -> str:
    """Table 11's layout: one line per context and attention, TFLOPs to one decimal."""
    lines = [f"{'context':>8} {'S2':>3} {'Attn':>9} {'Proj':>8} {'FFN':>8} {'Others':>7} {'Total':>9}"]
    for r in rows:
        for s2 in (False, True):
            attn, total = (r["attn_s2"], r["total_s2"]) if s2 else (r["attn_full"], r["total_full"])
            lines.append(f"{r['context']:>8} {'✓' if s2 else '✗':>3} {attn:>9.1f} {r['proj']:>8.1f} {r['ffn']:>8.1f} "
                         f"{r['others']:>7.1f} {total:>9.1f}")
    return "\n".join(lines)


# the paper's measured cost of training Llama-2-7B, 1000 iterations on 8×A100 (App. B.5): (hours, peak GB) per context;
# None where the paper prints OOM. Table 12 trains with Flash-Attention2; Table 13 without it, both with LoRA+.
PAPER_TABLE12 = {  # "full_ft": full fine-tuning; "lora": full attention; "longlora": S2-Attn + LoRA+
    "full_ft": {8192: (7.4, 46.3), 16384: (16.3, 57.4), 32768: (39.8, 68.8), 65536: None},
    "lora": {8192: (6.0, 25.7), 16384: (14.0, 34.7), 32768: (36.5, 46.5), 65536: (92.5, 71.1)},
    "longlora": {8192: (5.2, 25.6), 16384: (11.3, 34.6), 32768: (24.6, 46.4), 65536: (52.4, 69.8)},
}
PAPER_TABLE13 = {"full": {8192: (17.5, 55.5), 16384: None}, "s2": {8192: (8.2, 30.3), 16384: (20.8, 57.1)}}


def speedups(rows: list[dict]) -> dict[int, dict]:
    """Per context: the speed-up of S2-Attn that the FLOPs predict (total_full / total_s2; training ≈ 3 × forward
    for every term, so the factor cancels) beside the paper's measured hours, LoRA / LongLoRA (Table 12) and full /
    S2 without Flash-Attention2 (Table 13); None where the paper has no number."""
    out = {}
    for r in rows:
        n = r["context"]
        lora, longlora = PAPER_TABLE12["lora"].get(n), PAPER_TABLE12["longlora"].get(n)
        full, s2 = PAPER_TABLE13["full"].get(n), PAPER_TABLE13["s2"].get(n)
        out[n] = {"predicted": r["total_full"] / r["total_s2"],
                  "table12": lora[0] / longlora[0] if lora and longlora else None,
                  "table13": full[0] / s2[0] if full and s2 else None}
    return out
