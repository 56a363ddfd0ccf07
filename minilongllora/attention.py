"""Attention patterns of LongLoRA (Chen et al., ICLR 2024): full causal attention, shifted sparse attention (S2-Attn,
§3.2) with its variants (App. B.3, Table 8) and the patterns of the ablation (§4.3, Table 6). Each pattern exists twice:
a fast grouped path through `scaled_dot_product_attention` (flash / memory-efficient kernels on CUDA, the fused kernel
on CPU) and a boolean mask in the original token order (`attention_mask`), which `dense_attention` turns into the
reference the tests compare against.

einops axes: b batch, h query heads, k kv heads, r repeats (h = k·r), n sequence, d head dim, g number of groups,
G group size (tokens per group), e the two edge groups of "split", c head chunks, m tokens per stride class.

Inputs. q is (b, h, n, d), k and v are (b, k, n, d) with RoPE already applied at the original positions (the official
code rotates, repeats kv, then shifts). Grouped-query heads follow Meta / transformers: query head j reads kv head
j // r, i.e. `repeat(k, "b k n d -> b (k r) n d")`. The scale is 1/√d. Inputs are never edited in place. Inside a group
attention is causal; groups are folded into the batch, `"b h (g G) d -> (b g) h G d"`, so one SDPA call covers them.

Patterns (PATTERNS). "full": causal attention over the whole sequence (what the paper tests with). "short": pattern 1
on every head, groups [0, G), [G, 2G), … (Table 6 "S2 only P1"; Table 1 "Short"). "shift_all": pattern 2 on every head
("only P2"). "s2": pattern 1 on the first half of the heads, pattern 2 on the second half (S2-Attn, Algorithm 1,
"cro. heads"). "s2_layers": pattern 1 on even layer_idx, pattern 2 on every head of odd layers ("cro. layers").
"dilated" (Table 6): dilation rate 1 on the first half of the heads (= pattern 1) and rate 2 on the second half:
segments of 2G tokens split into their even and odd positions, each a causal group of G tokens (same cost per query).
"block_sparse" (Table 6, Fig. 7: "n = 4" masks, "right-up blocks moved to left down, because of the causal mask"; our
reading): the heads in 4 equal chunks, the sequence in blocks of G; chunk j lets query block c read key block c − j,
causally for j = 0 (the diagonal) and fully for j ≥ 1 (it lies in the past); blocks c < j have no block j back and read
their own block causally, so no query is left without a key. (Its full off-diagonal blocks make it read about a
third of full attention's pairs, against about a quarter for s2, dilated and stride_sparse.) "stride_sparse" (Table 6, Child et al. 2019, "local size
n/4 and stride √n"): the first half of the heads local, query i reads keys i − G < j ≤ i; the second half strided,
query i reads keys j ≤ i with (i − j) % s == 0, s the largest divisor of n that is ≤ round(√n).
"local" (not a LongLoRA pattern): a sliding window, every head reads the last G keys, i − G < j ≤ i (Longformer,
Mistral). Used here to test a trained model with everything further back than G masked: how far back can a model
that was fine-tuned with groups of n/4 read? (notebook 08).

Pattern 2, the shifted heads (S2_VARIANTS; s = G/2). "roll" is Algorithm 1 exactly: roll the sequence by −s (position
p holds token (p + s) mod n), attend in groups of G, ungroup, then roll back by +s (rolling back inside the groups is
LLaMA-Factory's bug). It keeps the paper's wrap-around: the last group holds tokens [n − s, n) then [0, s), so tokens
0 … s−1 read the last s tokens, the future (and through a stack of layers these reads chain: after a few layers
every early position has a path from every later token, which the training loss can exploit). The authors know (issues #15, #90: on purpose, "information interaction
between the starting and ending contexts"; harmless because inference uses full attention). "roll_up" (Table 8 Var 1,
"shift up") rolls by +s and back by −s. When G divides n (always here) it forms the same groups in the same order as
"roll", group i of one being group i + 1 of the other, so it equals "roll" exactly; kept so the masks can show it (PPL
8.04 in both; issue #5: left or right shift make no difference). "split" (Table 8 Var 2, "individual groups for the
shifted tokens", what the official flash path trains with): groups [0, s), [s, 3s), …, [n − s, n), two half-size edge
groups, no wrap-around, strictly causal. The DEFAULT. "swap" (Table 8 Var 3, "swaps the shifted and the original front
tokens"; our reading): roll's groups, but the wrapped group ordered tokens [0, s) then [n − s, n), so the causal mask
lets the last tokens read the first ones (the past) and never the reverse: causal.

Arguments. group_size G must be an even integer ≥ 2; patterns that split the heads into halves need an even head count
(block_sparse a multiple of 4); n must be a multiple of G (2G for dilated) unless pad=True, which appends zeros to q, k
and v and slices the output back. Padded keys come after every real query, so under every causal pattern the real
outputs are those of the pattern at the padded length; only roll / roll_up let tokens 0 … s−1 of the shifted heads read
the zero keys that wrap around. Every bad input raises a one-line ValueError naming the argument and its value.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat

PATTERNS = ("full", "short", "shift_all", "s2", "s2_layers", "dilated", "block_sparse", "stride_sparse", "local")
S2_VARIANTS = ("split", "roll", "roll_up", "swap")
HEAD_CHUNKS = {"short": 1, "shift_all": 1, "s2": 2, "s2_layers": 1, "dilated": 2, "block_sparse": 4, "stride_sparse": 2,
               "local": 1}


# checks -----------------------------------------------------------------------------------------------------------
def _check_qk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
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


def _check_pattern(pattern: str, group_size: int, n_heads: int, variant: str) -> None:
    if pattern not in PATTERNS:
        raise ValueError(f"pattern {pattern!r} is unknown; expected one of {PATTERNS}")
    if variant not in S2_VARIANTS:
        raise ValueError(f"variant {variant!r} is unknown; expected one of {S2_VARIANTS}")
    if pattern == "full":
        return
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2 or group_size % 2:
        raise ValueError(f"group_size {group_size!r} must be an even integer >= 2 (half a group is shifted)")
    chunks = HEAD_CHUNKS[pattern]
    if n_heads % chunks:
        raise ValueError(f"n_heads {n_heads} must be divisible by {chunks} for pattern {pattern!r} "
                         f"(it splits the heads into {chunks} equal chunks)")


def _block(pattern: str, group_size: int) -> int:
    """The sequence length must be a multiple of this (dilated reads segments of 2G)."""
    return 2 * group_size if pattern == "dilated" else group_size


def _check_length(n: int, pattern: str, group_size: int, hint: str = "") -> None:
    block = _block(pattern, group_size)
    if n % block:
        what = f"group_size {group_size}" if block == group_size else f"2 * group_size = {block} (pattern 'dilated')"
        raise ValueError(f"seq_len {n} is not divisible by {what}{hint}")


# layout helpers ---------------------------------------------------------------------------------------------------
def _repeat_kv(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """GQA in Meta's order: kv head i serves query heads i·r … i·r + r − 1."""
    return repeat(t, "b k n d -> b (k r) n d", r=n_heads // t.shape[1])


def _sdpa(q, k, v, causal: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
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


def _group(t: torch.Tensor, G: int) -> torch.Tensor:
    return rearrange(t, "b h (g G) d -> (b g) h G d", G=G)


def _ungroup(t: torch.Tensor, b: int) -> torch.Tensor:
    return rearrange(t, "(b g) h G d -> b h (g G) d", b=b)


def _shift(t: torch.Tensor, s: int) -> torch.Tensor:
    """Roll the sequence so position p holds token (p + s) mod n: Algorithm 1's roll(−G/2) for s = G/2. Out of place."""
    return torch.roll(t, shifts=-s, dims=2)


# fast paths, one per idea (each takes one chunk of query heads and the kv heads they read) ------------------------
def _grouped(q, k, v, G: int) -> torch.Tensor:
    """Pattern 1 (§3.2, Fig. 2): causal attention inside groups [0, G), [G, 2G), …"""
    return _ungroup(_sdpa(_group(q, G), _group(k, G), _group(v, G)), q.shape[0])


def _rolled(q, k, v, G: int, s: int) -> torch.Tensor:
    """Algorithm 1: roll by s, attend in groups, ungroup, roll back. Keeps the wrap-around group."""
    return _shift(_grouped(_shift(q, s), _shift(k, s), _shift(v, s), G), -s)


def _split(q, k, v, G: int) -> torch.Tensor:
    """Variant 2: groups [0, s), [s, 3s), …, [n − s, n): the middle in one SDPA call, the two half groups in another."""
    s, n = G // 2, q.shape[2]

    def edges(t):  # (b, h, n, d) -> ((e b), h, s, d): the first and the last s tokens side by side in the batch
        return rearrange([t[:, :, :s], t[:, :, n - s:]], "e b h s d -> (e b) h s d")

    head, tail = rearrange(_sdpa(edges(q), edges(k), edges(v)), "(e b) h s d -> e b h s d", e=2)
    if n == G:
        return torch.cat([head, tail], dim=2)
    middle = _grouped(q[:, :, s:n - s], k[:, :, s:n - s], v[:, :, s:n - s], G)  # (b, h, n − G, d)
    return torch.cat([head, middle, tail], dim=2)


def _swap(q, k, v, G: int) -> torch.Tensor:
    """Variant 3 (our reading): roll's groups, the wrapped group ordered [0, s) then [n − s, n), so it stays causal."""
    s, n = G // 2, q.shape[2]
    w = n - G  # where the wrapped group starts in the grouped order

    def to_groups(t):  # token order -> group order [s, n − s) | [0, s) | [n − s, n)
        return torch.cat([t[:, :, s:n - s], t[:, :, :s], t[:, :, n - s:]], dim=2)

    out = _grouped(to_groups(q), to_groups(k), to_groups(v), G)
    return torch.cat([out[:, :, w:w + s], out[:, :, :w], out[:, :, w + s:]], dim=2)  # back to token order


def _shifted(q, k, v, G: int, variant: str) -> torch.Tensor:
    """Pattern 2: the group partition shifted by half a group (§3.2), in one of the variants of Table 8."""
    if variant == "roll":
        return _rolled(q, k, v, G, G // 2)
    if variant == "roll_up":
        return _rolled(q, k, v, G, -G // 2)
    return _split(q, k, v, G) if variant == "split" else _swap(q, k, v, G)


def _dilated2(q, k, v, G: int) -> torch.Tensor:
    """Dilation rate 2: each segment of 2G tokens splits into its even and its odd positions, a causal group each."""
    b = q.shape[0]
    q, k, v = (rearrange(t, "b h (g G r) d -> (b g r) h G d", G=G, r=2) for t in (q, k, v))
    return rearrange(_sdpa(q, k, v), "(b g r) h G d -> b h (g G r) d", b=b, r=2)


def _block_back(q, k, v, G: int, j: int) -> torch.Tensor:
    """Head chunk j of block_sparse: query block c reads key block c − j (causally when j = 0), own block if c < j."""
    if j == 0:
        return _grouped(q, k, v, G)
    n, b = q.shape[2], q.shape[0]
    m = min(j * G, n)  # queries before m have no block j blocks back
    parts = [_grouped(q[:, :, :m], k[:, :, :m], v[:, :, :m], G)]
    if m < n:  # query block c ≥ j against key block c − j: all in the past, no mask
        back = _sdpa(_group(q[:, :, m:], G), _group(k[:, :, :n - m], G), _group(v[:, :, :n - m], G), causal=False)
        parts.append(_ungroup(back, b))
    return torch.cat(parts, dim=2)


def _local(q, k, v, G: int) -> torch.Tensor:
    """Query i reads keys i − G < j ≤ i: blocks of G queries against their own and the previous block of keys."""
    n, b = q.shape[2], q.shape[0]
    first = _sdpa(q[:, :, :G], k[:, :, :G], v[:, :, :G])  # block 0 has no previous block: plain causal
    if n == G:
        return first
    r, c = torch.arange(G, device=q.device)[:, None], torch.arange(2 * G, device=q.device)[None, :]
    mask = (c > r) & (c <= r + G)  # (G, 2G): query r of a block, key c of the window [previous block | own block]

    def windows(t):  # ((b g), h, 2G, d) for query blocks 1 … g − 1
        return torch.cat([_group(t[:, :, :n - G], G), _group(t[:, :, G:], G)], dim=2)

    rest = _sdpa(_group(q[:, :, G:], G), windows(k), windows(v), mask=mask)
    return torch.cat([first, _ungroup(rest, b)], dim=2)


def stride_of(n: int) -> int:
    """Stride of stride_sparse: the largest divisor of n that is ≤ round(√n) (Child et al.'s √n, made to divide n)."""
    return max(s for s in range(1, max(1, round(math.sqrt(n))) + 1) if n % s == 0)


def _strided(q, k, v) -> torch.Tensor:
    """Query i reads keys j ≤ i with (i − j) % s == 0: the tokens of one residue class mod s are one causal group."""
    b, s = q.shape[0], stride_of(q.shape[2])
    q, k, v = (rearrange(t, "b h (m s) d -> (b s) h m d", s=s) for t in (q, k, v))
    return rearrange(_sdpa(q, k, v), "(b s) h m d -> b h (m s) d", b=b)


def _head_plan(pattern: str, G: int, variant: str, layer_idx: int) -> list:
    """The pattern as one attention function per equal chunk of heads, first chunk first."""
    p1 = lambda q, k, v: _grouped(q, k, v, G)  # noqa: E731
    p2 = lambda q, k, v: _shifted(q, k, v, G, variant)  # noqa: E731
    return {
        "short": [p1],
        "shift_all": [p2],
        "s2": [p1, p2],
        "s2_layers": [p2 if layer_idx % 2 else p1],
        "dilated": [p1, lambda q, k, v: _dilated2(q, k, v, G)],
        "block_sparse": [lambda q, k, v, j=j: _block_back(q, k, v, G, j) for j in range(4)],
        "stride_sparse": [lambda q, k, v: _local(q, k, v, G), _strided],
        "local": [lambda q, k, v: _local(q, k, v, G)],
    }[pattern]


# public API -------------------------------------------------------------------------------------------------------
def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full causal attention, softmax(q kᵀ/√d + causal) v, through SDPA: (b, h, n, d)."""
    _check_qk(q, k, v)
    return _sdpa(q, k, v)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str, group_size: int, *,
                     variant: str = "split", layer_idx: int = 0, pad: bool = False) -> torch.Tensor:
    """Attention under one of PATTERNS (module docstring), by its fast grouped path: (b, h, n, d). "full" ignores G."""
    _check_qk(q, k, v)
    (b, h, n, d) = q.shape
    _check_pattern(pattern, group_size, h, variant)
    if pattern == "full":
        return causal_attention(q, k, v)
    extra = -n % _block(pattern, group_size)
    if extra and not pad:
        _check_length(n, pattern, group_size, hint="; pass pad=True to pad the sequence")
    if extra:  # zeros at the end: after every real query, so a causal pattern never reads them
        q, k, v = (F.pad(t, (0, 0, 0, extra)) for t in (q, k, v))
    plan = _head_plan(pattern, group_size, variant, layer_idx)
    if k.shape[1] % len(plan):  # fewer kv heads than head chunks: each chunk needs its own copy of the kv heads
        k, v = _repeat_kv(k, h), _repeat_kv(v, h)
    chunks = zip(plan, q.chunk(len(plan), dim=1), k.chunk(len(plan), dim=1), v.chunk(len(plan), dim=1))
    out = torch.cat([fn(qc, kc, vc) for fn, qc, kc, vc in chunks], dim=1)  # (b, h, n + extra, d)
    return out[:, :, :n]


def s2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group_size: int, *, variant: str = "split",
                 pad: bool = False) -> torch.Tensor:
    """S2-Attn (§3.2, Algorithm 1): the first half of the heads in groups of G (pattern 1), the second half in groups
    shifted by G/2 (pattern 2, `variant`), all causal inside a group. (b, h, n, d)."""
    return sparse_attention(q, k, v, "s2", group_size, variant=variant, pad=pad)


# the oracle: masks from index arithmetic on token positions -------------------------------------------------------
def _in_group_causal(group: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(n, n): query i reads key j iff they share a group and j comes no later than i in the group's order."""
    return (group[:, None] == group[None, :]) & (order[None, :] <= order[:, None])


def _shifted_mask(t: torch.Tensor, G: int, variant: str) -> torch.Tensor:
    n, s = len(t), G // 2
    if variant == "split":
        return _in_group_causal((t + s) // G, t)
    if variant == "swap":
        return _in_group_causal((t - s) % n // G, t)  # roll's groups, causal in token order
    pos = (t - s) % n if variant == "roll" else (t + s) % n  # where token t sits after the roll
    return _in_group_causal(pos // G, pos)


def _block_back_mask(t: torch.Tensor, G: int, j: int) -> torch.Tensor:
    bi, bj = (t // G)[:, None], (t // G)[None, :]
    target = torch.where(bi >= j, bi - j, bi)  # the key block query block bi reads
    return (bj == target) & ((bj < bi) | (t[None, :] <= t[:, None]))


def attention_mask(pattern: str, seq_len: int, group_size: int, n_heads: int, *, variant: str = "split",
                   layer_idx: int = 0) -> torch.Tensor:
    """(n_heads, seq_len, seq_len) bool: which key each query reads, in the original token order (True = may attend).
    Built from token positions alone, independently of the fast paths, so the tests can use it as the oracle."""
    for name, value in (("seq_len", seq_len), ("n_heads", n_heads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    _check_pattern(pattern, group_size, n_heads, variant)
    n, G, t = seq_len, group_size, torch.arange(seq_len)
    i, j = t[:, None], t[None, :]
    if pattern == "full":
        return (j <= i).expand(n_heads, n, n).clone()
    _check_length(n, pattern, G)
    p1, p2 = _in_group_causal(t // G, t), _shifted_mask(t, G, variant)
    chunks = {
        "short": [p1],
        "shift_all": [p2],
        "s2": [p1, p2],
        "s2_layers": [p2 if layer_idx % 2 else p1],
        "dilated": [p1, _in_group_causal(t // (2 * G) * 2 + t % 2, t)],
        "block_sparse": [_block_back_mask(t, G, jj) for jj in range(4)],
        "stride_sparse": [(j <= i) & (j > i - G), (j <= i) & ((i - j) % stride_of(n) == 0)],
        "local": [(j <= i) & (j > i - G)],
    }[pattern]
    return repeat(torch.stack(chunks), "c i j -> (c r) i j", r=n_heads // len(chunks))


# the reference: explicit probabilities -----------------------------------------------------------------------------
def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ/√d) under a bool mask broadcastable to (h, n, n) (causal if None), in q's dtype: (b, h, n, n)."""
    _check_qk(q, k)
    (b, h, n, d) = q.shape
    if mask is None:
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    if mask.dtype != torch.bool or mask.ndim not in (2, 3) or mask.shape[-2:] != (n, n) or \
            (mask.ndim == 3 and mask.shape[0] not in (1, h)):
        raise ValueError(f"mask must be a bool tensor of shape (h, n, n) = ({h}, {n}, {n}), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    scores = einsum(q, _repeat_kv(k, h), "b h i d, b h j d -> b h i j") / math.sqrt(d)
    return scores.masked_fill(~mask.to(q.device), float("-inf")).softmax(dim=-1)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reference attention: softmax(q kᵀ/√d masked by `mask`) v with the n × n matrix written out: (b, h, n, d)."""
    _check_qk(q, k, v)
    return einsum(attention_probs(q, k, mask), _repeat_kv(v, q.shape[1]), "b h i j, b h j d -> b h i d")
