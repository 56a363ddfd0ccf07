"""rope.py against transformers (the independent reference), plus the properties RoPE is meant to have.

Every scaling type is compared with `LlamaRotaryEmbedding` built from a `transformers.LlamaConfig` carrying the same
`rope_parameters`, and the (inv_freq, attention scaling) pair with `ROPE_INIT_FUNCTIONS`. Seeding is done by the
autouse fixture in conftest.py.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from minilongllora.rope import (ROPE_TYPES, apply_rope, effective_context, interpolation_factor,
                                normalize_rope_scaling, rope_cos_sin, rope_inv_freq, rotate_half)

N_POSITIONS = 512
TOL = 1e-6  # fp32; in practice the two implementations agree bit for bit

# name -> (max_position_embeddings, scaling dict or None)
CASES = {
    "default": (512, None),
    "linear4": (128, {"rope_type": "linear", "factor": 4.0}),
    "dynamic2_below": (1024, {"rope_type": "dynamic", "factor": 2.0}),  # 512 positions < 1024: plain RoPE
    "dynamic2_above": (200, {"rope_type": "dynamic", "factor": 2.0}),  # 512 > 200: base rescaled
    "yarn4_no_original": (128, {"rope_type": "yarn", "factor": 4.0}),
    "yarn4_original": (512, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
    "yarn8_betas": (256, {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32,
                          "beta_fast": 16.0, "beta_slow": 2.0}),
    "yarn4_untruncated": (512, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                                "truncate": False}),
    "yarn4_mscale": (512, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                           "mscale": 0.707, "mscale_all_dim": 1.0}),
    "yarn4_attention_factor": (512, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                                     "attention_factor": 0.9}),
    "llama3": (256, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 32}),
}


def hf_config(head_dim: int, theta: float, max_pos: int, scaling: dict | None):
    """A transformers-5 LlamaConfig: rope_theta and the scaling both live in `rope_parameters`."""
    from transformers import LlamaConfig

    rope_parameters = {"rope_theta": theta, "rope_type": "default", **(scaling or {})}
    return LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim, num_hidden_layers=1,
                       intermediate_size=8, vocab_size=8, max_position_embeddings=max_pos,
                       rope_parameters=rope_parameters)


@pytest.fixture(autouse=True, scope="module")
def _quiet_transformers():
    """transformers warns (by design) about yarn factors that disagree with max/original; keep the output clean."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("case", list(CASES))
def test_cos_sin_equal_transformers(case, head_dim, theta):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    max_pos, scaling = CASES[case]
    config = hf_config(head_dim, theta, max_pos, scaling)
    assert config.rope_parameters["rope_theta"] == theta  # the base really reached HF
    hf_rope = LlamaRotaryEmbedding(config)  # fresh module: dynamic NTK in HF remembers the longest length seen
    positions = torch.arange(N_POSITIONS)
    x = torch.zeros(1, N_POSITIONS, head_dim)
    hf_cos, hf_sin = hf_rope(x, positions[None])  # (1, n, d)

    cos, sin = rope_cos_sin(positions, head_dim, theta, scaling, max_pos)  # (n, d)
    assert cos.shape == sin.shape == (N_POSITIONS, head_dim) and cos.dtype == torch.float32
    torch.testing.assert_close(cos, hf_cos[0], rtol=0, atol=TOL)
    torch.testing.assert_close(sin, hf_sin[0], rtol=0, atol=TOL)

    # batched positions (b, n), each row its own offset, against HF on the same rows
    batch = torch.stack([positions, positions.flip(0)])  # max is still 511, so dynamic sees the same length
    hf_cos_b, hf_sin_b = LlamaRotaryEmbedding(config)(x.expand(2, -1, -1), batch)
    cos_b, sin_b = rope_cos_sin(batch, head_dim, theta, scaling, max_pos, dtype=torch.float32)
    assert cos_b.shape == (2, N_POSITIONS, head_dim)
    torch.testing.assert_close(cos_b, hf_cos_b, rtol=0, atol=TOL)
    torch.testing.assert_close(sin_b, hf_sin_b, rtol=0, atol=TOL)


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][1] is not None])
def test_inv_freq_equal_rope_init_functions(case, head_dim, theta):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    max_pos, scaling = CASES[case]
    init = ROPE_INIT_FUNCTIONS[scaling["rope_type"]]
    for seq_len in (None, max_pos, 4 * max_pos + 3):  # the length only matters to dynamic, above max_pos
        hf_inv_freq, hf_attention = init(hf_config(head_dim, theta, max_pos, scaling), "cpu", seq_len=seq_len)
        inv_freq, attention = rope_inv_freq(head_dim, theta, scaling, max_pos, seq_len)
        assert inv_freq.shape == (head_dim // 2,) and inv_freq.dtype == torch.float32
        # HF computes dynamic NTK's base in float64 from a Python int (here) but in float32 from a position tensor
        # (in forward, which test_cos_sin_equal_transformers checks bit-exactly); allow an ulp for the former
        torch.testing.assert_close(inv_freq, hf_inv_freq, rtol=3e-7, atol=0)
        assert attention == pytest.approx(hf_attention, rel=1e-12)


def test_yarn_attention_factor_values():
    """0.1·ln(s) + 1 by default, DeepSeek's ratio with mscale/mscale_all_dim, an explicit value as given."""
    base = {"rope_type": "yarn", "factor": 4.0}
    assert rope_inv_freq(64, 1e4, base, 128)[1] == pytest.approx(0.1 * math.log(4) + 1)
    ratio = (0.1 * 0.707 * math.log(4) + 1) / (0.1 * math.log(4) + 1)
    assert rope_inv_freq(64, 1e4, {**base, "mscale": 0.707, "mscale_all_dim": 1.0}, 128)[1] == pytest.approx(ratio)
    assert rope_inv_freq(64, 1e4, {**base, "attention_factor": 0.9}, 128)[1] == 0.9
    for rope_type in ("default", "linear", "dynamic", "llama3"):
        scaling = None if rope_type == "default" else {"rope_type": rope_type, "factor": 4.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0}
        assert rope_inv_freq(64, 1e4, scaling, 128, 1000)[1] == 1.0


def test_dynamic_changes_only_above_max_seq_len():
    scaling = {"rope_type": "dynamic", "factor": 2.0}
    default, _ = rope_inv_freq(64, 1e4, None, 256)
    for seq_len in (None, 1, 256):
        assert torch.equal(rope_inv_freq(64, 1e4, scaling, 256, seq_len)[0], default)
    above, _ = rope_inv_freq(64, 1e4, scaling, 256, 257)
    assert above[0] == default[0] and (above[1:] < default[1:]).all()  # θ_0 = 1 fixed, the others slow down


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batched", [False, True])
def test_apply_rope_equals_transformers(dtype, batched):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half as hf_rotate_half

    b, h, n, d = 2, 3, 40, 32
    q, k = torch.randn(b, h, n, d, dtype=dtype), torch.randn(b, h, n, d, dtype=dtype)
    positions = torch.randint(0, 1000, (b, n)) if batched else torch.arange(n) + 7
    cos, sin = rope_cos_sin(positions, d, 10000.0, {"rope_type": "linear", "factor": 2.0}, 512, dtype=dtype)
    hf_cos, hf_sin = (cos, sin) if batched else (cos[None].expand(b, -1, -1), sin[None].expand(b, -1, -1))
    hf_q, hf_k = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    for ours, theirs, x in ((apply_rope(q, cos, sin), hf_q, q), (apply_rope(k, cos, sin), hf_k, k)):
        assert ours.shape == x.shape and ours.dtype == dtype
        assert torch.equal(ours, theirs)
    assert torch.equal(rotate_half(q), hf_rotate_half(q))
    # float32 tables on a bfloat16 input: cast first, as HF's rotary embedding hands them over
    cos32, sin32 = rope_cos_sin(positions, d, 10000.0, {"rope_type": "linear", "factor": 2.0}, 512)
    assert torch.equal(apply_rope(q, cos32, sin32), hf_q)


def test_rotate_half_pairs_i_with_i_plus_half():
    x = torch.arange(8.0)
    assert rotate_half(x).tolist() == [-4.0, -5.0, -6.0, -7.0, 0.0, 1.0, 2.0, 3.0]
    # one rotation by 90° in every pair (i, i + d/2) with cos = 0, sin = 1
    cos, sin = torch.zeros(1, 8), torch.ones(1, 8)
    assert torch.equal(apply_rope(x.view(1, 1, 1, 8), cos, sin).flatten(), rotate_half(x))


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0},
                                     {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}])
def test_scores_depend_only_on_relative_position(scaling):
    d = 64
    q, k = torch.randn(1, 1, 1, d, dtype=torch.float64), torch.randn(1, 1, 1, d, dtype=torch.float64)
    positions = torch.tensor([0, 5, 100, 105, 300, 305, 1000, 1005])
    cos, sin = rope_cos_sin(positions, d, 10000.0, scaling, 256, dtype=torch.float64)  # (8, d)
    q_rot = apply_rope(q.expand(1, 1, 8, d), cos, sin)[0, 0]  # (8, d)
    k_rot = apply_rope(k.expand(1, 1, 8, d), cos, sin)[0, 0]
    # q at m + 5, k at m, for m = 0, 100, 300, 1000: the same score each time
    scores = (q_rot[1::2] * k_rot[0::2]).sum(-1)
    torch.testing.assert_close(scores, scores[:1].expand(4), rtol=0, atol=1e-5)
    # and rotation preserves norms, so it is not the identity by accident either
    torch.testing.assert_close(q_rot.norm(dim=-1), q[0, 0, 0].norm().expand(8) * rope_inv_freq(d, 1e4, scaling, 256)[1])
    assert not torch.allclose(q_rot[0], q_rot[1])


def test_linear_factor_squeezes_positions():
    d, f = 64, 4
    positions = torch.arange(0, 300)
    cos_l, sin_l = rope_cos_sin(positions * f, d, 10000.0, {"rope_type": "linear", "factor": float(f)}, 128)
    cos_d, sin_d = rope_cos_sin(positions, d, 10000.0, None, 128)
    torch.testing.assert_close(cos_l, cos_d, rtol=0, atol=1e-5)  # f·m·(θ/f) vs m·θ: equal up to float32 rounding
    torch.testing.assert_close(sin_l, sin_d, rtol=0, atol=1e-5)
    # factor 1 is plain RoPE, bit for bit
    cos_1, sin_1 = rope_cos_sin(positions, d, 10000.0, {"rope_type": "linear", "factor": 1.0}, 128)
    assert torch.equal(cos_1, cos_d) and torch.equal(sin_1, sin_d)


def test_normalize_rope_scaling():
    assert normalize_rope_scaling(None) is None
    assert normalize_rope_scaling({"rope_type": "default", "rope_theta": 1e4}) is None
    assert normalize_rope_scaling({"type": "linear", "factor": 4}) == {"rope_type": "linear", "factor": 4.0}
    assert normalize_rope_scaling({"rope_type": "dynamic", "factor": 2, "rope_theta": 1e4}) == {
        "rope_type": "dynamic", "factor": 2.0}
    llama31 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
               "rope_type": "llama3"}
    assert normalize_rope_scaling(llama31) == llama31
    yarn = {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096, "truncate": False}
    out = normalize_rope_scaling(yarn)
    assert out["rope_type"] == "yarn" and "type" not in out and out["truncate"] is False
    assert out["original_max_position_embeddings"] == 4096 and isinstance(out["original_max_position_embeddings"], int)
    assert normalize_rope_scaling(out) == out  # idempotent
    assert yarn["type"] == "yarn" and "rope_type" not in yarn  # the caller's dict is left alone
    assert set(ROPE_TYPES) == {"default", "linear", "dynamic", "yarn", "llama3"}


@pytest.mark.parametrize("scaling, field", [
    ({"rope_type": "ntk-by-parts", "factor": 2.0}, "rope_type"),
    ({"rope_type": "linear", "factor": 0.5}, "factor"),
    ({"rope_type": "linear"}, "factor"),
    ({"type": "dynamic"}, "factor"),
    ({"rope_type": "yarn", "factor": "4"}, "factor"),
    ({"rope_type": "linear", "factor": True}, "factor"),
    ({"rope_type": "yarn", "factor": 4.0, "beta_fast": "fast"}, "beta_fast"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 100.5},
     "original_max_position_embeddings"),
    ({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}, "low_freq_factor"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}, "high_freq_factor"),
    ({"rope_type": "linear", "factr": 4.0}, "factr"),
])
def test_normalize_rope_scaling_errors_name_the_field(scaling, field):
    with pytest.raises(ValueError, match=field):
        normalize_rope_scaling(scaling)


def test_unknown_type_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        normalize_rope_scaling({"rope_type": "longrope", "factor": 2.0})
    assert all(t in str(info.value) for t in ROPE_TYPES)


def test_interpolation_factor():
    assert interpolation_factor(8192, 4096) == 2
    assert interpolation_factor(100000, 4096) == 25
    assert interpolation_factor(1000, 256) == 4
    assert interpolation_factor(4096, 4096) == 1 and interpolation_factor(100, 4096) == 1
    for bad in ((0, 4096), (8192, 0), (-1, 4096), (8192, -4096)):
        with pytest.raises(ValueError):
            interpolation_factor(*bad)


def test_effective_context():
    assert effective_context(4096, None) == 4096
    assert effective_context(4096, {"rope_type": "default"}) == 4096
    assert effective_context(4096, {"type": "linear", "factor": 8}) == 32768
    assert effective_context(4096, {"rope_type": "dynamic", "factor": 2.0}) == 8192
    assert effective_context(4096, {"rope_type": "yarn", "factor": 4.0}) == 16384
    assert effective_context(131072, {"rope_type": "yarn", "factor": 4.0,
                                      "original_max_position_embeddings": 32768}) == 131072
    assert effective_context(131072, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}) == 131072
