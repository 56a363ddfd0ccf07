"""The sink patterns (short_sink, s2_sink: every query also reads the first n_sink tokens; Xiao et al. 2023, Zhang
2024): a mask checked by hand, the fast path against the dense oracle for sink counts that reach into later groups,
causality by perturbation, head counts, and n_sink from LlamaConfig / TrainConfig to the attention. The parametrized
tests of test_attention.py run both patterns at the default n_sink = 4 like every other pattern."""

import pytest
import torch
from einops import rearrange

from minilongllora import Llama, LlamaConfig, to_hf
from minilongllora.attention import causal_attention
from minilongllora.errors import UserInputError
from minilongllora.patterns import PATTERNS, SINK_PATTERNS, sparse_attention
from minilongllora.reference import attention_mask, dense_attention
from minilongllora.trainconfig import TrainConfig, build_model

from test_attention import kernel, qkv  # noqa: F401 (kernel is a fixture)

# (n, G, n_sink): sinks inside the first group, reaching into later groups, and past the whole sequence
SINK_CASES = [(32, 8, 1), (32, 8, 4), (32, 8, 5), (16, 4, 2), (16, 4, 9), (16, 2, 3), (24, 6, 7), (32, 32, 4),
              (16, 4, 16), (16, 4, 40)]


def reads(mask_row: torch.Tensor) -> list[int]:
    return mask_row.nonzero().flatten().tolist()


def test_sink_patterns_are_in_the_registry():
    assert set(SINK_PATTERNS) <= set(PATTERNS)


def test_small_masks_by_hand():
    """n = 16, G = 4, n_sink = 2. short_sink: groups [0, 4), [4, 8), [8, 12), [12, 16); s2_sink's shifted half (split,
    s = 2): groups [0, 2), [2, 6), [6, 10), [10, 14), [14, 16)."""
    short = attention_mask("short_sink", 16, 4, 1, n_sink=2)[0]
    assert reads(short[9]) == [0, 1, 8, 9]  # its group up to itself, and the two sinks
    assert reads(short[5]) == [0, 1, 4, 5]
    assert reads(short[1]) == [0, 1]  # the sinks are in its own group: read once
    assert reads(short[0]) == [0]  # sink 1 is in its future
    s2 = attention_mask("s2_sink", 16, 4, 2, n_sink=2)
    assert torch.equal(s2[0], short)  # the first half of the heads: pattern 1 with sinks
    assert reads(s2[1, 9]) == [0, 1, 6, 7, 8, 9]
    assert reads(s2[1, 3]) == [0, 1, 2, 3]
    assert reads(s2[1, 15]) == [0, 1, 14, 15]  # the last half group, and the sinks
    assert reads(s2[1, 1]) == [0, 1] and reads(s2[1, 0]) == [0]
    assert not s2.triu(1).any()  # never a later token


@pytest.mark.parametrize("pattern", SINK_PATTERNS)
def test_mask_is_the_base_pattern_plus_the_first_tokens(pattern):
    n, G, n_sink, h = 32, 8, 5, 2
    base = attention_mask({"short_sink": "short", "s2_sink": "s2"}[pattern], n, G, h)
    sinks = attention_mask(pattern, n, G, h, n_sink=n_sink)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    assert torch.equal(sinks, base | ((j < n_sink) & (j <= i)))
    assert torch.equal(attention_mask(pattern, n, G, h, n_sink=n), attention_mask("full", n, G, h))  # all sinks


@pytest.mark.parametrize("h,kvh", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("case", SINK_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("pattern", SINK_PATTERNS)
def test_fast_path_equals_dense_oracle_for_any_sink_count(pattern, case, h, kvh, kernel):  # noqa: F811
    """float64, forward and gradients: the causal prefix (groups that start before n_sink), the groups with the sink
    keys in front under one joint softmax, split's half groups; GQA and MQA."""
    n, G, n_sink = case
    q, k, v = qkv(2, h, kvh, n, 8, requires_grad=True)
    fast = sparse_attention(q, k, v, pattern, G, n_sink=n_sink)
    ref = dense_attention(q, k, v, attention_mask(pattern, n, G, h, n_sink=n_sink))
    assert (fast - ref).abs().max() <= 1e-10
    upstream = torch.randn_like(fast)
    for a, b in zip(torch.autograd.grad(fast, (q, k, v), upstream), torch.autograd.grad(ref, (q, k, v), upstream)):
        assert (a - b).abs().max() <= 1e-10


@pytest.mark.parametrize("pattern", SINK_PATTERNS)
def test_sinks_past_the_sequence_are_full_causal_attention(pattern):
    q, k, v = qkv(1, 4, 2, 16, 8)
    assert (sparse_attention(q, k, v, pattern, 4, n_sink=16) - causal_attention(q, k, v)).abs().max() <= 1e-12


@pytest.mark.parametrize("case", [(32, 8, 5), (16, 4, 9), (16, 2, 3)], ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("pattern", SINK_PATTERNS)
def test_causality_by_perturbation(pattern, case):
    """Re-drawing the tokens from position t on changes no output before t (outputs from tiny random projections)."""
    n, G, n_sink = case
    h, kvh, d, dim = 4, 2, 4, 16
    wq, wk, wv = (torch.randn(dim, heads * d, dtype=torch.float64) / dim**0.5 for heads in (h, kvh, kvh))

    def run(x):
        q, k, v = (rearrange(x @ w, "b n (h d) -> b h n d", d=d) for w in (wq, wk, wv))
        return sparse_attention(q, k, v, pattern, G, n_sink=n_sink)

    x = torch.randn(1, n, dim, dtype=torch.float64)
    base = run(x)
    for t in range(1, n):
        y = torch.cat([x[:, :t], torch.randn(1, n - t, dim, dtype=torch.float64)], dim=1)
        out = run(y)
        assert torch.equal(out[:, :, :t], base[:, :, :t]), f"t={t}"
        assert (out[:, :, t:] - base[:, :, t:]).abs().amax() > 1e-6


def test_the_sinks_change_what_later_groups_read():
    """Outputs in the first group equal the plain pattern's; in later groups they differ (they now see token 0)."""
    q, k, v = qkv(1, 4, 4, 32, 8)
    for plain, sink in (("short", "short_sink"), ("s2", "s2_sink")):
        a, b = sparse_attention(q, k, v, plain, 8), sparse_attention(q, k, v, sink, 8, n_sink=1)
        assert (a[:, :, :4] - b[:, :, :4]).abs().max() <= 1e-12
        assert ((a - b).abs().amax(dim=(0, 1, 3)) > 1e-6)[8:].all()


def test_head_counts_and_bad_settings():
    q, k, v = qkv(1, 3, 1, 16, 8)  # 3 heads: one chunk for short_sink, two for s2_sink
    mask = attention_mask("short_sink", 16, 4, 3, n_sink=2)
    assert (sparse_attention(q, k, v, "short_sink", 4, n_sink=2) - dense_attention(q, k, v, mask)).abs().max() < 1e-10
    with pytest.raises(ValueError, match="n_heads 3 must be divisible by 2"):
        sparse_attention(q, k, v, "s2_sink", 4)
    q, k, v = qkv(1, 4, 2, 16, 8)
    for n_sink in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_sink"):
            sparse_attention(q, k, v, "s2_sink", 4, n_sink=n_sink)
    with pytest.raises(ValueError, match="defined for variant \\('split',\\) only"):
        sparse_attention(q, k, v, "s2_sink", 4, variant="roll")
    with pytest.raises(ValueError, match="defined for variant"):
        attention_mask("s2_sink", 16, 4, 4, variant="swap")
    with pytest.raises(UserInputError, match="s2_variant"):
        LlamaConfig(attention="s2_sink", s2_variant="roll")
    with pytest.raises(UserInputError, match="n_sink"):
        LlamaConfig(n_sink=0)
    with pytest.raises(UserInputError, match="n_sink"):
        TrainConfig(base="tiny", attention="s2_sink", n_sink=0)
    LlamaConfig(attention="short_sink", s2_variant="roll")  # no shifted half: any variant, as "short"


def test_n_sink_reaches_the_attention_from_the_configs(tmp_path):
    """LlamaConfig.n_sink is what the model's training attention reads; TrainConfig.n_sink sets it, for a preset
    and for a Hugging Face base (whose config.json holds no attention setting)."""
    config = LlamaConfig.from_preset("tiny", n_layers=1, dim=64, n_heads=4, ffn_dim=128, max_seq_len=64,
                                     attention="s2_sink", group_size_ratio=0.25)
    one, eight = Llama(config.replace(n_sink=1)).train(), Llama(config.replace(n_sink=8)).train()
    eight.load_state_dict(one.state_dict())
    tokens = torch.randint(0, 256, (1, 64))
    with torch.no_grad():
        assert (one(tokens) - eight(tokens)).abs().max() > 1e-4
        assert torch.equal(one.eval()(tokens), eight.eval()(tokens))  # evaluation: full attention
    to_hf(one, tmp_path / "base")
    assert "n_sink" not in (tmp_path / "base" / "config.json").read_text()
    for base in ("tiny", str(tmp_path / "base")):
        kw = {"model_overrides": dict(n_layers=1, dim=64, n_heads=4, ffn_dim=128)} if base == "tiny" else {}
        model = build_model(TrainConfig(base=base, seq_len=64, attention="s2_sink", n_sink=7, **kw))
        assert model.config.n_sink == 7 and model.config.attention == "s2_sink"
