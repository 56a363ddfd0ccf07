"""Table 11 from the shapes: hand-computed terms for Llama-2-7B."""

import pytest

from minilongllora import LlamaConfig
from minilongllora.flops import flops_breakdown, format_flops_table


def test_llama2_7b_terms_by_hand():
    n, d, f, L, V = 8192, 4096, 11008, 32, 32000
    r = flops_breakdown(LlamaConfig.from_preset("llama2-7b"), n)
    assert r["attn_full"] == pytest.approx(L * 2 * (2 * n * n * d) / 1e12)  # q·kᵀ and probs·v, dense
    assert r["attn_s2"] == pytest.approx(r["attn_full"] / 4)  # groups of n/4: a quarter of the pairs
    assert r["proj"] == pytest.approx(L * 4 * 2 * n * d * d / 1e12)
    assert r["ffn"] == pytest.approx(L * 2 * (3 * n * d * f + n * f) / 1e12)
    assert r["others"] == pytest.approx(2 * (n * d * V + 65 * 2 * n * d + L * 2 * n * 2 * d) / 1e12)
    assert r["total_full"] - r["total_s2"] == pytest.approx(r["attn_full"] - r["attn_s2"])


def test_table11_row_8192_as_printed():
    table = format_flops_table([flops_breakdown(LlamaConfig.from_preset("llama2-7b"), 8192)])
    rows = [line.split() for line in table.splitlines()[1:]]
    assert rows[0] == ["8192", "✗", "35.2", "35.2", "70.9", "2.2", "143.5"]
    assert rows[1] == ["8192", "✓", "8.8", "35.2", "70.9", "2.2", "117.1"]


def test_gqa_projections_are_smaller_and_bad_context_fails():
    c70 = LlamaConfig.from_preset("llama2-70b")
    r = flops_breakdown(c70, 4096)
    assert r["proj"] == pytest.approx(80 * 2 * 4096 * 8192 * (8192 + 2 * 1024 + 8192) / 1e12)
    with pytest.raises(ValueError, match="context"):
        flops_breakdown(c70, 0)
