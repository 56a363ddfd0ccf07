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
