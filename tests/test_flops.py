"""Table 11 from the shapes: hand-computed terms for Llama-2-7B; the FLOPs of a run whose steps attend differently."""

import pytest

from minilongllora import LlamaConfig
from minilongllora.flops import flops_breakdown, format_flops_table, run_flops, step_keys


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


def test_step_keys():
    assert step_keys("full", 8192, 2048) == 8192
    assert step_keys("s2", 8192, 2048, n_sink=4) == 2048  # n_sink only counts for a sink pattern
    assert step_keys("s2_sink", 8192, 2048, n_sink=4) == step_keys("short_sink", 8192, 2048, n_sink=4) == 2052


def test_run_flops_of_the_remedies_by_hand():
    """Llama-2-7B at 8192 (Table 11: 143.5 TFLOPs per forward with full attention, 117.1 with S2-Attn): every 4th step
    full costs (3 · 117.1 + 143.5) / (4 · 143.5) = 86.2% of full attention (S2-Attn alone: 81.6%); a full step costs
    143.5 / 117.1 = 1.225 S2-Attn steps. Sinks add 4 keys to 2048 per query: 4 · 8192 · 4 · 4096 · 32 FLOPs a step."""
    c7 = LlamaConfig.from_preset("llama2-7b")
    r = flops_breakdown(c7, 8192)
    every4 = run_flops(c7, 8192, [2048, 2048, 2048, 8192] * 2)
    assert every4["tflops"] == pytest.approx(6 * r["total_s2"] + 2 * r["total_full"])
    assert every4["tflops_full"] == pytest.approx(8 * r["total_full"])
    assert every4["relative_to_full"] == pytest.approx((3 * 117.1 + 143.5) / (4 * 143.5), abs=1e-3)
    assert run_flops(c7, 8192, [2048])["relative_to_full"] == pytest.approx(117.1 / 143.5, abs=1e-3)
    steps = every4["step_tflops"]
    assert steps[3] / steps[0] == pytest.approx(143.5 / 117.1, abs=1e-3)
    sink = run_flops(c7, 8192, [2052])["tflops"] - run_flops(c7, 8192, [2048])["tflops"]
    assert sink == pytest.approx(4 * 8192 * 4 * 4096 * 32 / 1e12)
    assert run_flops(c7, 8192, [8192] * 3)["relative_to_full"] == pytest.approx(1.0)
