"""`results`: the committed results files of the reproductions (notebooks/results/*.json) read back, compared with the
paper's numbers by hand-computed ratios, plotted and summed up in a sentence; a missing file names its command."""

import math
from pathlib import Path

import pytest

from minilongllora import reproduce as rep
from minilongllora.reproduce import results
from minilongllora.reproduce.compare import pct, resolve, than

RESULTS = Path(__file__).resolve().parent.parent / "notebooks" / "results"
NAMES = [name for name in rep.TABLES if (RESULTS / f"{name}.json").is_file()]


def test_all_tables_have_a_committed_result():
    assert set(NAMES) == set(rep.TABLES)


@pytest.fixture(params=NAMES)
def result(request):
    return results.load(request.param, RESULTS)


def test_results_files_are_full_runs_with_their_command(result):
    name = result["name"]
    assert result["quick"] is False
    assert result["command"].startswith(f"python -m minilongllora reproduce {name} ")
    assert result["machine"]["torch"] and result["seconds"] >= 0
    if name != "table11":  # every run of a file has the budget the file records
        budget = result["settings"]["budget"]
        two = name in ("table1_budget", "table1_from_full_budget")
        budgets = [k * budget["steps"] for k in (rep.T1_BUDGETS if two else (1,))]
        assert {c["steps"] for c in result["settings"]["train_configs"]} == set(budgets)  # table1_budget: 2 budgets
        assert all(c["lr"] in (*budget["lr"].values(), *rep.T1_LR) for c in result["settings"]["train_configs"])
    if "regime" in result["settings"]:  # made in the regime: today's plan, within its ratios to the base
        regime = result["settings"]["regime"]
        assert result["settings"]["budget"]["steps"] == rep.STEPS and regime["lr"] == rep.LR
        assert regime["lr_ratio"] <= regime["max_lr_ratio"] + 1e-12
        assert regime["token_ratio"] <= regime["max_token_ratio"]
        if "max_run_token_ratio" in regime:  # recorded since table1_budget: each run's own tokens against the cap
            beyond = getattr(rep.TABLES[name], "BEYOND_THE_CAP", False)
            assert (regime["max_run_token_ratio"] > regime["max_token_ratio"]) == beyond
            assert regime["steps_of_runs"] == sorted({c["steps"] for c in result["settings"]["train_configs"]})


def _by(rows, **match):
    values = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert values, match
    return sum(r["ppl"] for r in values) / len(values)


def test_compare_relative_values_by_hand(result):
    name, rows, cmp = result["name"], result["rows"], results.compare(result)
    assert cmp
    if name == "table1":
        for n in {r["context"] for r in rows}:
            s2 = next(c for c in cmp if c["setting"] == "s2" and c["context"] == n)
            assert s2["ours_rel"] == pytest.approx(_by(rows, setting="s2", context=n)
                                                   / _by(rows, setting="full", context=n) - 1, rel=1e-12)
        first = next(c for c in cmp if c["label"].startswith("short @ "))
        assert first["paper"] == 8.29 and first["paper_rel"] == pytest.approx(8.29 / 8.02 - 1)
    elif name == "table1_lr":
        for lr in rep.T1_LR:
            row = next(c for c in cmp if c["label"] == f"s2 lr={lr:g}")
            full = _by(rows, setting="full", lr=lr)
            assert row["ours_rel"] == pytest.approx(_by(rows, setting="s2", lr=lr) / full - 1, rel=1e-12)
            own = _by([{**r, "ppl": r.get("ppl_own_pattern")} for r in rows], setting="s2", lr=lr)  # mean of seeds
            assert row["ours_own_rel"] == pytest.approx(own / full - 1, rel=1e-12)
            s2_short = resolve(*([r["ppl_own_pattern"] for r in rows if r["setting"] == s and r["lr"] == lr]
                                 for s in ("s2", "short")))
            part = results.verdict(result).split(f"lr {lr:g}: ")[1].split("; lr ")[0]
            assert f"(each with its own pattern: {than(s2_short, 'short')})" in part
        # the trend by hand: S2-Attn's gap at each rate, flat (+4.5% ... +5.6%) up to the regime's 1e-4, then growing
        gaps = [_by(rows, setting="s2", lr=lr) / _by(rows, setting="full", lr=lr) - 1 for lr in rep.T1_LR]
        assert rep.T1_LR.index(1e-4) == 2 and gaps[2] < gaps[3] < gaps[4] < gaps[5] and not gaps[1] < gaps[2]
        low = gaps[:3]
        assert (f"S2-Attn's gap stays between {pct(min(low))} and {pct(max(low))} from 2.5e-05 to 0.0001 and grows "
                f"with the rate above (+{100 * gaps[3]:.1f}% at 0.00025") in results.verdict(result)
    elif name == "table1_from_full":
        configs = {c["run"]: c for c in result["settings"]["train_configs"]}
        for n, seed in {(r["context"], r["seed"]) for r in rows}:  # a continuation starts from its full-attention run
            start = next(r["run"] for r in rows if (r["context"], r["start"], r["setting"], r["seed"])
                         == (n, "base", "full", seed))
            for r in rows:
                if (r["context"], r["start"], r["seed"]) == (n, "full FT", seed):
                    assert configs[r["run"]]["base"] == f"{result['settings']['cache_dir']}/{start}/final"
        sentence = results.verdict(result)
        for n in {r["context"] for r in rows}:
            for start in rep.table1_from_full.STARTS:
                for s in ("short", "s2"):
                    gap = _by(rows, context=n, start=start, setting=s) / _by(rows, context=n, start=start,
                                                                              setting="full") - 1
                    row = next(c for c in cmp if c["label"] == f"{s} from {start} @ {n}")
                    assert row["ours_rel"] == pytest.approx(gap, rel=1e-12)
                    assert f"{s} {pct(gap)} (" in sentence.split(f"{n} from {start}: ")[1]
        assert result["settings"]["regime"]["max_run_token_ratio"] == pytest.approx(  # a continuation and its start
            2 * result["settings"]["regime"]["token_ratio"])
    elif name == "table1_from_full_budget":
        configs = {c["run"]: c for c in result["settings"]["train_configs"]}
        for seed in {r["seed"] for r in rows}:  # every continuation starts from the seed's start, Table 1's full FT
            start = next(r["run"] for r in rows if (r["steps"], r["seed"]) == (0, seed))
            assert configs[start]["attention"] == "full" and configs[start]["base"] == result["settings"]["base"]
            for r in rows:
                if r["seed"] == seed and r["steps"]:
                    assert configs[r["run"]]["base"] == f"{result['settings']['cache_dir']}/{start}/final"
                    assert configs[r["run"]]["steps"] == r["steps"] and configs[r["run"]]["seed"] == seed + 1000
        sentence = results.verdict(result)
        budgets = sorted({r["steps"] for r in rows} - {0})
        gaps = {}  # each seed's gap to full attention's continuation of the same length
        for steps in budgets:
            full = {r["seed"]: r for r in rows if (r["steps"], r["setting"]) == (steps, "full")}
            for s in ("short", "s2"):
                row = next(c for c in cmp if c["label"] == f"{s} {steps} steps")
                assert row["ours_rel"] == pytest.approx(_by(rows, steps=steps, setting=s)
                                                        / _by(rows, steps=steps, setting="full") - 1, rel=1e-12)
                assert f"{s} {pct(row['ours_rel'])} (" in sentence.split(f"{steps} steps: ")[1]
                gaps[steps, s] = [r["ppl"] / full[r["seed"]]["ppl"] - 1 for r in rows
                                  if (r["steps"], r["setting"]) == (steps, s)]
        for s in ("short", "s2"):
            a, b = (gaps[x, s] for x in budgets)
            assert f"{s} {than(resolve(b, a), f'at {budgets[0]}')} (last quarter " in sentence.split(" against at ")[1]
        assert result["settings"]["regime"]["max_run_token_ratio"] == pytest.approx(  # the longer run and its start
            3 * result["settings"]["regime"]["token_ratio"])
    elif name == "table1_budget":
        for n, steps in {(r["context"], r["steps"]) for r in rows}:
            s2 = next(c for c in cmp if c["label"] == f"s2 {steps} steps @ {n}")
            assert s2["ours_rel"] == pytest.approx(_by(rows, setting="s2", steps=steps, context=n)
                                                   / _by(rows, setting="full", steps=steps, context=n) - 1, rel=1e-12)
        full = {(r["context"], r["steps"], r["seed"]): r["ppl"] for r in rows if r["setting"] == "full"}
        gaps = {}  # S2-Attn's gap to full attention of the same seed, per context and budget
        for r in rows:
            if r["setting"] == "s2":
                gaps.setdefault((r["context"], r["steps"]), []).append(
                    r["ppl"] / full[(r["context"], r["steps"], r["seed"])] - 1)
        for n in {r["context"] for r in rows}:  # the per-seed gap at the longer budget against the shorter
            short, long = (min(k for k in gaps if k[0] == n), max(k for k in gaps if k[0] == n))
            phrase = {"lower": "shrinks", "higher": "grows", "not resolved": "does not resolve"}[
                resolve(gaps[long], gaps[short])]
            part = results.verdict(result).split(f"{n} tokens: ")[1].split(" | ")[0]
            assert phrase in part
            own = [[r["ppl_own_pattern"] for r in rows if r["setting"] == "s2" and (r["context"], r["steps"]) == k
                    and "ppl_own_pattern" in r] for k in (short, long)]
            if all(own):  # S2-Attn tested with its own pattern (files made since it was added)
                mean_own = [sum(v) / len(v) for v in own]
                assert f"own pattern: {mean_own[0]:.3f} → {mean_own[1]:.3f}, " \
                    f"{than(resolve(own[1], own[0]), f'at {short[1]}')})" in part
    elif name == "table1_window":
        n = max(r["window"] for r in rows)
        for c in cmp:
            setting, window = c["label"].split()[0], n if c["label"].endswith("full") else int(c["label"].split()[-1])
            assert c["ours_rel"] == pytest.approx(_by(rows, setting=setting, window=window)
                                                  / _by(rows, setting="full", window=n) - 1, rel=1e-12)
            assert (c["paper"] is None) == (window != n)  # the paper tested with full attention only
        assert len(cmp) == 3 * len(rep.T1_WINDOWS)
    elif name == "table1_sink":
        for c in cmp:
            n, full, s2 = c["context"], _by(rows, setting="full", context=c["context"], test="full"), \
                _by(rows, setting="s2", context=c["context"], test="full")
            ours = _by(rows, setting=c["setting"], context=n, test="full")
            assert c["ours_rel"] == pytest.approx(ours / full - 1, rel=1e-12)
            assert c["gap_closed"] == pytest.approx((s2 - ours) / (s2 - full), rel=1e-9)
        assert {c["setting"] for c in cmp} == set(rep.table1_sink.SETTINGS)
    elif name == "table2":
        lora8 = next(c for c in cmp if c["label"] == "lora r=8")
        assert lora8["paper_rel"] == pytest.approx(11.44 / 8.08 - 1)
        assert lora8["ours_rel"] == pytest.approx(_by(rows, setting="lora", rank=8) / _by(rows, setting="full") - 1)
        for setting in ("lora_lr10", "lora+norm+embed_lr10"):  # the first three quarters: exp of the mean loss
            r0 = [r for r in rows if r["setting"] == setting]
            if not r0:  # a file made before the diagnostic rows
                continue
            c = next(c for c in cmp if c["label"] == f"{setting} r=8")
            first3 = math.exp(sum(q for r in r0 for q in r["loss_quarters"][:3]) / (3 * len(r0)))
            full3 = math.exp(sum(q for r in rows if r["setting"] == "full" for q in r["loss_quarters"][:3])
                             / (3 * len([r for r in rows if r["setting"] == "full"])))
            assert c["ours_3q_rel"] == pytest.approx(first3 / full3 - 1, rel=1e-9)
            assert f"{100 * c['ours_3q_rel']:+.1f}%" in results.verdict(result)
    elif name == "table6":
        own = next(c for c in cmp if c["label"] == "s2 tested own")
        ref = _by(rows, pattern="s2", test_full_attention=True)
        assert own["ours_rel"] == pytest.approx(_by(rows, pattern="s2", test_full_attention=False) / ref - 1)
        assert own["paper_rel"] == pytest.approx(8.64 / 8.12 - 1)
        assert len(cmp) == 14
    elif name in ("table7", "table8"):
        key = "group" if name == "table7" else "variant"
        ref = _by(rows, **{key: "full"})
        for c in cmp:
            assert c["ours_rel"] == pytest.approx(_by(rows, **{key: c["label"].split()[0]}) / ref - 1)
    elif name == "table11":
        assert cmp[0]["label"] == "8192 full" and round(cmp[0]["total"], 1) == cmp[0]["paper_total"] == 143.5
        assert round(cmp[1]["total"], 1) == cmp[1]["paper_total"] == 117.1
    elif name == "figure4":
        for c in cmp:
            trials = [r["accuracy"] for r in rows if r["model"] == c["label"] and r["length"] == c["length"]
                      and r.get("format", "paper") == c["format"]]
            assert c["ours"] == pytest.approx(sum(trials) / len(trials)) and 0 <= c["ours"] <= 1
    elif name == "figure5":
        metric = "val_window_ppl" if "val_window_ppl" in rows[0] else "val_ppl"  # renamed on 2026-12-02
        for c in cmp:
            seeds = [r[metric] for r in rows if r["setting"] == c["label"] and r["step"] == c["step"]]
            starts = [r[metric] for r in rows if r["setting"] == c["label"] and r["step"] == 0]
            assert c["ours"] == pytest.approx(sum(seeds) / len(seeds)) and c["seeds"] == len(seeds)
            assert c["ours_rel_start"] == pytest.approx(c["ours"] / (sum(starts) / len(starts)) - 1)


def test_plot_verdict_and_describe(result):
    fig = results.plot(result)
    assert len(fig.axes) == 2 and all(ax.has_data() for ax in fig.axes)
    sentence = results.verdict(result)
    assert isinstance(sentence, str) and ("%" in sentence or "TFLOPs" in sentence)
    assert not any(w in sentence for w in ("nan", "None"))
    assert result["command"] in results.describe(result).replace("\n  ", " ")
    if result["name"] not in ("table11",):
        assert results.curves(result) and len(results.plot_curves(result).axes) == 1
        assert len(results.curves(result)) == len(result["settings"]["runs"])  # one distinct label per run


def test_overview_names_each_files_regime():
    rows = {r["table"]: r for r in results.overview(RESULTS)}
    assert set(rows) == set(rep.TABLES)
    assert rows["table11"]["regime"] == "no training" and rows["table1"]["regime"] == "paper's"
    assert rows["table1_budget"]["regime"] == "past-the-cap"  # its longer runs exceed the cap on purpose
    assert rows["table1_from_full"]["regime"] == "past-the-cap"  # its continuations and their start together
    assert rows["table1_from_full_budget"]["regime"] == "past-the-cap"
    assert all(r["verdict"] and r["made"] for r in rows.values())


def test_loss_by_position_has_a_panel_per_context():
    table1 = results.load("table1", RESULTS)
    fig = results.plot_loss_by_position(table1)
    assert len(fig.axes) == len({r["context"] for r in table1["rows"]})


def test_loss_by_position_of_one_context_by_budget_by_hand():
    budget = results.load("table1_budget", RESULTS)
    fig = results.plot_loss_by_position(budget, panel="steps", context=2048)
    steps = sorted({r["steps"] for r in budget["rows"]})
    assert len(fig.axes) == len(steps)
    for ax, k in zip(fig.axes, steps):  # S2-Attn's line: the mean over seeds of each 16th's loss, at 2048 only
        s2 = [r["loss_bins"] for r in budget["rows"] if (r["setting"], r["context"], r["steps"]) == ("s2", 2048, k)]
        line = next(x for x in ax.get_lines() if x.get_label() == "s2")
        assert list(line.get_ydata()) == pytest.approx([sum(b[j] for b in s2) / len(s2) for j in range(rep.LOSS_BINS)])
    with pytest.raises(ValueError, match="no row has"):
        results.plot_loss_by_position(budget, panel="steps", context=4096)


def test_attention_by_distance_is_the_mean_of_the_seeds_by_hand():
    budget = results.load("table1_budget", RESULTS)
    got = rep.table1_budget.distance_mass(budget, context=2048)
    start = next(r for r in budget["starting_point"] if r["context"] == 2048)  # the base with PI: one, no seed
    assert got[("base+PI", 0)]["mean"] == start["distance_mass"]["mean"]
    for (setting, steps), m in got.items():
        if setting == "base+PI":
            continue
        seeds = [r["distance_mass"] for r in budget["rows"] if (r["setting"], r["steps"], r["context"])
                 == (setting, steps, 2048)]
        assert len(seeds) == 3 and m["mean"] == pytest.approx([sum(s["mean"][b] for s in seeds) / 3
                                                               for b in range(rep.LOSS_BINS)], rel=1e-12)
        assert m["per_head"][2, 5, 11].item() == pytest.approx(sum(s["per_head"][2][5][11] for s in seeds) / 3)
        assert sum(m["mean"]) == pytest.approx(1.0, abs=1e-6)  # fp32 probabilities
    parts = rep.table1_budget.far_minus_near(budget, context=2048)  # each frequency's far-minus-near score
    seeds = [r["far_minus_near"][2][0] for r in budget["rows"] if (r["setting"], r["steps"], r["context"])
             == ("s2", 800, 2048)]
    assert parts[("s2", 800)][2, 0].tolist() == pytest.approx([sum(s[f] for s in seeds) / 3 for f in range(16)])


def test_phase_test_is_the_mean_of_the_seeds_by_hand():
    """table1_budget's phase test: the share of each seed's gap to full FT (same seed) closed by turning, its own
    pattern's change, one layer at a time, and full FT turned onto the grouped phases, averaged over the seeds."""
    budget = results.load("table1_budget", RESULTS)
    got = rep.table1_budget.phase_turned(budget, context=2048)
    rows = [r for r in budget["rows"] if r["context"] == 2048]
    full = {(r["seed"], r["steps"]): r["ppl"] for r in rows if r["setting"] == "full"}
    for (setting, steps), g in got.items():
        seeds = [r for r in rows if (r["setting"], r["steps"]) == (setting, steps)]
        assert len(seeds) == 3 and g["t"] == [0.0, 1.0, 2.0]
        for i, t in enumerate(g["t"][1:], 1):
            closed = [(r["ppl"] - r["phase_turned"][i - 1]["ppl"]) / (r["ppl"] - full[(r["seed"], steps)])
                      for r in seeds]
            own = [r["phase_turned"][i - 1]["ppl_own_pattern"] / r["ppl_own_pattern"] - 1 for r in seeds]
            assert g["closed"][i] == pytest.approx(sum(closed) / 3, rel=1e-12)
            assert g["own_change"][i] == pytest.approx(sum(own) / 3, rel=1e-12)
        layer1 = [(r["ppl"] - r["phase_turned_by_layer"][1]) / (r["ppl"] - full[(r["seed"], steps)]) for r in seeds]
        assert g["by_layer"][1] == pytest.approx(sum(layer1) / 3, rel=1e-12)
        assert g["full_change"][0] == pytest.approx(
            sum(r["full_with_these_phases"] / full[(r["seed"], steps)] - 1 for r in seeds) / 3, rel=1e-12)
        assert g["base_closed"][0] == pytest.approx(sum((r["ppl"] - r["phase_to_base"]["ppl"])
                                                        / (r["ppl"] - full[(r["seed"], steps)]) for r in seeds) / 3)
        assert g["slow_closed"][0] == pytest.approx(sum((r["ppl"] - r["phase_turned_slow"]["ppl"])
                                                        / (r["ppl"] - full[(r["seed"], steps)]) for r in seeds) / 3)
    verdict = results.verdict(budget).split("2048 tokens: ")[1]
    assert f"closes {100 * got[('s2', 800)]['closed'][1]:.0f}% of its gap at 800 steps" in verdict


def test_graft_test_is_the_mean_of_the_seeds_by_hand():
    """table1_budget's graft test: the share of each seed's gap to full FT (same seed) closed with full FT's weights,
    and opened in full FT with the grouped model's, averaged over the seeds; the verdict's number."""
    budget = results.load("table1_budget", RESULTS)
    for n in (1024, 2048):
        got = rep.table1_budget.grafted(budget, context=n)
        rows = [r for r in budget["rows"] if r["context"] == n]
        full = {(r["seed"], r["steps"]): r["ppl"] for r in rows if r["setting"] == "full"}
        assert set(got) == {(s, k) for s in ("short", "s2") for k in (400, 800)}
        for (setting, steps), g in got.items():
            seeds = [r for r in rows if (r["setting"], r["steps"]) == (setting, steps)]
            gap = {r["seed"]: r["ppl"] - full[(r["seed"], steps)] for r in seeds}
            assert len(seeds) == 3 and set(g["closed"]) == set(rep.table1_budget.GRAFTS)
            for name in rep.table1_budget.GRAFTS:
                assert g["closed"][name] == pytest.approx(
                    sum((r["ppl"] - r["grafted"][name]) / gap[r["seed"]] for r in seeds) / 3, rel=1e-12)
            for name in rep.table1_budget.GRAFTS_INTO_FULL:
                assert g["opened"][name] == pytest.approx(
                    sum((r["full_grafted"][name] - full[(r["seed"], steps)]) / gap[r["seed"]] for r in seeds) / 3,
                    rel=1e-12)
            layer1 = [(r["ppl"] - r["grafted_by_layer"][1]) / gap[r["seed"]] for r in seeds]  # one layer at a time
            assert g["by_layer"][1] == pytest.approx(sum(layer1) / 3, rel=1e-12)
            assert ("by_head" in g) == ((n, steps) == (2048, 800))  # one head at a time: the longest only
            if "by_head" in g:
                head = [(r["ppl"] - r["grafted_by_head"][1][2]) / gap[r["seed"]] for r in seeds]
                assert g["by_head"][1][2] == pytest.approx(sum(head) / 3, rel=1e-12)
    verdict = results.verdict(budget).split("2048 tokens: ")[1]
    assert f"closes {100 * got[('s2', 800)]['closed']['W_q, W_k']:.0f}% of its gap with W_q and W_k" in verdict
    assert f"layer 1's alone {100 * got[('s2', 800)]['by_layer'][1]:.0f}%, its head 2 alone" in verdict
    hidden = rep.table1_budget.far_keys_hidden(budget, context=2048)  # the far keys hidden from two heads, by hand
    rows = [r for r in budget["rows"] if (r["context"], r["steps"]) == (2048, 800)]
    full = {r["seed"]: r["ppl"] for r in rows if r["setting"] == "full"}
    for setting in ("short", "s2"):
        seeds = [r for r in rows if r["setting"] == setting]
        assert hidden[(setting, 800)]["these_heads"] == pytest.approx(sum(
            (r["ppl"] - r["far_keys_hidden"]["these_heads"]) / (r["ppl"] - full[r["seed"]]) for r in seeds) / 3)
        assert hidden[(setting, 800)]["full_all"] == pytest.approx(sum(
            r["far_keys_hidden"]["full_all"] / full[r["seed"]] - 1 for r in seeds) / 3)
        assert hidden[(setting, 800)]["heads"] == [r["far_keys_hidden"]["heads"] for r in seeds]
        # found without a full-attention model: one head at a time, the two best; the test split against its own gap
        assert hidden[(setting, 800)]["found_heads"] == [r["far_keys_hidden"]["found_heads"] for r in seeds]
        for r in seeds:
            by_head = r["far_keys_hidden"]["by_head"]
            alone = [(p, [i, h]) for i, layer in enumerate(by_head) for h, p in enumerate(layer)]
            assert r["far_keys_hidden"]["found_heads"] == sorted(head for _, head in sorted(alone)[:2])
        assert hidden[(setting, 800)]["by_head"][1][2] == pytest.approx(sum(
            (r["ppl"] - r["far_keys_hidden"]["by_head"][1][2]) / (r["ppl"] - full[r["seed"]]) for r in seeds) / 3)
        assert hidden[(setting, 800)]["found"] == pytest.approx(sum(
            (r["ppl"] - r["far_keys_hidden"]["found"]) / (r["ppl"] - full[r["seed"]]) for r in seeds) / 3)
        full_test = {r["seed"]: r["ppl_test"] for r in rows if r["setting"] == "full"}
        assert hidden[(setting, 800)]["test"]["found"] == pytest.approx(sum(
            (r["ppl_test"] - r["far_keys_hidden"]["test"]["found"]) / (r["ppl_test"] - full_test[r["seed"]])
            for r in seeds) / 3)
    assert f"two heads whose graft closes most closes {100 * hidden[('s2', 800)]['these_heads']:.0f}%" in verdict
    reading = rep.table1_budget.far_reading(budget, context=2048)  # each head's far reading, mean of the seeds
    for setting in ("full", "short", "s2"):
        seeds = [r["far_reading"] for r in rows if r["setting"] == setting]
        assert len(seeds) == 3 and reading[(setting, 800)]["mass"][1][3] == pytest.approx(
            sum(x["mass"][1][3] for x in seeds) / 3, rel=1e-12)
    assert reading[("base+PI", 0)]["change"] == budget["starting_point"][-1]["far_reading"]["change"]
    assert (f"layer 1's head 2 and layer 1's head 3 put {100 * reading[('s2', 800)]['mass'][1][2]:.0f}% and "
            f"{100 * reading[('s2', 800)]['mass'][1][3]:.0f}% of their attention there") in verdict
    moved = [r["far_keys_hidden"]["far_reading"]["mass"][2][0] for r in rows if r["setting"] == "s2"]
    assert reading[("s2", 800)]["found_hidden"]["mass"][2][0] == pytest.approx(sum(moved) / 3)
    slow = [r["far_reading_grafted"]["W_q, W_k slow pairs"]["mass"][1][2] for r in rows if r["setting"] == "s2"]
    assert reading[("s2", 800)]["grafted"]["W_q, W_k slow pairs"]["mass"][1][2] == pytest.approx(sum(slow) / 3)
    found = hidden[('s2', 800)]['test']['found']
    assert f"on the test split, heads chosen on validation: {100 * found:.0f}%" in verdict


def test_table2_without_s2_is_the_mean_of_the_seeds_by_hand():
    """table2's diagnostic of attention: full FT and LoRA+ at each rate trained with S2-Attn and with full attention,
    against full FT with full attention (Table 1's run at 8x: the same seeds' perplexities), by hand; the verdict's
    best rates, chosen on validation."""
    t2, t1 = (results.load(name, RESULTS) for name in ("table2", "table1"))
    rows, got = t2["rows"], {c["setting"]: c for c in rep.table2.without_s2(t2)}
    lora_plus = rep.table2.lora_plus
    rates = rep.table2.LORA_PLUS_RATES
    assert set(got) == {"full", "full_full_attn", "full_lr10_full_attn",
                        *(lora_plus(t) + suffix for t in rates for suffix in ("", "_full_attn"))}
    full = {r["seed"]: r["ppl"] for r in rows if r["setting"] == "full_full_attn"}
    assert full == {r["seed"]: r["ppl"] for r in t1["rows"] if (r["setting"], r["context"]) == ("full", 2048)}
    for setting, c in got.items():
        mine = [r["ppl"] for r in rows if r["setting"] == setting]
        assert len(mine) == 3 and c["ours"] == pytest.approx(sum(mine) / 3, rel=1e-12)
        assert c["ours_rel"] == pytest.approx(sum(mine) / sum(full.values()) - 1, rel=1e-12)
        assert {r["attention"] for r in rows if r["setting"] == setting} == {
            "full" if setting.endswith("_full_attn") else "s2"}
    verdict = results.verdict(t2)
    for suffix, attention in (("_full_attn", "full attention"), ("", "S2-Attn")):
        best = min(rates, key=lambda t: got[lora_plus(t) + suffix]["ours"])
        c = got[lora_plus(best) + suffix]
        assert f"{best:g}x with {attention} ({c['ours']:.2f}, {100 * c['ours_rel']:+.1f}%" in verdict


def test_curve_gaps_pair_each_seed_with_full_attention_by_hand():
    table1 = results.load("table1", RESULTS)
    runs, gaps = table1["settings"]["runs"], results.curve_gaps(table1)
    n, step = 1024, 200

    def at(row):  # the run's validation perplexity at `step`, from the file's curve
        return next(m["val_window_ppl"] for m in runs[row["run"]]["curve"] if m["step"] == step)

    full = {r["seed"]: at(r) for r in table1["rows"] if r["setting"] == "full" and r["context"] == n}
    by_hand = [at(r) / full[r["seed"]] - 1 for r in table1["rows"] if r["setting"] == "s2" and r["context"] == n]
    row = next(g for g in gaps if g["setting"] == "s2" and g["context"] == n and g["step"] == step)
    assert row["seeds"] == len(by_hand) == 3 and row["gap"] == pytest.approx(sum(by_hand) / 3, rel=1e-12)
    assert {g["setting"] for g in gaps} == {"short", "s2"}  # the reference is not compared with itself
    assert len(results.plot_curve_gaps(table1).axes) == len({r["context"] for r in table1["rows"]})


def test_loss_by_position_draws_one_line_per_group_in_table7():
    table7 = results.load("table7", RESULTS)
    fig = results.plot_loss_by_position(table7, line="group")
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == len({r["group"] for r in table7["rows"]})


def test_format_rows_and_a_quick_result_says_so():
    text = results.format_rows([{"label": "a", "ours": 1.23456, "ours_rel": 0.1, "paper": None}])
    assert text.splitlines()[1].split() == ["a", "1.235", "+10.0%", "-"]
    quick = {**results.load("table8", RESULTS), "quick": True}
    assert "mean nothing" in results.verdict(quick)
    assert not math.isnan(results.compare(quick)[0]["ours"])


def test_missing_results_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m minilongllora reproduce table2"):
        results.load("table2", tmp_path)


def test_resolve_calls_a_difference_only_beyond_twice_the_larger_standard_error():
    a = [0.9, 1.0, 1.0, 1.1]  # mean 1, sd sqrt(0.02 / 3) = 0.0816, standard error 0.0408: 2 se = 0.0816
    assert resolve([x + 0.09 for x in a], a) == "higher" and resolve(a, [x + 0.09 for x in a]) == "lower"
    assert resolve([x + 0.08 for x in a], a) == "not resolved"
    assert resolve([1.5], a) == "not resolved"  # one seed: no spread, no verdict
    assert resolve([2.0, 2.0], [1.0, 1.0]) == "higher"  # no spread at all: any difference is resolved


def test_the_test_split_columns_and_sentence_follow_the_rule():
    from minilongllora.reproduce.compare import on_test, ppl_row, reference

    full = [{"setting": "full", "ppl": p, "ppl_test": t} for p, t in ((10.0, 11.0), (10.1, 11.1), (9.9, 10.9))]
    s2 = [{"setting": "s2", "ppl": p, "ppl_test": t} for p, t in ((11.0, 11.05), (11.1, 11.2), (10.9, 10.8))]
    rows = full + s2
    ref = reference(rows, setting="full")
    cmp = [ppl_row(s, None, None, rows, ref, setting=s) for s in ("full", "s2")]
    assert cmp[0]["vs_ref"] == cmp[0]["test_vs_ref"] == "reference"
    assert cmp[1]["ours_test"] == pytest.approx((11.05 + 11.2 + 10.8) / 3)
    assert cmp[1]["ours_test_rel"] == pytest.approx((11.05 + 11.2 + 10.8) / (11.0 + 11.1 + 10.9) - 1)
    assert cmp[1]["vs_ref"] == resolve([11.0, 11.1, 10.9], [10.0, 10.1, 9.9]) == "higher"
    assert cmp[1]["test_vs_ref"] == resolve([11.05, 11.2, 10.8], [11.0, 11.1, 10.9]) == "not resolved"
    assert on_test(cmp) == ("The test split resolves 0 of 1 comparisons with the reference as the validation split "
                            "does; not s2 (higher on validation, not resolved on test).")
    same = [{**r, "ppl_test": r["ppl"] + 1} for r in rows]
    assert on_test([ppl_row(s, None, None, same, reference(same, setting="full"), setting=s)
                    for s in ("full", "s2")]).startswith("The test split resolves all 1 comparisons")
    old = [{k: v for k, v in r.items() if k != "ppl_test"} for r in rows]  # a file made before the test split
    assert "not in this file" in on_test([ppl_row(s, None, None, old, reference(old, setting="full"), setting=s)
                                          for s in ("full", "s2")])


@pytest.mark.parametrize("result", [n for n in NAMES if n in ("table1", "table2", "table6", "table7", "table8")],
                         indirect=True)
def test_committed_test_split_by_hand(result):
    """Each compared row's test-split perplexity relative to its reference, by hand; a file made before the test
    split was recorded says so in its verdict."""
    name, rows, cmp = result["name"], result["rows"], results.compare(result)
    tested = [r for r in rows if "ppl_test" in r]
    if not tested:
        assert all(c["ours_test"] is None for c in cmp) and "not in this file" in results.verdict(result)
        return
    assert len(tested) == len(rows)  # every row or none

    def by(**match):
        values = [r["ppl_test"] for r in rows if all(r.get(k) == v for k, v in match.items())]
        return sum(values) / len(values)

    for c in cmp:
        assert c["test_vs_ref"] in ("reference", "lower", "higher", "not resolved")
        if name == "table1":
            want = by(setting=c["setting"], context=c["context"]) / by(setting="full", context=c["context"]) - 1
        elif name in ("table7", "table8"):
            key = "group" if name == "table7" else "variant"
            want = by(**{key: c["label"].split()[0]}) / by(**{key: "full"}) - 1
        else:
            continue
        assert c["ours_test_rel"] == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert "The test split resolves" in results.verdict(result)


def test_table1_outcome_follows_the_rule():
    from minilongllora.reproduce.table1 import outcome

    def rows(full, short, s2):
        return [{"setting": s, "context": 512, "seed": i, "ppl": v}
                for s, vs in (("full", full), ("short", short), ("s2", s2)) for i, v in enumerate(vs)]

    full = [4.00, 4.02, 4.01]
    assert outcome(rows(full, [4.40, 4.42, 4.41], [4.05, 4.06, 4.04]), 512)["finding"] == "agrees"
    assert outcome(rows(full, [4.40, 4.42, 4.41], [4.30, 4.31, 4.32]), 512)["finding"] == "partly"
    assert outcome(rows(full, [4.40, 4.42, 4.41], [4.60, 4.61, 4.62]), 512)["finding"] == "disagrees"
    assert outcome(rows(full, [4.40, 4.42, 4.41], [4.30, 4.50, 4.41]), 512)["finding"] == "not resolved"


def _synthetic(module, field, means, spread=0.01, **extra):
    """A results dict of `module`, 3 seeds per row: `means` maps each ID value to its mean ppl."""
    rows = [{field: k, "seed": i, "ppl": m + d, "ppl_last_quarter": m + d, **extra}
            for k, m in means.items() for i, d in enumerate((-spread, 0.0, spread))]
    return {"rows": rows, "settings": {"seeds": [0, 1, 2]}, "paper": module.PAPER}


def test_table8_and_table7_verdicts_follow_the_rule():
    from minilongllora.reproduce import table7, table8

    near = _synthetic(table8, "variant", {"full": 3.00, "roll": 3.10, "roll_up": 3.101, "split": 3.10, "swap": 3.10})
    sentence = table8.verdict(near, table8.compare(near))
    assert "roll +3.3% (higher than full)" in sentence and "makes no difference we can resolve" in sentence
    apart = _synthetic(table8, "variant", {"full": 3.00, "roll": 3.10, "roll_up": 3.10, "split": 3.10, "swap": 3.30})
    assert "the way of shifting matters" in table8.verdict(apart, table8.compare(apart))

    means = {"full": 3.0, "1/2": 3.01, "1/4": 3.1, "1/6": 3.2, "1/8": 3.3}
    grows = _synthetic(table7, "group", means)
    for r in grows["rows"]:  # 1/2 ... 1/8 of 768 tokens
        r["group_size"] = {"1/2": 384, "1/4": 192, "1/6": 128, "1/8": 96}.get(r["group"])
    sentence = table7.verdict(grows, table7.compare(grows))
    assert "1/2 +0.3% (not resolved)" in sentence and "1/8 against 1/2: higher" in sentence
    assert "grows as groups shrink, as in the paper" in sentence


def test_table1_from_full_budget_shares_table1_from_fulls_runs_to_the_digit():
    """Its 400-step runs and its start are table1_from_full's 8x runs (the same keys), retrained on a fresh machine for
    it: their curves and evaluations equal the recorded ones exactly; and each 800-step run's first 400 steps are its
    400-step run's (a constant rate after warmup, the same data order)."""
    longer, shorter = (results.load(n, RESULTS) for n in ("table1_from_full_budget", "table1_from_full"))
    old = {r["run"]: r for r in shorter["rows"] if r["context"] == 2048}
    shared = [r for r in longer["rows"] if r["steps"] in (0, rep.STEPS)]
    assert len(shared) == 12 and all(r["run"] in old for r in shared)
    for r in shared:
        assert (r["ppl"], r["ppl_last_quarter"]) == (old[r["run"]]["ppl"], old[r["run"]]["ppl_last_quarter"])
        assert longer["settings"]["runs"][r["run"]]["curve"] == shorter["settings"]["runs"][r["run"]]["curve"]
    runs = {(r["steps"], r["setting"], r["seed"]): longer["settings"]["runs"][r["run"]]["curve"]
            for r in longer["rows"]}
    for (steps, setting, seed), curve in runs.items():
        if steps == 2 * rep.STEPS:
            assert curve[:len(runs[rep.STEPS, setting, seed])] == runs[rep.STEPS, setting, seed]
