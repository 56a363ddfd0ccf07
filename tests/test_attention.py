"""Attention patterns: every fast grouped path against the dense oracle (forward and gradients, float64), causality
by perturbation, the un-shift check with one-hot values, the masks' row counts, padding and error messages."""

import re

import pytest
import torch
from einops import rearrange

from minilongllora import attention
from minilongllora.attention import (
    PATTERNS,
    S2_VARIANTS,
    attention_mask,
    attention_probs,
    causal_attention,
    dense_attention,
    explicit_attention,
    s2_attention,
    sparse_attention,
)

SHIFTED = ("shift_all", "s2", "s2_layers")
SIZES = [(32, 8), (48, 8), (64, 16), (16, 16)]  # (n, G); the last one is G == n
HEADS = [(8, 8), (8, 2), (8, 1)]  # (h, kvh): MHA, GQA, MQA


def cases(sizes=SIZES):
    """(pattern, variant, layer_idx, n, G): every pattern, each variant of the shifted ones, both s2_layers parities."""
    out = []
    for pattern in PATTERNS:
        for variant in S2_VARIANTS if pattern in SHIFTED else ("split",):
            for layer_idx in (0, 1) if pattern == "s2_layers" else (0,):
                for n, G in sizes:
                    if pattern == "dilated" and n % (2 * G):
                        continue
                    out.append((pattern, variant, layer_idx, n, G))
    return out


def case_id(c):
    return "-".join(map(str, c))


def qkv(b, h, kvh, n, d, dtype=torch.float64, requires_grad=False):
    return [torch.randn(b, heads, n, d, dtype=dtype, requires_grad=requires_grad) for heads in (h, kvh, kvh)]


# the oracle -------------------------------------------------------------------------------------------------------
@pytest.fixture(params=["sdpa", "explicit"])
def kernel(request, monkeypatch):
    """Run a test through torch's SDPA, then again through `explicit_attention` (which the CPU uses in bf16)."""
    if request.param == "explicit":  # blocks of 12 queries: several per sequence, the last one often partial
        monkeypatch.setattr(attention, "EXPLICIT_DTYPES", (torch.float64, torch.float32))
        monkeypatch.setattr(attention, "EXPLICIT_BLOCK", 12)
    return request.param


@pytest.mark.parametrize("h,kvh", HEADS)
@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_fast_path_equals_dense_oracle_forward_and_backward(case, h, kvh, kernel):
    pattern, variant, layer_idx, n, G = case
    q, k, v = qkv(2, h, kvh, n, 8, requires_grad=True)
    copies = [t.detach().clone() for t in (q, k, v)]
    fast = sparse_attention(q, k, v, pattern, G, variant=variant, layer_idx=layer_idx)
    mask = attention_mask(pattern, n, G, h, variant=variant, layer_idx=layer_idx)
    ref = dense_attention(q, k, v, mask)
    assert fast.shape == (2, h, n, 8) and fast.dtype == torch.float64
    assert (fast - ref).abs().max() <= 1e-10
    upstream = torch.randn_like(fast)
    g_fast = torch.autograd.grad(fast, (q, k, v), upstream)
    g_ref = torch.autograd.grad(ref, (q, k, v), upstream)
    for a, b in zip(g_fast, g_ref):
        assert (a - b).abs().max() <= 1e-10
    for t, c in zip((q, k, v), copies):  # inputs untouched
        assert torch.equal(t.detach(), c)


@pytest.mark.parametrize("pattern", ["full", "short", "s2", "local"])
def test_cpu_bf16_takes_the_explicit_path_and_agrees_with_fp32(pattern, monkeypatch):
    """In bf16 on the CPU, groups of up to EXPLICIT_MAX_KEYS keys take explicit_attention: within bf16 rounding of the
    float32 result (bf16 keeps 8 bits of mantissa: relative error ~ 2^-8 per rounding, a few roundings here)."""
    calls = []

    def spy(*args):
        calls.append(args[0].dtype)
        return explicit_attention(*args)

    monkeypatch.setattr(attention, "explicit_attention", spy)
    q, k, v = qkv(2, 8, 2, 64, 16, dtype=torch.float32)
    ref = sparse_attention(q, k, v, pattern, 16)
    assert calls == []  # float32 goes through SDPA
    with torch.no_grad():
        out = sparse_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), pattern, 16)
    assert out.dtype == torch.bfloat16 and calls and set(calls) == {torch.bfloat16}
    assert (out.float() - ref).abs().max() <= 3e-2 * ref.abs().max()


def test_s2_attention_is_sparse_attention_s2():
    q, k, v = qkv(1, 4, 2, 32, 8)
    for variant in S2_VARIANTS:
        expected = sparse_attention(q, k, v, "s2", 8, variant=variant)
        assert torch.equal(s2_attention(q, k, v, 8, variant=variant), expected)


def test_short_with_group_equal_to_sequence_is_full_causal_attention():
    q, k, v = qkv(2, 8, 2, 32, 8)
    full = causal_attention(q, k, v)
    assert (sparse_attention(q, k, v, "short", 32) - full).abs().max() <= 1e-12
    assert (dense_attention(q, k, v, attention_mask("full", 32, 8, 8)) - full).abs().max() <= 1e-12
    assert torch.equal(attention_mask("short", 32, 32, 8), attention_mask("full", 32, 0, 8))


def test_gqa_uses_kv_head_j_over_r_meta_order(kernel):
    """Query head j reads kv head j // (h / kvh), as Meta's repeat_kv and transformers (repeat_interleave on heads)."""
    q, k, v = qkv(2, 8, 2, 32, 8)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1), is_causal=True)
    assert (causal_attention(q, k, v) - expected).abs().max() <= 1e-12
    mask = attention_mask("s2", 32, 8, 8)
    for j in range(8):  # one head at a time, with its kv head picked by hand
        one = dense_attention(q[:, j:j + 1], k[:, j // 4:j // 4 + 1], v[:, j // 4:j // 4 + 1], mask[j:j + 1])
        assert (s2_attention(q, k, v, 8)[:, j:j + 1] - one).abs().max() <= 1e-12


# causality --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases([(32, 8)]), ids=case_id)
def test_causality_by_perturbation(case, kernel):
    """Outputs are built from a token sequence x through tiny random projections; x is re-drawn from position t on.
    The outputs that change before t are exactly those the mask says read a key at or after t: none, except for the
    roll variants, whose shifted heads' positions 0 … G/2 − 1 read the last G/2 tokens (the wrap-around)."""
    pattern, variant, layer_idx, n, G = case
    h, kvh, d, dim = 8, 2, 4, 16
    # weights ~ N(0, 1/dim): unit-size q, k, v, so no softmax saturates and every key read leaves a visible trace
    wq, wk, wv = (torch.randn(dim, heads * d, dtype=torch.float64) / dim**0.5 for heads in (h, kvh, kvh))

    def run(x):
        q, k, v = (rearrange(x @ w, "b n (h d) -> b h n d", d=d) for w in (wq, wk, wv))
        return sparse_attention(q, k, v, pattern, G, variant=variant, layer_idx=layer_idx)

    mask = attention_mask(pattern, n, G, h, variant=variant, layer_idx=layer_idx)
    x = torch.randn(1, n, dim, dtype=torch.float64)
    base = run(x)
    leaky = set()
    for t in range(1, n):
        y = torch.cat([x[:, :t], torch.randn(1, n - t, dim, dtype=torch.float64)], dim=1)
        changed = ((run(y) - base)[0, :, :t].abs().amax(-1) > 1e-9)  # (h, t): outputs before t that moved
        predicted = mask[:, :t, t:].any(-1)
        assert torch.equal(changed, predicted), f"t={t}"
        leaky |= {tuple(hi) for hi in changed.nonzero().tolist()}
    shifted_heads = {"shift_all": range(h), "s2": range(h // 2, h), "s2_layers": range(h) if layer_idx else range(0)}
    if variant in ("roll", "roll_up") and pattern in SHIFTED:
        assert leaky == {(hh, i) for hh in shifted_heads[pattern] for i in range(G // 2)}
    else:
        assert leaky == set()


# the un-shift check -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases([(32, 8), (64, 16)]), ids=case_id)
def test_uniform_attention_over_one_hot_values_averages_the_allowed_tokens(case):
    """q = k = 0 makes attention uniform over the keys a query may read; v[j] = e_j then makes output i the indicator
    of those keys, divided by their count. A wrong un-shift or un-group puts the right row at the wrong position."""
    pattern, variant, layer_idx, n, G = case
    h, kvh = 8, 2
    q, k = torch.zeros(1, h, n, n, dtype=torch.float64), torch.zeros(1, kvh, n, n, dtype=torch.float64)
    v = torch.eye(n, dtype=torch.float64).expand(1, kvh, n, n)
    out = sparse_attention(q, k, v, pattern, G, variant=variant, layer_idx=layer_idx)[0]
    mask = attention_mask(pattern, n, G, h, variant=variant, layer_idx=layer_idx).double()
    assert (out - mask / mask.sum(-1, keepdim=True)).abs().max() <= 1e-12


# masks ------------------------------------------------------------------------------------------------------------
def test_mask_row_counts_and_structure():
    n, G, h = 64, 16, 8
    i = torch.arange(n)
    assert torch.equal(attention_mask("short", n, G, h).sum(-1), (i % G + 1).expand(h, n))  # pattern 1: i % G + 1
    assert torch.equal(attention_mask("full", n, G, h).sum(-1), (i + 1).expand(h, n))
    split = attention_mask("shift_all", n, G, h, variant="split")
    assert not split.triu(1).any()  # split never reads the future
    assert torch.equal(split[0].sum(-1), torch.where(i < G // 2, i + 1, (i - G // 2) % G + 1))
    assert not attention_mask("shift_all", n, G, h, variant="swap").triu(1).any()
    roll = attention_mask("s2", n, G, h, variant="roll")
    assert torch.equal(roll, attention_mask("s2", n, G, h, variant="roll_up"))  # the same groups when G divides n
    future = roll.triu(1).any(-1)  # (h, n): who reads the future
    assert not future[: h // 2].any() and future[h // 2:, : G // 2].all() and future[h // 2:].sum() == h // 2 * G // 2
    assert torch.equal(roll[h // 2:, : G // 2].triu(1).nonzero()[:, 2].unique(), torch.arange(n - G // 2, n))
    for pattern in PATTERNS:  # every query reads at least one key, at most G (+ 4 sinks) keys (full aside)
        counts = attention_mask(pattern, n, G, h).sum(-1)
        assert counts.min() >= 1 and (pattern == "full" or counts.max() <= G + 4 * pattern.endswith("_sink"))
    stride = attention_mask("stride_sparse", n, G, h)[h // 2:]
    assert torch.equal(stride[0].sum(-1), i // 8 + 1)  # stride 8 = √64: query i reads i // 8 + 1 keys
    assert torch.equal(attention_mask("stride_sparse", n, G, h)[0].sum(-1), torch.clamp(i + 1, max=G))
    local = attention_mask("local", n, G, h)  # a sliding window: query i reads i − G < j ≤ i, on every head
    assert torch.equal(local[0].sum(-1), torch.clamp(i + 1, max=G)) and (local == local[0]).all()
    assert local[0, 20, 20 - G + 1] and not local[0, 20, 20 - G] and not local[0, 20, 21]


def test_attention_probs_rows_sum_to_one_and_match_dense():
    q, k, v = qkv(2, 4, 2, 16, 8)
    probs = attention_probs(q, k)
    assert probs.shape == (2, 4, 16, 16) and torch.allclose(probs.sum(-1), torch.ones(2, 4, 16, dtype=torch.float64))
    assert not probs.triu(1).any()
    mask = attention_mask("s2", 16, 4, 4, variant="roll")
    out = torch.einsum("bhij,bhjd->bhid", attention_probs(q, k, mask), v.repeat_interleave(2, dim=1))
    assert torch.allclose(out, dense_attention(q, k, v, mask), atol=1e-12)


# padding ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases([(48, 8)]), ids=case_id)
def test_pad_true_equals_the_oracle_at_the_padded_length(case):
    pattern, variant, layer_idx, _, G = case
    n, h, kvh = 41, 8, 2
    block = 2 * G if pattern == "dilated" else G
    n_pad = -(-n // block) * block
    q, k, v = qkv(1, h, kvh, n, 8)
    out = sparse_attention(q, k, v, pattern, G, variant=variant, layer_idx=layer_idx, pad=True)
    mask = attention_mask(pattern, n_pad, G, h, variant=variant, layer_idx=layer_idx)
    if variant in ("roll", "roll_up") and pattern in SHIFTED:  # the wrap-around reads the padded (zero) keys
        padded = [torch.nn.functional.pad(t, (0, 0, 0, n_pad - n)) for t in (q, k, v)]
        ref = dense_attention(*padded, mask)[:, :, :n]
    else:  # causal: the padded keys come after every real query
        ref = dense_attention(q, k, v, mask[:, :n, :n])
    assert out.shape == (1, h, n, 8) and (out - ref).abs().max() <= 1e-10


def test_pad_true_is_a_no_op_when_the_length_divides():
    q, k, v = qkv(1, 4, 4, 32, 8)
    assert torch.equal(s2_attention(q, k, v, 8, pad=True), s2_attention(q, k, v, 8))


# errors -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,message", [
    (lambda q, k, v: s2_attention(q, k, v, 7), "group_size 7 must be an even integer"),
    (lambda q, k, v: s2_attention(q, k, v, 0), "group_size 0"),
    (lambda q, k, v: s2_attention(q, k, v, 12), "seq_len 32 is not divisible by group_size 12; pass pad=True"),
    (lambda q, k, v: sparse_attention(q, k, v, "dilated", 32), "2 * group_size = 64"),
    (lambda q, k, v: sparse_attention(q, k, v, "nope", 8), "pattern 'nope' is unknown"),
    (lambda q, k, v: s2_attention(q, k, v, 8, variant="left"), "variant 'left' is unknown"),
    (lambda q, k, v: s2_attention(q[:, :3], k[:, :1], v[:, :1], 8), "n_heads 3 must be divisible by 2"),
    (lambda q, k, v: sparse_attention(q[:, :6], k[:, :2], v[:, :2], "block_sparse", 8),
     "n_heads 6 must be divisible by 4"),
    (lambda q, k, v: s2_attention(q, k[:, :3], v[:, :3], 8), "n_heads 8 is not divisible by n_kv_heads 3"),
    (lambda q, k, v: s2_attention(q[0], k, v, 8), "q must have 4 dims"),
    (lambda q, k, v: causal_attention(q, k, v[:, :, :16]), "v shape"),
    (lambda q, k, v: causal_attention(q, k[:, :, :16], v[:, :, :16]), "disagree"),
    (lambda q, k, v: attention_mask("s2", 30, 8, 8), "seq_len 30 is not divisible by group_size 8"),
    (lambda q, k, v: attention_mask("s2", 32, 8, 5), "n_heads 5"),
    (lambda q, k, v: dense_attention(q, k, v, torch.ones(32, 32)), "mask must be a bool tensor"),
])
def test_bad_inputs_raise_one_clear_value_error(call, message):
    q, k, v = qkv(1, 8, 4, 32, 8)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        call(q, k, v)
    assert "\n" not in str(err.value)


def test_the_group_size_is_one_rule():
    """attention.group_size: int(ratio · n), rounded down to an even number, at least 2; G / n gives G back."""
    from minilongllora.attention import group_size
    from minilongllora.config import LlamaConfig

    assert group_size(1024, 0.25) == 256 and group_size(100, 0.25) == 24 and group_size(12, 0.1) == 2
    assert all(group_size(n, g / n) == g for n in range(2, 300) for g in range(2, n + 1, 2))
    assert LlamaConfig(group_size_ratio=1 / 6).group_size(1536) == 256
