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

einops axes as in attention.py; c head chunks, m tokens per stride class. A fast path takes (q, k, v, G, variant,
layer_idx) for one chunk of heads; a mask takes (t = arange(n), G, variant, layer_idx) and returns (n, n) bool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange

from .attention import (S2_VARIANTS, sdpa, attend_by_head_chunks, causal_attention, check_groups, check_length,
                        check_qk, group, grouped, shifted, ungroup)

BLOCK_SPARSE_CHUNKS = 4  # Fig. 7's "n = 4": block_sparse's heads in 4 chunks, chunk j reading j blocks back


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


# the table ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What one chunk of heads reads: its fast path and its mask. `span`: the sequence must be a multiple of span·G."""

    fast: Callable[..., torch.Tensor]  # (q, k, v, G, variant, layer_idx) -> (b, heads of the chunk, n, d)
    mask: Callable[..., torch.Tensor]  # (t, G, variant, layer_idx) -> (n, n) bool
    span: int = 1


P1 = Rule(lambda q, k, v, G, var, layer: grouped(q, k, v, G), lambda t, G, var, layer: _in_group_causal(t // G, t))
P2 = Rule(lambda q, k, v, G, var, layer: shifted(q, k, v, G, var), lambda t, G, var, layer: _shifted_mask(t, G, var))
ALTERNATE = Rule(lambda q, k, v, G, var, layer: (P2 if layer % 2 else P1).fast(q, k, v, G, var, layer),
                 lambda t, G, var, layer: (P2 if layer % 2 else P1).mask(t, G, var, layer))
DILATED = Rule(lambda q, k, v, G, var, layer: _dilated2(q, k, v, G),
               lambda t, G, var, layer: _in_group_causal(t // (2 * G) * 2 + t % 2, t), span=2)
LOCAL = Rule(lambda q, k, v, G, var, layer: _local(q, k, v, G), lambda t, G, var, layer: _window_mask(t, G))
STRIDED = Rule(lambda q, k, v, G, var, layer: _strided(q, k, v), lambda t, G, var, layer: _stride_mask(t))


def _back(j: int) -> Rule:
    return Rule(lambda q, k, v, G, var, layer: _block_back(q, k, v, G, j),
                lambda t, G, var, layer: _block_back_mask(t, G, j))


RULES: dict[str, tuple[Rule, ...]] = {  # pattern → the rule of each equal chunk of heads, first chunk first
    "short": (P1,),
    "shift_all": (P2,),
    "s2": (P1, P2),
    "s2_layers": (ALTERNATE,),
    "dilated": (P1, DILATED),
    "block_sparse": tuple(_back(j) for j in range(BLOCK_SPARSE_CHUNKS)),
    "stride_sparse": (LOCAL, STRIDED),
    "local": (LOCAL,),
}
PATTERNS = ("full", *RULES)
HEAD_CHUNKS = {name: len(rules) for name, rules in RULES.items()}


def head_chunks(pattern: str) -> int:
    """How many equal chunks of heads `pattern` splits the heads into (n_heads must be a multiple); 1 for "full"."""
    return len(RULES.get(pattern, ((),)))


def block_of(pattern: str, group_size: int) -> int:
    """The sequence length must be a multiple of this (dilated reads segments of 2G)."""
    return max(rule.span for rule in RULES[pattern]) * group_size


def check_pattern(pattern: str, group_size: int, n_heads: int, variant: str) -> None:
    if pattern not in PATTERNS:
        raise ValueError(f"pattern {pattern!r} is unknown; expected one of {PATTERNS}")
    if pattern == "full":
        if variant not in S2_VARIANTS:
            raise ValueError(f"variant {variant!r} is unknown; expected one of {S2_VARIANTS}")
        return
    check_groups(group_size, n_heads, head_chunks(pattern), pattern, variant)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str, group_size: int, *,
                     variant: str = "split", layer_idx: int = 0, pad: bool = False) -> torch.Tensor:
    """Attention under one of PATTERNS (module docstring), by its fast grouped path: (b, h, n, d). "full" ignores G."""
    check_qk(q, k, v)
    check_pattern(pattern, group_size, q.shape[1], variant)
    if pattern == "full":
        return causal_attention(q, k, v)
    block = block_of(pattern, group_size)
    if not pad:
        check_length(q.shape[2], group_size, block, hint="; pass pad=True to pad the sequence")
    fns = [lambda q, k, v, rule=rule: rule.fast(q, k, v, group_size, variant, layer_idx) for rule in RULES[pattern]]
    return attend_by_head_chunks(fns, q, k, v, block)
