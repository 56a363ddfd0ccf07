"""The attention patterns of LongLoRA's ablation (§4.3, Table 6) in one table: name → the rule of each equal chunk of
heads, every rule with its fast grouped path and its mask side by side (the mask in the original token order, from
index arithmetic on positions alone: `reference.attention_mask` stacks them into the oracle the tests check the fast
paths against).

"full": causal attention over the whole sequence (what the paper tests with). "short": pattern 1 on every head,
groups [0, G), [G, 2G), … (Table 6 "S2 only P1"; Table 1 "Short"). "shift_all": pattern 2 on every head ("only P2").
"s2": pattern 1 on the first half of the heads, pattern 2 on the second half (S2-Attn, Algorithm 1, "cro. heads").
"s2_layers": pattern 1 on even layer_idx, pattern 2 on every head of odd layers ("cro. layers").
"dilated" (Table 6): dilation rate 1 on the first half of the heads (= pattern 1) and rate 2 on the second half:
segments of 2G tokens split into their even and odd positions, each a causal group of G tokens (same cost per query).
"block_sparse" (Table 6, Fig. 7: "n = 4" masks, "right-up blocks moved to left down, because of the causal mask"; our
reading): the heads in 4 equal chunks, the sequence in blocks of G; chunk j lets query block c read key block c − j,
causally for j = 0 (the diagonal) and fully for j ≥ 1 (it lies in the past); blocks c < j have no block j back and read
their own block causally, so no query is left without a key. (Its full off-diagonal blocks make it read about a
third of full attention's pairs, against about a quarter for s2, dilated and stride_sparse.) "stride_sparse" (Table
6, Child et al. 2019, "local size n/4 and stride √n"): the first half of the heads local, query i reads keys
i − G < j ≤ i; the second half strided, query i reads keys j ≤ i with (i − j) % s == 0, s the largest divisor of n
that is ≤ round(√n). "local" (not a LongLoRA pattern): a sliding window, every head reads the last G keys,
i − G < j ≤ i (Longformer, Mistral). Used here to test a trained model with everything further back than G masked:
how far back can a model that was fine-tuned with groups of n/4 read? (notebook 08).

Sinks (beyond the paper). "short_sink" and "s2_sink" are "short" and "s2" (split variant only) in which every query
also reads the first n_sink tokens of the sequence that are not after it; a sink inside its own group is still one
key, read once. Trained models park much of their attention on the first few tokens ("attention sinks", StreamingLLM,
Xiao et al. 2023, which keeps 4: the default); in grouped training every group but the first lacks them, at test time
full attention shows them again. SinkLoRA (Zhang 2024) adds such global tokens to S2-Attn. n_sink reaches the rules
as their last argument (`sparse_attention(..., n_sink=)`, `LlamaConfig.n_sink`); the other rules ignore it.

einops axes as in attention.py; c head chunks, m tokens per stride class, s sink tokens. A fast path takes (q, k, v,
G, variant, layer_idx, n_sink) for one chunk of heads; a mask takes (t = arange(n), G, variant, layer_idx, n_sink) and
returns (n, n) bool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange, repeat

from .attention import (S2_VARIANTS, sdpa, attend_by_head_chunks, causal_attention, check_groups, check_length,
                        check_qk, group, grouped, shifted, ungroup)

BLOCK_SPARSE_CHUNKS = 4  # Fig. 7's "n = 4": block_sparse's heads in 4 chunks, chunk j reading j blocks back
N_SINK = 4  # sink tokens of the sink patterns (StreamingLLM keeps the first 4)
SINK_PATTERNS = ("short_sink", "s2_sink")


# fast paths of the ablation patterns (each takes one chunk of query heads and the kv heads they read) ------------
def _dilated2(q, k, v, G: int) -> torch.Tensor:
    """Dilation rate 2: each segment of 2G tokens splits into its even and its odd positions, a causal group each."""
    b = q.shape[0]
    q, k, v = (rearrange(t, "b h (g G r) d -> (b g r) h G d", G=G, r=2) for t in (q, k, v))
    return rearrange(sdpa(q, k, v), "(b g r) h G d -> b h (g G r) d", b=b, r=2)


def _block_back(q, k, v, G: int, j: int) -> torch.Tensor:
    """Head chunk j of block_sparse: query block c reads key block c − j (causally when j = 0), own block if c < j."""
    if j == 0:
        return grouped(q, k, v, G)
    n, b = q.shape[2], q.shape[0]
    m = min(j * G, n)  # queries before m have no block j blocks back
    parts = [grouped(q[:, :, :m], k[:, :, :m], v[:, :, :m], G)]
    if m < n:  # query block c ≥ j against key block c − j: all in the past, no mask
        back = sdpa(group(q[:, :, m:], G), group(k[:, :, :n - m], G), group(v[:, :, :n - m], G), causal=False)
        parts.append(ungroup(back, b))
    return torch.cat(parts, dim=2)


def _local(q, k, v, G: int) -> torch.Tensor:
    """Query i reads keys i − G < j ≤ i: blocks of G queries against their own and the previous block of keys."""
    n, b = q.shape[2], q.shape[0]
    first = sdpa(q[:, :, :G], k[:, :, :G], v[:, :, :G])  # block 0 has no previous block: plain causal
    if n == G:
        return first
    r, c = torch.arange(G, device=q.device)[:, None], torch.arange(2 * G, device=q.device)[None, :]
    mask = (c > r) & (c <= r + G)  # (G, 2G): query r of a block, key c of the window [previous block | own block]

    def windows(t):  # ((b g), h, 2G, d) for query blocks 1 … g − 1
        return torch.cat([group(t[:, :, :n - G], G), group(t[:, :, G:], G)], dim=2)

    rest = sdpa(group(q[:, :, G:], G), windows(k), windows(v), mask=mask)
    return torch.cat([first, ungroup(rest, b)], dim=2)


def stride_of(n: int) -> int:
    """Stride of stride_sparse: the largest divisor of n that is ≤ round(√n) (Child et al.'s √n, made to divide n)."""
    return max(s for s in range(1, max(1, round(math.sqrt(n))) + 1) if n % s == 0)


def _strided(q, k, v) -> torch.Tensor:
    """Query i reads keys j ≤ i with (i − j) % s == 0: the tokens of one residue class mod s are one causal group."""
    b, s = q.shape[0], stride_of(q.shape[2])
    q, k, v = (rearrange(t, "b h (m s) d -> (b s) h m d", s=s) for t in (q, k, v))
    return rearrange(sdpa(q, k, v), "(b s) h m d -> b h (m s) d", b=b)


def _groups_with_sinks(q, k, v, G: int, n_sink: int, start: int, end: int) -> torch.Tensor:
    """Queries [start, end) in groups of G (start ≥ n_sink: every sink lies in their past), each group reading the
    n_sink sinks and itself causally. One SDPA call over keys [sinks | group] under a (G, n_sink + G) mask, so the
    softmax runs jointly over the sink keys and the group's keys: (b, h, end − start, d)."""
    b, g = q.shape[0], (end - start) // G

    def keys(t):  # ((b g), k, s + G, d): the sinks in front of every group's keys
        sinks = repeat(t[:, :, :n_sink], "b k s d -> (b g) k s d", g=g)
        return torch.cat([sinks, group(t[:, :, start:end], G)], dim=2)

    r, c = torch.arange(G, device=q.device)[:, None], torch.arange(n_sink + G, device=q.device)[None, :]
    mask = c <= r + n_sink  # (G, s + G): query r reads every sink, then the group's keys up to itself
    return ungroup(sdpa(group(q[:, :, start:end], G), keys(k), keys(v), mask=mask), b)


def _causal_prefix_then_sinks(q, k, v, n_sink: int, m: int, groups: list[tuple[int, int, int]]) -> torch.Tensor:
    """A group that starts before n_sink reads, through the sinks, every token before it: all such groups together
    are causal attention over [0, m), m the first group start ≥ n_sink. Then each (G, start, end) of `groups`, a run
    of groups of G that start at or after m, reads the sinks and itself (`_groups_with_sinks`)."""
    parts = [sdpa(q[:, :, :m], k[:, :, :m], v[:, :, :m])]
    parts += [_groups_with_sinks(q, k, v, G, n_sink, start, end) for G, start, end in groups if start < end]
    return torch.cat(parts, dim=2)


def _short_sink(q, k, v, G: int, n_sink: int) -> torch.Tensor:
    """Pattern 1 (groups [0, G), [G, 2G), …) plus the first n_sink tokens."""
    n = q.shape[2]
    m = min(n, -(-n_sink // G) * G)  # group starts are multiples of G
    return _causal_prefix_then_sinks(q, k, v, n_sink, m, [(G, m, n)])


def _split_sink(q, k, v, G: int, n_sink: int) -> torch.Tensor:
    """Pattern 2, split (groups [0, s), [s, 3s), …, [n − s, n)) plus the first n_sink tokens."""
    n, s = q.shape[2], G // 2
    m = min(n, s + -(-max(0, n_sink - s) // G) * G)  # group starts are 0, s, s + G, …, n − s
    if m > n - s:  # no group starts at or after n_sink: causal attention throughout
        return _causal_prefix_then_sinks(q, k, v, n_sink, n, [])
    return _causal_prefix_then_sinks(q, k, v, n_sink, m, [(G, m, n - s), (s, n - s, n)])


# masks: which key each query reads, from token positions alone ---------------------------------------------------
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


def _window_mask(t: torch.Tensor, G: int) -> torch.Tensor:
    i, j = t[:, None], t[None, :]
    return (j <= i) & (j > i - G)


def _stride_mask(t: torch.Tensor) -> torch.Tensor:
    i, j = t[:, None], t[None, :]
    return (j <= i) & ((i - j) % stride_of(len(t)) == 0)


def _sink_mask(base: torch.Tensor, t: torch.Tensor, n_sink: int) -> torch.Tensor:
    """`base`, and every query reads the first n_sink tokens that are not after it (one that `base` already lets it
    read stays one key: the union counts it once)."""
    i, j = t[:, None], t[None, :]
    return base | ((j < n_sink) & (j <= i))


# the table ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What one chunk of heads reads: its fast path and its mask. `span`: the sequence must be a multiple of span·G.
    `variants`: the S2 variants the rule is defined for."""

    fast: Callable[..., torch.Tensor]  # (q, k, v, G, variant, layer_idx, n_sink) -> (b, heads of the chunk, n, d)
    mask: Callable[..., torch.Tensor]  # (t, G, variant, layer_idx, n_sink) -> (n, n) bool
    span: int = 1
    variants: tuple[str, ...] = S2_VARIANTS


P1 = Rule(lambda q, k, v, G, var, layer, sink: grouped(q, k, v, G),
          lambda t, G, var, layer, sink: _in_group_causal(t // G, t))
P2 = Rule(lambda q, k, v, G, var, layer, sink: shifted(q, k, v, G, var),
          lambda t, G, var, layer, sink: _shifted_mask(t, G, var))
ALTERNATE = Rule(lambda q, k, v, G, var, layer, sink: (P2 if layer % 2 else P1).fast(q, k, v, G, var, layer, sink),
                 lambda t, G, var, layer, sink: (P2 if layer % 2 else P1).mask(t, G, var, layer, sink))
DILATED = Rule(lambda q, k, v, G, var, layer, sink: _dilated2(q, k, v, G),
               lambda t, G, var, layer, sink: _in_group_causal(t // (2 * G) * 2 + t % 2, t), span=2)
LOCAL = Rule(lambda q, k, v, G, var, layer, sink: _local(q, k, v, G),
             lambda t, G, var, layer, sink: _window_mask(t, G))
STRIDED = Rule(lambda q, k, v, G, var, layer, sink: _strided(q, k, v),
               lambda t, G, var, layer, sink: _stride_mask(t))
SINK_P1 = Rule(lambda q, k, v, G, var, layer, sink: _short_sink(q, k, v, G, sink),
               lambda t, G, var, layer, sink: _sink_mask(_in_group_causal(t // G, t), t, sink))
SINK_P2 = Rule(lambda q, k, v, G, var, layer, sink: _split_sink(q, k, v, G, sink),
               lambda t, G, var, layer, sink: _sink_mask(_shifted_mask(t, G, "split"), t, sink), variants=("split",))


def _back(j: int) -> Rule:
    return Rule(lambda q, k, v, G, var, layer, sink: _block_back(q, k, v, G, j),
                lambda t, G, var, layer, sink: _block_back_mask(t, G, j))


RULES: dict[str, tuple[Rule, ...]] = {  # pattern → the rule of each equal chunk of heads, first chunk first
    "short": (P1,),
    "shift_all": (P2,),
    "s2": (P1, P2),
    "s2_layers": (ALTERNATE,),
    "dilated": (P1, DILATED),
    "block_sparse": tuple(_back(j) for j in range(BLOCK_SPARSE_CHUNKS)),
    "stride_sparse": (LOCAL, STRIDED),
    "local": (LOCAL,),
    "short_sink": (SINK_P1,),
    "s2_sink": (SINK_P1, SINK_P2),
}
PATTERNS = ("full", *RULES)
HEAD_CHUNKS = {name: len(rules) for name, rules in RULES.items()}


def head_chunks(pattern: str) -> int:
    """How many equal chunks of heads `pattern` splits the heads into (n_heads must be a multiple); 1 for "full"."""
    return len(RULES.get(pattern, ((),)))


def block_of(pattern: str, group_size: int) -> int:
    """The sequence length must be a multiple of this (dilated reads segments of 2G)."""
    return max(rule.span for rule in RULES[pattern]) * group_size


def group_sizes(pattern: str, seq_len: int) -> list[int]:
    """Every group size `pattern` can tile `seq_len` tokens with: even, ≥ 2, seq_len a multiple of its block."""
    return [G for G in range(2, seq_len + 1, 2) if seq_len % block_of(pattern, G) == 0]


def pattern_variants(pattern: str) -> tuple[str, ...]:
    """The S2 variants `pattern` is defined for: all of them, but the split variant only for s2_sink."""
    return tuple(v for v in S2_VARIANTS if all(v in rule.variants for rule in RULES.get(pattern, ())))


def check_pattern(pattern: str, group_size: int, n_heads: int, variant: str, n_sink: int = N_SINK) -> None:
    if pattern not in PATTERNS:
        raise ValueError(f"pattern {pattern!r} is unknown; expected one of {PATTERNS}")
    if pattern == "full":
        if variant not in S2_VARIANTS:
            raise ValueError(f"variant {variant!r} is unknown; expected one of {S2_VARIANTS}")
        return
    check_groups(group_size, n_heads, head_chunks(pattern), pattern, variant)
    if variant not in pattern_variants(pattern):
        raise ValueError(f"pattern {pattern!r} is defined for variant {pattern_variants(pattern)} only, "
                         f"got variant {variant!r}")
    if not isinstance(n_sink, int) or isinstance(n_sink, bool) or n_sink < 1:
        raise ValueError(f"n_sink {n_sink!r} must be a positive integer (the sink tokens of {SINK_PATTERNS})")


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str, group_size: int, *,
                     variant: str = "split", layer_idx: int = 0, pad: bool = False,
                     n_sink: int = N_SINK) -> torch.Tensor:
    """Attention under one of PATTERNS (module docstring), by its fast grouped path: (b, h, n, d). "full" ignores G,
    every pattern but the sink ones ignores n_sink."""
    check_qk(q, k, v)
    check_pattern(pattern, group_size, q.shape[1], variant, n_sink)
    if pattern == "full":
        return causal_attention(q, k, v)
    block = block_of(pattern, group_size)
    if not pad:
        check_length(q.shape[2], group_size, block, hint="; pass pad=True to pad the sequence")
    fns = [lambda q, k, v, rule=rule: rule.fast(q, k, v, group_size, variant, layer_idx, n_sink)
           for rule in RULES[pattern]]
    return attend_by_head_chunks(fns, q, k, v, block)
