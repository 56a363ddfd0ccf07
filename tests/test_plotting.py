"""The notebooks' figures and small analyses (plotting.py, efficiency.py): hand-computed cases, the package's own
attention as the oracle, and the structure of each figure (axes, patches, legends, tick labels)."""

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from minilongllora import LlamaConfig, efficiency, plotting
from minilongllora.attention import S2_VARIANTS, shifted
from minilongllora.flops import flops_breakdown
from minilongllora.patterns import PATTERNS
from minilongllora.reference import attention_mask

matplotlib.use("Agg")  # no window: the figures are inspected, never shown


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def visible_labels(ax, axis="y"):
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    ticks = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    return [t.get_text() for t in ticks if lo <= (t.get_position()[1 if axis == "y" else 0]) <= hi and t.get_text()]


# colours, ticks, style ---------------------------------------------------------------------------------------------
def test_one_colour_per_setting_unique_within_each_family():
    for family in (PATTERNS, S2_VARIANTS, ("full_ft", "lora", "lora_plus"), ("attn", "proj", "ffn", "others"),
                   ("tiny", "small", "hf"), ("paper", "predicted")):
        colors = [plotting.color(s) for s in family]
        assert len(set(colors)) == len(colors), family
    assert plotting.color("split") == plotting.color("s2")  # the default variant is S2-Attn itself
    with pytest.raises(KeyError, match="SETTING_COLORS"):
        plotting.color("no such setting")


def test_plain_numbers_have_no_powers():
    assert [plotting.plain_number(v) for v in (1e-5, 0.001, 0.5, 1, 20, 1000, 2048, 65536, 3000, 2e6, 1e10)] == \
        ["0.00001", "0.001", "0.5", "1", "20", "1,000", "2k", "64k", "3,000", "2 M", "10 B"]


def test_log_axis_labels_are_plain_and_several():
    _, ax = plt.subplots()
    ax.plot([1, 1000], [0.3, 3000])
    plotting.log_axis(ax, "y")
    labels = visible_labels(ax, "y")
    assert len(labels) >= 3 and not any("$" in t or "^" in t for t in labels), labels
    assert "1,000" in labels and "1" in labels
    plotting.log_axis(ax, "x", [1024, 2048, 4096], base=2)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1k", "2k", "4k"]


def test_titles_are_not_smaller_than_axis_labels():
    plotting.use_style()
    fig = plotting.draw_pattern("s2", 16, 4, 2)
    for ax in fig.axes:
        assert ax.title.get_fontsize() >= ax.xaxis.label.get_fontsize()
    assert fig._suptitle.get_fontsize() >= fig.axes[0].title.get_fontsize()


# masks and patterns ------------------------------------------------------------------------------------------------
def test_pair_fraction_by_hand():
    # n = 16, G = 4: four causal groups of 4 read 4 · 10 = 40 of full attention's 136 pairs
    assert plotting.pair_fraction("short", 16, 4) == pytest.approx(40 / 136)
    assert plotting.pair_fraction("full", 16, 4) == 1.0


def test_draw_mask_colours_reads_and_future():
    _, ax = plt.subplots()
    mask = attention_mask("shift_all", 8, 4, 1, variant="roll")[0]
    plotting.draw_mask(ax, mask, 4, shifted=True)
    img = ax.get_images()[0].get_array()
    assert tuple(img[0, 7]) == plotting.FUTURE and tuple(img[7, 7]) == plotting.READ
    assert tuple(img[0, 3]) == plotting.MASKED
    assert sum(line.get_linestyle() == "--" for line in ax.get_lines()) == 2 * (8 // 4)  # borders at 2 and 6


def test_draw_pattern_one_axes_per_head_and_the_union():
    fig = plotting.draw_pattern("s2", 16, 4, 4)
    assert len(fig.axes) == 5 and fig.axes[-1].get_title().startswith("union")
    assert [ax.get_title() for ax in fig.axes[:4]] == ["head 0: pattern 1", "head 1: pattern 1",
                                                      "head 2: pattern 2", "head 3: pattern 2"]
    img = fig.axes[-1].get_images()[0].get_array()
    masks = attention_mask("s2", 16, 4, 4)
    added = (masks.any(0) & ~masks[0]).numpy()
    assert added.any() and all(tuple(img[i, j]) == plotting.ADDED for i, j in zip(*added.nonzero()))
    assert len(fig.legends) == 1


def test_draw_pattern_of_a_sink_pattern_draws_its_mask():
    fig = plotting.draw_pattern("s2_sink", 16, 4, 2, n_sink=2)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["head 0: pattern 1 + sinks", "head 1: pattern 2 + sinks"]
    masks = attention_mask("s2_sink", 16, 4, 2, n_sink=2)
    assert masks[:, 8:, :2].all()  # every query from the third group on reads the two sink tokens


def test_draw_pattern_shows_an_impossible_setting_instead_of_raising():
    fig = plotting.draw_pattern("s2", 20, 8, 4)
    assert len(fig.axes) == 1 and "not divisible" in fig.axes[0].texts[0].get_text()


# Algorithm 1 as token strips ---------------------------------------------------------------------------------------
def test_token_groups_by_hand():
    assert plotting.token_groups(8, 4, shifted=False) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plotting.token_groups(8, 4, "roll") == [[2, 3, 4, 5], [6, 7, 0, 1]]  # roll(−2), the wrapped group last
    assert plotting.token_groups(8, 4, "roll_up") == [[6, 7, 0, 1], [2, 3, 4, 5]]
    assert plotting.token_groups(8, 4, "split") == [[0, 1], [2, 3, 4, 5], [6, 7]]
    assert plotting.token_groups(8, 4, "swap") == [[2, 3, 4, 5], [0, 1, 6, 7]]


def reads_from_groups(groups, n):
    reads = torch.zeros(n, n, dtype=torch.bool)
    for g in groups:
        for a, i in enumerate(g):
            reads[i, g[:a + 1]] = True
    return reads


@pytest.mark.parametrize("variant", S2_VARIANTS)
def test_token_groups_are_what_the_package_attends(variant):
    n, G = 16, 4
    reads = reads_from_groups(plotting.token_groups(n, G, variant), n)
    # the fast path itself: zero scores spread each query uniformly over the keys it reads, v = identity shows them
    zeros, eye = torch.zeros(1, 1, n, 4), torch.eye(n).view(1, 1, n, n)
    out = shifted(zeros, zeros, eye, G, variant)[0, 0]
    assert torch.equal(out > 0, reads)
    assert torch.equal(attention_mask("shift_all", n, G, 1, variant=variant)[0], reads)


def patch_by_gid(ax):
    return {p.get_gid(): p for p in ax.patches}


def test_token_strips_follow_algorithm_1():
    n, G = 16, 4
    fig = plotting.draw_token_strips(n, G, ("roll", "split"))
    assert len(fig.axes) == 4  # a strip and a mask per variant
    roll, split = patch_by_gid(fig.axes[0]), patch_by_gid(fig.axes[2])
    assert len(roll) == 5 * n and len(split) == 3 * n  # pattern 1, tokens, (rolled), groups, (rolled back)
    rolled_order = sorted(range(n), key=lambda t: roll[f"rolled:{t}"].get_x())
    assert rolled_order == torch.roll(torch.arange(n), -G // 2).tolist()  # Algorithm 1's roll(−G/2)
    for ax, variant in ((fig.axes[0], "roll"), (fig.axes[2], "split")):
        colors = plotting.group_colors(plotting.token_groups(n, G, variant))
        patches = patch_by_gid(ax)
        assert all(patches[f"groups:{t}"].get_facecolor()[:3] == pytest.approx(colors[t]) for t in range(n))
    wrapped = {t: roll[f"back:{t}"].get_facecolor() for t in (0, 1, n - 2, n - 1)}
    assert len(set(wrapped.values())) == 1  # tokens 0, 1 share the last tokens' group: the wrap-around


# reachability and attention statistics -----------------------------------------------------------------------------
def test_reachability_by_hand():
    # n = 8, G = 4, split: pattern 1 groups {0-3}, {4-7}; pattern 2 groups {0,1}, {2-5}, {6,7}
    R = plotting.reachability("s2", 8, 4, 3)
    assert torch.nonzero(R[0][-1]).flatten().tolist() == [4, 5, 6, 7]
    assert torch.nonzero(R[1][-1]).flatten().tolist() == [2, 3, 4, 5, 6, 7]
    assert R[2][-1].all()
    assert plotting.layers_to_cover("s2", 8, 4) == 3


def test_reachability_is_the_boolean_power_of_the_union_mask():
    union = attention_mask("s2", 32, 8, 2, variant="roll").any(0).long()
    for L, R in enumerate(plotting.reachability("s2", 32, 8, 4, variant="roll"), start=1):
        assert torch.equal(R, torch.linalg.matrix_power(union, L) > 0)
    assert torch.equal(plotting.reachability("full", 8, 4, 1)[0], attention_mask("full", 8, 4, 1)[0])


def test_layers_to_cover():
    for n, G in ((32, 8), (64, 16), (48, 8)):
        assert plotting.layers_to_cover("s2", n, G) == 2 * n // G - 1
    assert plotting.layers_to_cover("short", 32, 8) is None


def test_mean_distance_by_hand():
    probs = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]])  # uniform causal, n = 3
    maps = [probs.expand(1, 2, 3, 3), torch.eye(3).expand(1, 2, 3, 3)]
    # query distances 0, 0.5, 1 → mean 0.5; the diagonal reads distance 0
    assert plotting.mean_distance(maps).flatten().tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])


def test_draw_probs_pools_and_blanks_zeros():
    _, ax = plt.subplots()
    p = torch.eye(512)
    im = plotting.draw_probs(ax, p, G=128, log=True, max_pixels=256)
    arr = im.get_array()
    assert arr.shape == (256, 256) and arr.mask[0, 1] and not arr.mask[0, 0]


def test_mask_explorer_redraws_on_a_slider(monkeypatch):
    pytest.importorskip("ipywidgets")
    calls = []
    monkeypatch.setattr(plotting, "_show", lambda **kw: calls.append(kw))
    box = plotting.mask_explorer()
    assert set(box.controls) == {"pattern", "variant", "n", "G", "n_heads", "n_sink"}
    assert calls[-1] == {"pattern": "s2", "variant": "split", "n": 32, "G": 8, "n_heads": 4, "n_sink": 4}
    box.controls["n"].value = 16
    assert calls[-1]["n"] == 16
    box.controls["n_sink"].value = 2
    assert calls[-1]["n_sink"] == 2


# efficiency --------------------------------------------------------------------------------------------------------
def table11_rows():
    return [flops_breakdown(LlamaConfig.from_preset("llama2-7b"), c) for c in (8192, 16384, 32768, 65536)]


def test_speedups_use_the_paper_tables():
    s = efficiency.speedups(table11_rows())
    assert s[8192]["table12"] == pytest.approx(6.0 / 5.2) and s[65536]["table12"] == pytest.approx(92.5 / 52.4)
    assert s[8192]["table13"] == pytest.approx(17.5 / 8.2) and s[16384]["table13"] is None  # OOM without S2
    assert s[8192]["predicted"] == pytest.approx(143.5 / 117.1, abs=2e-3)


def test_flops_figures_structure():
    rows = table11_rows()
    fig = efficiency.draw_flops_bars(rows)
    assert len(fig.axes) == 2 and len(fig.axes[0].patches) == 2 * 4 * len(rows)
    assert len(fig.axes[0].get_legend().get_texts()) == 4
    fig = efficiency.draw_speedups(rows)
    assert len(fig.axes[0].get_legend().get_texts()) == 3
    fig = efficiency.draw_flops_growth(LlamaConfig.from_preset("llama2-7b"), [2048, 4096, 8192])
    assert len(fig.axes) == 2 and len(fig.axes[0].get_lines()) == 3
    assert not any("$" in t for ax in fig.axes for t in visible_labels(ax, "y"))


BENCH = {"machine": {"processor": "x86_64", "cpus_usable": 2, "torch": "2.x", "date": "2026-01-01T00:00:00",
                     "command": "python benchmarks/bench_attention.py"},
         "attention": {"quick": True, "date": "2026-01-01", "rows": [
             {"n": 1024, "full_ms": 4.0, "s2_ms": 2.0, "speedup": 2.0, "predicted_speedup_flops": 4.0,
              "predicted_speedup_causal": 4.25, "full_mb": 6.0},
             {"n": 2048, "full_ms": 16.0, "s2_ms": 5.0, "speedup": 3.2, "predicted_speedup_flops": 4.0,
              "predicted_speedup_causal": 4.26}]},
         "step": {"settings": {"method": "lora_plus"}, "models": {"tiny": {"config": {"dim": 256}, "rows": [
             {"n": 1024, "full_s": 0.3, "s2_s": 0.2, "speedup": 1.5, "predicted_speedup_3xfwd": 1.4,
              "predicted_speedup_work": 1.3}], "skipped": [{"n": 2048, "reason": "too slow"}]}}}}


def test_benchmark_readers_format_what_the_file_holds(tmp_path):
    assert efficiency.load_results("absent.json", tmp_path) == {}
    assert "not in benchmarks/results/" in efficiency.describe("absent.json", {}, {})
    text = efficiency.describe("attention_cpu.json", BENCH["attention"], BENCH["machine"])
    assert "command: python benchmarks/bench_attention.py" in text and "--quick run" in text
    table = efficiency.attention_table(BENCH).splitlines()
    assert len(table) == 3 and table[1].split()[:4] == ["1024", "4.0", "2.0", "2.00x"] and table[2].endswith("-")
    assert "skipped: too slow" in efficiency.step_table(BENCH)
    assert len(efficiency.draw_attention_bench(BENCH).axes) == 3
    assert len(efficiency.draw_step_bench(BENCH).axes) == 3
    assert efficiency.draw_vs_hf({}) is None and efficiency.vs_hf_table({}) == "no vs_hf_cpu.json results"


def test_log_axis_over_many_decades_labels_powers_of_ten_plainly():
    _, ax = plt.subplots()
    ax.bar([0, 1], [0.004, 70])
    ax.set_ylim(1e-3, 1000)
    plotting.log_axis(ax, "y")
    assert visible_labels(ax, "y") == ["0.001", "0.01", "0.1", "1", "10", "100", "1,000"]


def test_draw_reach_structure():
    fig = plotting.draw_reach(32, 8, 8, shown=(1, 7))
    assert len(fig.axes) == 3 and len(fig.axes[0].get_legend().get_texts()) == 3
    s2_curve = fig.axes[0].get_lines()[2].get_ydata()
    assert s2_curve[6] == 32 and s2_curve[5] < 32  # S2-Attn covers n = 32 tokens after 2n/G − 1 = 7 layers
