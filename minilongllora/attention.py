"""Attention of LongLoRA (Chen et al., ICLR 2024): full causal attention and shifted sparse attention (S2-Attn, §3.2)
with the variants of its shifted half (App. B.3, Table 8), as fast grouped paths through
`scaled_dot_product_attention` (flash / memory-efficient kernels on CUDA, the fused kernel on CPU). The ablation
patterns of Table 6 are in `patterns.py` (one table: name → head chunks, fast path, mask), the dense reference the
tests compare every path against in `reference.py`.

einops axes: b batch, h query heads, k kv heads, r repeats (h = k·r), n sequence, d head dim, g number of groups,
G group size (tokens per group), e the two edge groups of "split".

Inputs. q is (b, h, n, d), k and v are (b, k, n, d) with RoPE already applied at the original positions (the official
code rotates, repeats kv, then shifts). Grouped-query heads follow Meta / transformers: query head j reads kv head
j // r, i.e. `repeat(k, "b k n d -> b (k r) n d")`; SDPA's `enable_gqa` does that without copying. The scale is 1/√d.
Inputs are never edited in place. Inside a group attention is causal; groups are folded into the batch,
`"b h (g G) d -> (b g) h G d"`, so one SDPA call covers them.

S2-Attn: pattern 1 on the first half of the heads, groups [0, G), [G, 2G), …; pattern 2 on the second half, the
groups shifted by s = G/2 (S2_VARIANTS). "roll" is Algorithm 1 exactly: roll the sequence by −s (position p holds
token (p + s) mod n), attend in groups of G, ungroup, then roll back by +s (rolling back inside the groups is
LLaMA-Factory's bug). It keeps the paper's wrap-around: the last group holds tokens [n − s, n) then [0, s), so tokens
0 … s−1 read the last s tokens, the future (and through a stack of layers these reads chain: after a few layers
every early position has a path from every later token, which the training loss can exploit). The authors know
(issues #15, #90: on purpose, "information interaction between the starting and ending contexts"; harmless because
inference uses full attention). "roll_up" (Table 8 Var 1, "shift up") rolls by +s and back by −s. When G divides n
(always here) it forms the same groups in the same order as "roll", group i of one being group i + 1 of the other,
so it equals "roll" exactly; kept so the masks can show it (PPL 8.04 in both; issue #5: left or right shift make no
difference). "split" (Table 8 Var 2, "individual groups for the shifted tokens", what the official flash path trains
with): groups [0, s), [s, 3s), …, [n − s, n), two half-size edge groups, no wrap-around, strictly causal. The
DEFAULT. "swap" (Table 8 Var 3, "swaps the shifted and the original front tokens"; our reading): roll's groups, but
the wrapped group ordered tokens [0, s) then [n − s, n), so the causal mask lets the last tokens read the first ones
(the past) and never the reverse: causal.

Arguments. group_size G must be an even integer ≥ 2 (`group_size` derives it from a ratio); S2-Attn needs an even
head count; n must be a multiple of G unless pad=True, which appends zeros to q, k and v and slices the output back.
Padded keys come after every real query, so under every causal pattern the real outputs are those of the pattern at
the padded length; only roll / roll_up let tokens 0 … s−1 of the shifted heads read the zero keys that wrap around.
Every bad input raises a one-line ValueError naming the argument and its value.
"""

from __future__ import annotations

import functools
import importlib
import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

S2_VARIANTS = ("split", "roll", "roll_up", "swap")


def group_size(seq_len: int, ratio: float) -> int:
    """THE group size of S2-Attn for a sequence of `seq_len` tokens: ratio · seq_len (int(), as the official code),
    rounded down to an even number (half a group is shifted), at least 2. A product within 1e-9 below an integer
    counts as that integer, so ratio = G / seq_len gives G back whatever the float rounding."""
    group = int(seq_len * ratio + 1e-9)
    return max(2, group - group % 2)


# checks -----------------------------------------------------------------------------------------------------------
def check_qk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t is not None and t.ndim != 4:
            raise ValueError(f"{name} must have 4 dims (b, heads, n, d), got shape {tuple(t.shape)}")
    if v is not None and v.shape != k.shape:
        raise ValueError(f"v shape {tuple(v.shape)} must equal k shape {tuple(k.shape)}")
    (b, h, n, d), (bk, kvh, nk, dk) = q.shape, k.shape
    if (b, n, d) != (bk, nk, dk):
        raise ValueError(f"q shape {tuple(q.shape)} and k shape {tuple(k.shape)} disagree on batch, length or head dim")
    if h % kvh:
        raise ValueError(f"n_heads {h} is not divisible by n_kv_heads {kvh}")


def check_groups(group_size: int, n_heads: int, chunks: int, pattern: str, variant: str) -> None:
    """G an even integer ≥ 2, the heads divisible into `chunks` equal chunks, a known variant."""
    if variant not in S2_VARIANTS:
        raise ValueError(f"variant {variant!r} is unknown; expected one of {S2_VARIANTS}")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2 or group_size % 2:
        raise ValueError(f"group_size {group_size!r} must be an even integer >= 2 (half a group is shifted)")
    if n_heads % chunks:
        raise ValueError(f"n_heads {n_heads} must be divisible by {chunks} for pattern {pattern!r} "
                         f"(it splits the heads into {chunks} equal chunks)")


def check_length(n: int, group_size: int, block: int, hint: str = "") -> None:
    """n must be a multiple of `block` (G, or 2G for a pattern that reads segments of 2G)."""
    if n % block:
        what = f"group_size {group_size}" if block == group_size else f"2 * group_size = {block} (pattern 'dilated')"
        raise ValueError(f"seq_len {n} is not divisible by {what}{hint}")


# layout helpers ---------------------------------------------------------------------------------------------------
def repeat_kv(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """GQA in Meta's order: kv head i serves query heads i·r … i·r + r − 1. Only where a copy is unavoidable (the
    reference's explicit products, head chunks that cut through a kv head's queries); SDPA reads kv unrepeated."""
    return repeat(t, "b k n d -> b (k r) n d", r=n_heads // t.shape[1])


def sdpa(q, k, v, causal: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA over the last two axes: causal, full (causal=False), or under a 2-D boolean mask (True = may attend).
    k and v may have fewer heads than q (GQA: query head j reads kv head j // r); they are never repeated in memory.
    On the CPU in bf16, up to EXPLICIT_MAX_KEYS keys take `explicit_attention` (faster there, see its docstring)."""
    if q.device.type == "cpu" and q.dtype in EXPLICIT_DTYPES and k.shape[2] <= EXPLICIT_MAX_KEYS:
        return explicit_attention(q, k, v, causal, mask)
    gqa = k.shape[1] != q.shape[1]
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


# CPU bf16, up to 4096 keys: batched matrix products at bf16 speed beat the fused CPU kernel, whose softmax blocks
# gain little from bf16 (1.3-2.5x for attention alone, benchmarks/bench_speed.py). They keep the probabilities for
# backward (b·h·n²/2 bf16 numbers per layer), hence the limit. Tests set EXPLICIT_DTYPES to float64 to check this path
# against the oracle like every other.
EXPLICIT_DTYPES = (torch.bfloat16,)
EXPLICIT_MAX_KEYS = 4096
EXPLICIT_BLOCK = 256  # causal attention by blocks of this many queries: the keys after a block are never computed


@functools.lru_cache(maxsize=32)
def _causal_bias(n: int, m: int, r: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(r·n, m) additive mask: 0 where query i (of n, tiled r times) may read key j ≤ i + m − n, −inf elsewhere."""
    allowed = torch.ones(n, m, dtype=torch.bool, device=device).tril(diagonal=m - n)
    return repeat(torch.zeros(n, m, dtype=dtype, device=device).masked_fill(~allowed, float("-inf")),
                  "n m -> (r n) m", r=r)


def explicit_attention(q, k, v, causal: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ/√d + bias) v as two batched matrix products, the probabilities written out: (b, h, n, d).
    Causal, by blocks of EXPLICIT_BLOCK queries, each against the keys up to its last query only. GQA without
    repeating kv: the r query heads of a kv head are stacked along the query axis, "(k r) n -> k (r n)"."""
    (b, h, n, d), (kvh, m) = q.shape, k.shape[1:3]
    if causal and mask is None and n > EXPLICIT_BLOCK:
        blocks = range(0, n, EXPLICIT_BLOCK)  # query i reads keys j ≤ i + m − n
        return torch.cat([explicit_attention(q[:, :, i:i + EXPLICIT_BLOCK], k[:, :, :m - n + i + EXPLICIT_BLOCK],
                                             v[:, :, :m - n + i + EXPLICIT_BLOCK]) for i in blocks], dim=2)
    r = h // kvh
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        bias = repeat(bias, "n m -> (r n) m", r=r)
    elif causal:
        bias = _causal_bias(n, m, r, q.dtype, q.device)
    else:
        bias = torch.zeros((), dtype=q.dtype, device=q.device)
    scores = torch.baddbmm(bias, rearrange(q, "b (k r) n d -> (b k) (r n) d", r=r),
                           rearrange(k, "b k m d -> (b k) d m"), alpha=1 / math.sqrt(d))  # ((b k), (r n), m)
    out = torch.bmm(scores.softmax(dim=-1), rearrange(v, "b k m d -> (b k) m d"))
    return rearrange(out, "(b k) (r n) d -> b (k r) n d", b=b, r=r)


def group(t: torch.Tensor, G: int) -> torch.Tensor:
    return rearrange(t, "b h (g G) d -> (b g) h G d", G=G)


def ungroup(t: torch.Tensor, b: int) -> torch.Tensor:
    return rearrange(t, "(b g) h G d -> b h (g G) d", b=b)


def _shift(t: torch.Tensor, s: int) -> torch.Tensor:
    """Roll the sequence so position p holds token (p + s) mod n: Algorithm 1's roll(−G/2) for s = G/2. Out of place."""
    return torch.roll(t, shifts=-s, dims=2)


# the two halves of S2-Attn (each takes one chunk of query heads and the kv heads they read) -----------------------
def grouped(q, k, v, G: int) -> torch.Tensor:
    """Pattern 1 (§3.2, Fig. 2): causal attention inside groups [0, G), [G, 2G), …"""
    return ungroup(sdpa(group(q, G), group(k, G), group(v, G)), q.shape[0])


def _rolled(q, k, v, G: int, s: int) -> torch.Tensor:
    """Algorithm 1: roll by s, attend in groups, ungroup, roll back. Keeps the wrap-around group."""
    return _shift(grouped(_shift(q, s), _shift(k, s), _shift(v, s), G), -s)


def _split(q, k, v, G: int) -> torch.Tensor:
    """Variant 2: groups [0, s), [s, 3s), …, [n − s, n): the middle in one SDPA call, the two half groups in another."""
    s, n = G // 2, q.shape[2]

    def edges(t):  # (b, h, n, d) -> ((e b), h, s, d): the first and the last s tokens side by side in the batch
        return rearrange([t[:, :, :s], t[:, :, n - s:]], "e b h s d -> (e b) h s d")

    head, tail = rearrange(sdpa(edges(q), edges(k), edges(v)), "(e b) h s d -> e b h s d", e=2)
    if n == G:
        return torch.cat([head, tail], dim=2)
    middle = grouped(q[:, :, s:n - s], k[:, :, s:n - s], v[:, :, s:n - s], G)  # (b, h, n − G, d)
    return torch.cat([head, middle, tail], dim=2)


def _swap(q, k, v, G: int) -> torch.Tensor:
    """Variant 3 (our reading): roll's groups, the wrapped group ordered [0, s) then [n − s, n), so it stays causal."""
    s, n = G // 2, q.shape[2]
    w = n - G  # where the wrapped group starts in the grouped order

    def to_groups(t):  # token order -> group order [s, n − s) | [0, s) | [n − s, n)
        return torch.cat([t[:, :, s:n - s], t[:, :, :s], t[:, :, n - s:]], dim=2)

    out = grouped(to_groups(q), to_groups(k), to_groups(v), G)
    return torch.cat([out[:, :, w:w + s], out[:, :, :w], out[:, :, w + s:]], dim=2)  # back to token order


def shifted(q, k, v, G: int, variant: str) -> torch.Tensor:
    """Pattern 2: the group partition shifted by half a group (§3.2), in one of the variants of Table 8."""
    if variant == "roll":
        return _rolled(q, k, v, G, G // 2)
    if variant == "roll_up":
        return _rolled(q, k, v, G, -G // 2)
    return _split(q, k, v, G) if variant == "split" else _swap(q, k, v, G)


# public API -------------------------------------------------------------------------------------------------------
def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full causal attention, softmax(q kᵀ/√d + causal) v, through SDPA: (b, h, n, d)."""
    check_qk(q, k, v)
    return sdpa(q, k, v)


def attend_by_head_chunks(fns: list, q, k, v, block: int) -> torch.Tensor:
    """Split the heads into len(fns) equal chunks, chunk c attended by fns[c](q, k, v), after padding the sequence with
    zeros to a multiple of `block` (after every real query: a causal pattern never reads them)."""
    n = q.shape[2]
    extra = -n % block
    if extra:
        q, k, v = (F.pad(t, (0, 0, 0, extra)) for t in (q, k, v))
    if k.shape[1] % len(fns):  # fewer kv heads than head chunks: each chunk needs its own copy of the kv heads
        k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    chunks = zip(fns, q.chunk(len(fns), dim=1), k.chunk(len(fns), dim=1), v.chunk(len(fns), dim=1))
    out = torch.cat([fn(qc, kc, vc) for fn, qc, kc, vc in chunks], dim=1)  # (b, h, n + extra, d)
    return out[:, :, :n]


def s2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group_size: int, *, variant: str = "split",
                 pad: bool = False) -> torch.Tensor:
    """S2-Attn (§3.2, Algorithm 1): the first half of the heads in groups of G (pattern 1), the second half in groups
    shifted by G/2 (pattern 2, `variant`), all causal inside a group. (b, h, n, d). `patterns.sparse_attention`
    runs it, as "s2", beside the other patterns of Table 6."""
    check_qk(q, k, v)
    check_groups(group_size, q.shape[1], 2, "s2", variant)
    if not pad:
        check_length(q.shape[2], group_size, group_size, hint="; pass pad=True to pad the sequence")
    halves = [lambda q, k, v: grouped(q, k, v, group_size), lambda q, k, v: shifted(q, k, v, group_size, variant)]
    return attend_by_head_chunks(halves, q, k, v, group_size)


# old import paths: the pattern table and the reference moved to their own modules
_MOVED = {"PATTERNS": "patterns", "HEAD_CHUNKS": "patterns", "sparse_attention": "patterns", "stride_of": "patterns",
          "attention_mask": "reference", "attention_probs": "reference", "dense_attention": "reference"}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
