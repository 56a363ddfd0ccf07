"""The reference every fast attention path is checked against: the pattern as an explicit boolean mask in the original
token order (`attention_mask`), the probabilities written out (`attention_probs`), and their product with the values
(`dense_attention`). Slow and obvious on purpose: the n × n matrix exists, the kv heads are repeated in memory, and
nothing is grouped, shifted or fused. The tests run it in float64 (forward and gradients); `Llama.attention_maps`
uses it to show what a trained model attends to.
"""

from __future__ import annotations

import math

import torch
from einops import einsum, repeat

from .attention import check_length, check_qk, repeat_kv
from .patterns import N_SINK, RULES, block_of, check_pattern


def attention_mask(pattern: str, seq_len: int, group_size: int, n_heads: int, *, variant: str = "split",
                   layer_idx: int = 0, n_sink: int = N_SINK) -> torch.Tensor:
    """(n_heads, seq_len, seq_len) bool: which key each query reads, in the original token order (True = may attend).
    Built from token positions alone, independently of the fast paths, so the tests can use it as the oracle.
    `n_sink`: the sink tokens of the sink patterns (ignored by the others)."""
    for name, value in (("seq_len", seq_len), ("n_heads", n_heads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    check_pattern(pattern, group_size, n_heads, variant, n_sink)
    n, t = seq_len, torch.arange(seq_len)
    if pattern == "full":
        return (t[None, :] <= t[:, None]).expand(n_heads, n, n).clone()
    check_length(n, group_size, block_of(pattern, group_size))
    chunks = [rule.mask(t, group_size, variant, layer_idx, n_sink) for rule in RULES[pattern]]
    return repeat(torch.stack(chunks), "c i j -> (c r) i j", r=n_heads // len(chunks))


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ/√d) under a bool mask broadcastable to (h, n, n) (causal if None), in q's dtype: (b, h, n, n)."""
    check_qk(q, k)
    (b, h, n, d) = q.shape
    if mask is None:
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    if mask.dtype != torch.bool or mask.ndim not in (2, 3) or mask.shape[-2:] != (n, n) or \
            (mask.ndim == 3 and mask.shape[0] not in (1, h)):
        raise ValueError(f"mask must be a bool tensor of shape (h, n, n) = ({h}, {n}, {n}), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    scores = einsum(q, repeat_kv(k, h), "b h i d, b h j d -> b h i j") / math.sqrt(d)
    return scores.masked_fill(~mask.to(q.device), float("-inf")).softmax(dim=-1)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reference attention: softmax(q kᵀ/√d masked by `mask`) v with the n × n matrix written out: (b, h, n, d)."""
    check_qk(q, k, v)
    return einsum(attention_probs(q, k, mask), repeat_kv(v, q.shape[1]), "b h i j, b h j d -> b h i d")
