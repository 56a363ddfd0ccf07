"""`reproduce`: the quick version of tables 1, 8 and 11 writes a complete JSON (settings, command, commit, machine,
the paper's numbers, rows, summary), runs are shared across tables through the cache, --help shows the estimated
full-run times, and an unknown table is one `error:` line with exit code 2."""

import json
import math

import pytest
import torch

from minilongllora import reproduce as rep
from minilongllora.reproduce import results
from conftest import run_cli

TOP_KEYS = {"name", "quick", "description", "command", "argv", "git_commit", "started", "seconds", "machine",
            "settings", "paper", "rows", "summary"}


run = run_cli


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce-out")
    return root / "results", root / "cache"


def quick(name, base_dir, dirs, capsys, *extra):
    out, cache = dirs
    code, stdout, err = run(["reproduce", name, "--quick", "--out", str(out), "--base", str(base_dir),
                             "--cache-dir", str(cache), *extra], capsys)
    assert code == 0, err
    path = out / f"{name}.quick.json"
    assert path.is_file() and str(path) in stdout
    result = json.loads(path.read_text())
    assert set(result) >= TOP_KEYS
    assert result["name"] == name and result["quick"] is True
    assert result["command"].startswith(f"python -m minilongllora reproduce {name} --quick")
    assert result["git_commit"] is None or len(result["git_commit"]) == 40
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["torch"] == torch.__version__
    assert result["seconds"] >= 0
    paper = result["paper"]
    assert "paper" in paper["label"] and paper["source"].startswith("LongLoRA") and paper["rows"]
    budget = result["settings"]["budget"]
    assert {"steps", "target_tokens_per_step", "per_context", "tokens_all_runs", "wall_seconds"} <= set(budget)
    regime = result["settings"]["regime"]  # the steps of its runs and its largest run's share of pretraining
    assert regime["steps_of_runs"] == sorted({c["steps"] for c in result["settings"]["train_configs"]})
    assert "max_run_token_ratio" in regime
    return result


def test_table1_quick(base_dir, dirs, capsys):
    result = quick("table1", base_dir, dirs, capsys)
    rows, base = result["rows"], result["starting_point"]
    assert {r["setting"] for r in rows} == {"full", "short", "s2"} and {r["setting"] for r in base} == {"base+PI"}
    assert len(rows) == 9
    assert {(r["setting"], r["context"]) for r in rows} == {(s, c) for s in ("full", "short", "s2")
                                                           for c in (128, 256, 512)}
    assert sorted(r["context"] for r in base) == [128, 256, 512]  # the starting point, evaluated once per context
    assert all(r["ppl"] > 1 and len(r["loss_bins"]) == rep.LOSS_BINS and "run" not in r for r in base)
    for r in rows + base:  # both splits: settings chosen on validation, the test split reported too (issue 15)
        assert r["ppl_test"] > 1 and r["ppl_test"] != r["ppl"] and r["ppl_last_quarter_test"] > 1
    for r in rows:
        assert r["seed"] == 0 and r["ppl"] > 1 and r["ppl_last_quarter"] > 1 and len(r["loss_quarters"]) == 4
        assert r["run"] in result["settings"]["runs"]
    settings = result["settings"]
    assert len(settings["train_configs"]) == 9 and settings["budget"]["steps"] == rep.QUICK["steps"]
    assert {c["seq_len"]: c["rope_factor"] for c in settings["train_configs"]} == {128: 2.0, 256: 4.0, 512: 8.0}
    regime = settings["regime"]  # the test base has no pretrain_run.json: no ratios to its pretraining
    assert regime["contexts_x_base"] == [2.0, 4.0, 8.0] and regime["lr"] == rep.LR and regime["lr_ratio"] is None
    assert all(c["method"] == "full" for c in settings["train_configs"])
    assert all(run["curve"] for run in settings["runs"].values())  # validation perplexity during training
    assert {r["setting"] for r in result["paper"]["rows"]} == {"full", "short", "s2"}
    assert len(result["summary"]) == 9 and all(s["ppl_std"] == 0.0 for s in result["summary"])


def test_table8_quick_reuses_table1_runs_and_summarizes_seeds(base_dir, dirs, capsys):
    table1 = json.loads((dirs[0] / "table1.quick.json").read_text()) if (dirs[0] / "table1.quick.json").is_file() \
        else quick("table1", base_dir, dirs, capsys)
    result = quick("table8", base_dir, dirs, capsys, "--seeds", "2")
    rows = result["rows"]
    assert len(rows) == 10 and {r["seed"] for r in rows} == {0, 1}
    assert {r["variant"] for r in rows} == {"full", "roll", "roll_up", "split", "swap"}
    assert all(r["ppl"] > 1 and r["ppl_last_quarter"] > 1 for r in rows)
    assert all(r["ppl_test"] > 1 and r["ppl_test"] != r["ppl"] and r["ppl_last_quarter_test"] > 1 for r in rows)
    at_2x = {r["setting"]: r["run"] for r in table1["rows"] if r["context"] == 128 and "run" in r}
    seed0 = {r["variant"]: r for r in rows if r["seed"] == 0}
    assert seed0["full"]["run"] == at_2x["full"] and seed0["split"]["run"] == at_2x["s2"]  # the same runs
    assert seed0["full"]["reused"] and seed0["split"]["reused"] and not seed0["roll"]["reused"]
    assert seed0["split"]["ppl"] == pytest.approx(next(r["ppl"] for r in table1["rows"] if r.get("run") == at_2x["s2"]))
    summary = {s["variant"]: s for s in result["summary"]}
    assert set(summary) == {"full", "roll", "roll_up", "split", "swap"}
    assert all(s["seeds"] == [0, 1] and s["ppl_std"] >= 0 and s["ppl_last_quarter_mean"] > 1
               for s in summary.values())
    assert {r["variant"] for r in result["paper"]["rows"]} == {"full", "roll", "roll_up", "split", "swap"}


def test_table11_quick(base_dir, dirs, capsys):
    result = quick("table11", base_dir, dirs, capsys)
    rows = {r["context"]: r for r in result["rows"]}
    assert set(rows) == {8192, 16384, 32768, 65536}
    assert round(rows[8192]["total_full"], 1) == 143.5 and round(rows[8192]["total_s2"], 1) == 117.1
    assert all(r["attn_s2"] == pytest.approx(r["attn_full"] / 4) for r in rows.values())
    assert result["paper"]["rows"][0]["total"] == 143.5


def test_group_size_for_is_the_nearest_even_divisor():
    assert rep.group_size_for(1536, 1 / 6) == 256 and rep.group_size_for(1536, 1 / 8) == 192
    assert rep.group_size_for(1024, 1 / 6) == 128  # 170.7 -> 128 (256 is farther)
    assert rep.group_size_for(384, 1 / 6) == 64
    plan = rep.Plan.make("base", 256)
    cfg = plan.config(1536, group_size=256)
    assert int(cfg.seq_len * cfg.group_size_ratio) == 256


def test_help_shows_tables_and_estimates(capsys):
    code, out, _ = run(["reproduce", "--help"], capsys)
    assert code == 0 and "usage:" in out
    for name in rep.TABLES:
        assert name in out
    assert "estimated full-run times" in out and "min" in out
    assert rep.estimate_text() in rep.__doc__  # the module docstring's estimates are the cost model's


@pytest.mark.parametrize("args, fragment", [(["table99"], "table99"), (["table1", "--seeds", "0"], "--seeds"),
                                            (["table1", "--base", "no/such/base"], "no/such/base")])
def test_bad_input_is_one_error_line(args, fragment, capsys, tmp_path):
    code, _, err = run(["reproduce", *args, "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert not list(tmp_path.glob("*.json"))


def test_table1_lr_quick_shares_table1s_runs_and_tests_own_patterns(base_dir, dirs, capsys):
    table1 = json.loads((dirs[0] / "table1.quick.json").read_text()) if (dirs[0] / "table1.quick.json").is_file() \
        else quick("table1", base_dir, dirs, capsys)
    result = quick("table1_lr", base_dir, dirs, capsys)
    rows = result["rows"]
    assert {(r["setting"], r["lr"]) for r in rows} == {(s, lr) for s in ("full", "short", "s2") for lr in rep.T1_LR}
    assert {c["lr"] for c in result["settings"]["train_configs"]} == set(rep.T1_LR)
    at_4x = {r["setting"]: r["run"] for r in table1["rows"] if r["context"] == 256 and "run" in r}
    default = {r["setting"]: r for r in rows if r["lr"] == rep.LR["full"]}
    assert all(default[s]["run"] == at_4x[s] and default[s]["reused"] for s in at_4x)  # table1's runs at 4x
    for r in rows:
        assert ("ppl_own_pattern" in r) == (r["setting"] != "full")
        assert r.get("ppl_own_pattern", 2.0) > 1 and len(r["loss_bins"]) == rep.LOSS_BINS


def test_table1_from_full_continues_table1s_full_run_and_keeps_table1s_rows(base_dir, dirs, capsys):
    table1 = json.loads((dirs[0] / "table1.quick.json").read_text()) if (dirs[0] / "table1.quick.json").is_file() \
        else quick("table1", base_dir, dirs, capsys)
    result = quick("table1_from_full", base_dir, dirs, capsys)
    rows, cache, module = result["rows"], dirs[1], rep.table1_from_full
    contexts = [f * rep.QUICK_UNIT for f in module.FACTORS]
    assert {(r["context"], r["start"], r["setting"]) for r in rows} == {
        (n, a, s) for n in contexts for a in module.STARTS for s in ("full", "short", "s2")}
    table1_runs = {(r["context"], r["setting"]): r["run"] for r in table1["rows"] if "run" in r}
    configs = {c["run"]: c for c in result["settings"]["train_configs"]}
    for r in rows:
        cfg = configs[r["run"]]
        if r["start"] == "base":  # Table 1's own runs
            assert r["run"] == table1_runs[r["context"], r["setting"]] and r["reused"]
            assert cfg["base"] == str(base_dir)
        else:  # from the final model of Table 1's full-attention run at that context, on a fresh data order
            assert cfg["base"] == str(cache / table1_runs[r["context"], "full"] / "final")
            assert cfg["seed"] == r["seed"] + 1000 and cfg["seq_len"] == r["context"]
            assert cfg["attention"] == r["setting"] and cfg["steps"] == rep.QUICK["steps"]
        assert ("ppl_own_pattern" in r) == (r["setting"] != "full")
    # a continuation counts its start's tokens against the cap (this random base has no pretraining record: 1,000)
    longest = configs[table1_runs[contexts[-1], "full"]]
    one_run = rep.QUICK["steps"] * longest["batch_size"] * longest["seq_len"]
    plan = type("Plan", (), {"regime": lambda self: {"base_pretraining_tokens": 1000}})()
    runs = {k: {"config": c, **result["settings"]["runs"][k]} for k, c in configs.items()}
    assert rep._max_run_token_ratio(plan, runs) == pytest.approx(2 * one_run / 1000)
    assert len(results.curves(result)) == len(result["settings"]["runs"])  # "continued" tells the runs apart
    sentence = module.verdict(result, results.compare(result))  # results.verdict: quick runs say none
    for n in contexts:
        assert f"{n} from base: " in sentence and f"; {n} from full FT: " in sentence
    assert "nan" not in sentence and "None" not in sentence
    assert len(results.plot(result).axes) == 2
    figure = results.plot_loss_by_position(result, panel="start", context=contexts[-1])
    assert [a.get_title().split("; ")[-1] for a in figure.axes] == ["start base", "start full FT"]


def test_table1_from_full_budget_continues_table1s_full_run_with_each_budget(base_dir, dirs, capsys):
    table1 = json.loads((dirs[0] / "table1.quick.json").read_text()) if (dirs[0] / "table1.quick.json").is_file() \
        else quick("table1", base_dir, dirs, capsys)
    from_full = json.loads((dirs[0] / "table1_from_full.quick.json").read_text()) \
        if (dirs[0] / "table1_from_full.quick.json").is_file() else quick("table1_from_full", base_dir, dirs, capsys)
    result = quick("table1_from_full_budget", base_dir, dirs, capsys)
    rows, cache, module = result["rows"], dirs[1], rep.table1_from_full_budget
    n, steps = module.FACTOR * rep.QUICK_UNIT, rep.QUICK["steps"]
    budgets = [b * steps for b in rep.T1_BUDGETS]
    assert sorted((r["steps"], r["setting"]) for r in rows) == sorted(
        [(0, "full")] + [(b, s) for b in budgets for s in ("full", "short", "s2")])
    start = next(r["run"] for r in table1["rows"] if (r.get("context"), r.get("setting")) == (n, "full"))
    configs = {c["run"]: c for c in result["settings"]["train_configs"]}
    for r in rows:
        cfg = configs[r["run"]]
        assert r["context"] == n and ("ppl_own_pattern" in r) == (r["setting"] != "full") and "ppl_test" in r
        if r["steps"] == 0:  # the start: Table 1's full-attention run at 8x itself
            assert r["run"] == start and r["reused"]
        else:  # trained on from its final model on table1_from_full's fresh data order, for each budget
            assert cfg["base"] == str(cache / start / "final") and cfg["seed"] == r["seed"] + 1000
            assert cfg["steps"] == r["steps"] and cfg["attention"] == r["setting"]
    shorter = {r["setting"]: r["run"] for r in from_full["rows"] if (r["context"], r["start"]) == (n, "full FT")}
    assert {r["setting"]: r["run"] for r in rows if r["steps"] == budgets[0]} == shorter  # table1_from_full's runs
    for r in rows:  # each head's share of attention on the keys beyond n/2 (layers x heads)
        assert all(0 <= m <= 1 for layer in r["far_reading"]["mass"] for m in layer)
    # the longer continuation and its start together: 3 x one run's tokens against the cap (the random base: 1,000)
    one_run = steps * configs[start]["batch_size"] * n
    plan = type("Plan", (), {"regime": lambda self: {"base_pretraining_tokens": 1000}})()
    runs = {k: {"config": c, **result["settings"]["runs"][k]} for k, c in configs.items()}
    assert rep._max_run_token_ratio(plan, runs) == pytest.approx(3 * one_run / 1000)
    assert len(results.curves(result)) == len(result["settings"]["runs"])
    sentence = module.verdict(result, results.compare(result))
    for b in budgets:
        assert f"; {b} steps: short " in sentence or f": {b} steps: short " in sentence
    assert "nan" not in sentence and "None" not in sentence
    assert len(results.plot(result).axes) == 2
    figure = results.plot_loss_by_position(result, panel="steps")
    assert [a.get_title().split("; ")[-1] for a in figure.axes] == [f"steps {b}" for b in [0] + budgets]
    figure = module.plot_far_reading(result, heads=2)  # the start, then each setting at each budget
    assert len(figure.axes) == 1 and len(figure.axes[0].patches) == 2 * (1 + 3 * len(budgets))


def test_table1_budget_reuses_table1s_runs_and_doubles_the_steps(base_dir, dirs, capsys):
    table1 = json.loads((dirs[0] / "table1.quick.json").read_text()) if (dirs[0] / "table1.quick.json").is_file() \
        else quick("table1", base_dir, dirs, capsys)
    result = quick("table1_budget", base_dir, dirs, capsys)
    rows, steps, unit = result["rows"], rep.QUICK["steps"], rep.QUICK_UNIT
    assert {(r["setting"], r["context"], r["steps"]) for r in rows} == {
        (s, f * unit, k * steps) for s in rep.T1_BUDGET_SETTINGS for f in rep.T1_BUDGET_FACTORS for k in rep.T1_BUDGETS}
    configs = {c["run"]: c for c in result["settings"]["train_configs"]}
    table1_runs = {(r["setting"], r["context"]): r["run"] for r in table1["rows"] if "run" in r}
    for r in rows:
        assert configs[r["run"]]["steps"] == r["steps"] and configs[r["run"]]["seq_len"] == r["context"]
        assert (r["run"] == table1_runs[(r["setting"], r["context"])]) == (r["steps"] == steps)  # table1's runs
        assert r["ppl"] > 1 and r["ppl_test"] > 1 and len(r["loss_bins"]) == rep.LOSS_BINS
        assert ("ppl_own_pattern" in r) == (r["setting"] != "full") and r.get("ppl_own_pattern", 2.0) > 1
        assert len(r["loss_bins_stretched"]) == rep.LOSS_BINS and r["loss_bins_stretched"] != r["loss_bins"]
        layers, heads = len(r["distance_mass"]["per_head"]), len(r["distance_mass"]["per_head"][0])
        assert [len(r["far_minus_near"]), len(r["far_minus_near"][0])] == [layers, heads]  # x rotary frequencies
        mass = r["distance_mass"]["mean"]  # every query's attention lands in some distance bin (fp32 probabilities)
        assert len(mass) == rep.LOSS_BINS and sum(mass) == pytest.approx(1.0, abs=1e-6)
    long = [r for r in rows if r["steps"] == 2 * steps]
    assert all(len(result["settings"]["runs"][r["run"]]["curve"]) > 1 for r in long)
    for r in rows:  # the stretched test: its loss by position with PI by PI_STRETCH x n / L, in the run's eval cache
        evals = json.loads((dirs[1] / r["run"] / "evals.json").read_text())
        specs = [json.loads(k) for k, v in evals.items() if v.get("loss_bins") == r["loss_bins_stretched"]]
        assert [s.get("rope_factor") for s in specs] == [rep.table1_budget.PI_STRETCH * r["context"] / unit]
    start = result["starting_point"]  # the base with each context's interpolation: its attention by distance only
    assert [(r["setting"], r["context"], r["steps"]) for r in start] == [("base+PI", f * unit, 0)
                                                                         for f in rep.T1_BUDGET_FACTORS]
    assert all(sum(r["distance_mass"]["mean"]) == pytest.approx(1.0, abs=1e-6) and r["far_minus_near"] for r in start)
    assert all(len(r["rotary_phase"]["phase"]) == layers for r in start)
    for r in rows + start:  # far_reading: every model and the base with each context's interpolation
        mass, change = r["far_reading"]["mass"], r["far_reading"]["change"]
        assert r["far_reading"]["test"] == "window 0.5" and [len(mass), len(mass[0])] == [layers, heads]
        assert all(0 <= m <= 1 for m in sum(mass, [])) and all(c >= 0 for c in sum(change, []))
    full = {(r["seed"], r["context"], r["steps"]): r for r in rows if r["setting"] == "full"}
    for r in rows:  # the phase test: every run's phase, each grouped one turned toward full FT's of the same seed
        phase = r["rotary_phase"]["phase"]
        assert [len(phase), len(phase[0])] == [layers, heads] and all(abs(p) <= math.pi for p in sum(phase, []))
        if r["setting"] == "full":
            assert "phase_turned" not in r
            continue
        assert [x["t"] for x in r["phase_turned"]] == list(rep.table1_budget.PHASE_STEPS)
        assert all(x["ppl"] > 1 and x["ppl_own_pattern"] > 1 for x in r["phase_turned"])
        assert len(r["phase_turned_by_layer"]) == layers and len(r["loss_bins_phase_turned"]) == rep.LOSS_BINS
        assert r["full_with_these_phases"] > 1 and r["phase_to_base"]["ppl"] > 1
        assert r["phase_to_base"]["ppl_own_pattern"] > 1
        target = full[(r["seed"], r["context"], r["steps"])]["rotary_phase"]["phase"]
        evals = json.loads((dirs[1] / r["run"] / "evals.json").read_text())
        turned = {(s["rotate"]["t"], s["rotate"]["layer"], s["attention"]): s["rotate"]["angles"]
                  for s in map(json.loads, evals) if s["kind"] == "ppl"
                  and isinstance(s.get("rotate"), dict) and s["rotate"]["toward"] == "full FT's phases, same seed"}
        onto = [[math.remainder(b - a, 2 * math.pi) for a, b in zip(pa, pb)]
                for pa, pb in zip(phase, target)]  # the shorter way round, onto full FT's phases (rounded to 1e-6)
        assert turned[(1.0, "all", "full")] == turned[(1.0, "all", "train")] == [[round(a, 6) for a in row]
                                                                                   for row in onto]
        assert turned[(2.0, "all", "full")] == [[round(2 * a, 6) for a in row] for row in onto]
        pair = r["phase_turned_slow"]["pairs"][1]  # d/4 and its two neighbours, turned at once
        assert r["phase_turned_slow"]["pairs"] == [pair - 1, pair, pair + 1] and r["phase_turned_slow"]["ppl"] > 1
        slow = next(s["rotate"] for s in map(json.loads, evals) if isinstance(s.get("rotate"), list))
        assert [e["pair"] for e in slow] == [pair - 1, pair, pair + 1] and slow[1]["angles"] == turned[(1.0, "all",
                                                                                                         "full")]
        base = next(x for x in start if x["context"] == r["context"])["rotary_phase"]["phase"]
        back = [s["rotate"]["angles"] for s in map(json.loads, evals) if s["kind"] == "ppl"
                and isinstance(s.get("rotate"), dict) and s["rotate"]["toward"] == "the base's phases with PI"]
        assert back == 2 * [[[round(math.remainder(b - a, 2 * math.pi), 6) for a, b in zip(pa, pb)]
                             for pa, pb in zip(phase, base)]]  # full attention and the own pattern
        assert turned[(1.0, layers - 1, "full")] == [[round(a, 6) if i == layers - 1 else 0.0 for a in row]
                                                     for i, row in enumerate(onto)]  # one layer at a time
        grafts = [s["grafted"] for s in map(json.loads, evals)
                  if "grafted" in s and s["kind"] == "ppl"]  # the graft test: full FT's weights
        full_run = full[(r["seed"], r["context"], r["steps"])]["run"]
        assert set(r["grafted"]) == set(rep.table1_budget.GRAFTS) and all(p > 1 for p in r["grafted"].values())
        one_layer = [g for g in grafts if g["names"][0].startswith("layers.")]  # W_q and W_k of one layer (or head)
        assert sorted(g["names"] for g in one_layer if "heads" not in g) == [
            [f"layers.{i}.self_attn.q_proj", f"layers.{i}.self_attn.k_proj"] for i in range(layers)]
        assert len(r["grafted_by_layer"]) == layers and all(g["donor"] == full_run for g in one_layer)
        if (r["context"], r["steps"]) == (max(rep.T1_BUDGET_FACTORS) * unit, 2 * steps):  # and one head at a time
            assert [len(r["grafted_by_head"]), len(r["grafted_by_head"][0])] == [layers, heads]
            reading = {json.dumps(s.get("grafted")) for s in map(json.loads, evals) if s["kind"] == "far_reading"}
            assert reading == {"null"} | {json.dumps(g) for g in grafts if g.get("pairs") is not None
                                          or g["names"] == ["q_proj", "k_proj"]}  # its own, and the 3 W_q, W_k grafts'
            assert set(r["far_reading_grafted"]) == set(rep.table1_budget.GRAFTS_INTO_FULL)
            assert sorted((g["names"][0], g["heads"]) for g in one_layer if "heads" in g) == sorted(
                (f"layers.{i}.self_attn.q_proj", [h]) for i in range(layers) for h in range(heads))
            hidden = r["far_keys_hidden"]  # and with far keys hidden: every head, a layer's, the two that graft best
            flat = [p for layer in r["grafted_by_head"] for p in layer]
            assert hidden["heads"] == sorted([list(divmod(i, heads)) for i in sorted(range(len(flat)),
                                                                                   key=flat.__getitem__)[:2]])
            assert len(hidden["by_layer"]) == layers and all(p > 1 for p in hidden["by_layer"])
            alone = hidden["by_head"]  # one head at a time, in the grouped model alone: its two best found
            assert [len(alone), len(alone[0])] == [layers, heads] and all(p > 1 for p in sum(alone, []))
            flat = sum(alone, [])
            assert hidden["found_heads"] == sorted([list(divmod(i, heads)) for i in sorted(range(len(flat)),
                                                                                         key=flat.__getitem__)[:2]])
            masked = {(json.dumps(s.get("heads")), s.get("split", "validation")) for s in map(json.loads, evals)
                      if s.get("attention") == "window 0.5"}
            assert masked == {(json.dumps(h), "validation") for h in [None, hidden["heads"], hidden["found_heads"]]
                              + [[[i, h] for h in range(heads)] for i in range(layers)]
                              + [[[i, h]] for i in range(layers) for h in range(heads)]} | {
                (json.dumps(h), "test") for h in (None, hidden["heads"], hidden["found_heads"])}
            assert hidden["far_reading"]["heads"] == hidden["found_heads"]  # every head's reading, those two hidden
            assert [len(hidden["far_reading"]["mass"]), len(hidden["far_reading"]["mass"][0])] == [layers, heads]
            assert set(hidden["test"]) == {"all", "these_heads", "found"}
            assert all(p > 1 for p in hidden["test"].values())
        else:
            assert "grafted_by_head" not in r and all("heads" not in g for g in one_layer)
            assert "far_keys_hidden" not in r
        grafts = [g for g in grafts if g not in one_layer]
        assert sorted((g["donor"], tuple(g["names"]), str(g["pairs"])) for g in grafts) == sorted(
            (full_run, names, str({None: None, "slow": [pair - 1, pair, pair + 1], "fast": list(range(pair - 1))}[w]))
            for names, w in rep.table1_budget.GRAFTS.values())
        full_evals = json.loads((dirs[1] / full_run / "evals.json").read_text())  # and full FT with the grouped run's
        into_full = [s["grafted"] for s in map(json.loads, full_evals) if s.get("grafted", {}).get("donor") == r["run"]]
        assert len(into_full) == len(rep.table1_budget.GRAFTS_INTO_FULL) == len(r["full_grafted"])
    got = rep.table1_budget.grafted(result)
    assert set(got) == {(s, k * steps) for s in rep.table1_budget.GROUPED for k in rep.T1_BUDGETS}
    assert all(set(g["closed"]) == set(rep.table1_budget.GRAFTS) for g in got.values())
    fig = rep.table1_budget.plot_grafted(result)  # one bar per (setting, budget) and graft, and the 2 phase turns
    assert len(fig.axes[0].patches) == len(got) * (len(rep.table1_budget.GRAFTS) + 2)
    assert len(fig.axes[1].patches) == len(got) * len(rep.table1_budget.GRAFTS_INTO_FULL)
    assert all(len(g["by_layer"]) == layers for g in got.values())
    longest = rep.table1_budget.grafted(result, context=max(rep.T1_BUDGET_FACTORS) * unit)
    assert {k for k, g in longest.items() if "by_head" in g} == {(s, 2 * steps) for s in rep.table1_budget.GROUPED}
    fig = rep.table1_budget.plot_grafted_heads(result)  # one panel per grouped setting, a cell per layer and head
    assert len(fig.axes) == len(rep.table1_budget.GROUPED) and len(fig.axes[0].texts) == layers * heads
    hidden = rep.table1_budget.far_keys_hidden(result)  # the longest context and budget only
    assert set(hidden) == {(s, 2 * steps) for s in rep.table1_budget.GROUPED}
    seeds = len(result["settings"]["seeds"])
    assert all(len(g["by_layer"]) == layers and len(g["heads"]) == seeds for g in hidden.values())
    assert all(len(g["found_heads"]) == seeds and set(g["test"]) == {"all", "these_heads", "found"}
               for g in hidden.values())
    fig = rep.table1_budget.plot_far_keys_hidden(result)  # every head, each layer's, the two pairs of heads; test
    assert len(fig.axes[0].patches) == len(hidden) * (layers + 3) and len(fig.axes[1].patches) == len(hidden) * 3
    fig = rep.table1_budget.plot_far_keys_heads(result)  # one panel per grouped setting, a cell per layer and head
    assert len(fig.axes) == len(rep.table1_budget.GROUPED) and len(fig.axes[0].texts) == layers * heads
    reading = rep.table1_budget.far_reading(result, context=max(rep.T1_BUDGET_FACTORS) * unit)  # and the base
    assert set(reading) == {("base+PI", 0), *((s, k * steps) for s in rep.T1_BUDGET_SETTINGS for k in rep.T1_BUDGETS)}
    assert all(set(reading[(s, 2 * steps)]["grafted"]) == set(rep.table1_budget.GRAFTS_INTO_FULL)
               and "found_hidden" in reading[(s, 2 * steps)]  # with the two heads' far keys hidden
               for s in rep.table1_budget.GROUPED)  # and with full FT's rows of W_q and W_k
    fig = rep.table1_budget.plot_far_reading(result)  # 4 heads x (4 models + 2 grafts); a dot per head and setting
    assert len(fig.axes[0].patches) == 4 * 6 and len(fig.axes[1].collections) == len(rep.table1_budget.GROUPED)
    got = rep.table1_budget.phase_turned(result)
    assert set(got) == {(s, k * steps) for s in rep.table1_budget.GROUPED for k in rep.T1_BUDGETS}
    assert all(g["closed"][0] == 0 and g["own_change"][0] == 0 for g in got.values())  # t = 0: as trained
    fig = rep.table1_budget.plot_phase_turned(result)  # one bar per (setting, budget) and edit: all layers, each
    assert len(fig.axes[1].patches) == len(got) * (layers + 3)  # layer, with the 2 neighbours, onto the base's
    assert len(rep.table1_budget.plot_rotary_phase(result, heads=2).axes) == 2
    for heads in (1, 2):  # the heads S2-Attn sends furthest beyond full FT: one panel each
        assert len(rep.table1_budget.plot_score_by_frequency(result, heads=heads).axes) == heads
    fig = rep.table1_budget.plot_distance_mass(result)  # at the longest context: one bar per head and setting
    assert len(fig.axes[1].patches) == len(rep.T1_BUDGET_SETTINGS) * len(
        result["rows"][0]["distance_mass"]["per_head"][0]) * len(result["rows"][0]["distance_mass"]["per_head"])
    cmp = results.compare(result)  # one row per setting, context and budget, each against full FT of its own
    assert len(cmp) == len(rep.T1_BUDGET_SETTINGS) * len(rep.T1_BUDGET_FACTORS) * len(rep.T1_BUDGETS)
    per_context = len(rep.T1_BUDGET_SETTINGS) * len(rep.T1_BUDGETS)  # the paper's context at the same multiple
    assert [c["paper_context"] for c in cmp] == [4096 * f for f in rep.T1_BUDGET_FACTORS for _ in range(per_context)]
    verdict = rep.table1_budget.verdict(result, cmp)  # the full file's sentence (results.verdict says "quick run")
    assert all(f"{f * unit} tokens: " in verdict for f in rep.T1_BUDGET_FACTORS)
    assert verdict.count("short attention") == len(rep.T1_BUDGET_FACTORS)  # its gap at both budgets, per context
    assert verdict.count("slow-frequency query phases onto full FT's") == len(rep.T1_BUDGET_FACTORS)
    assert verdict.count("grafting full FT's weights into S2-Attn") == len(rep.T1_BUDGET_FACTORS)
    assert verdict.count("'s alone") == len(rep.T1_BUDGET_FACTORS) and verdict.count(", its head ") == 1
    assert verdict.count("hiding the keys more than 0.5 x n back from the two heads") == 1


def test_table1_window_reuses_table1s_runs_and_full_window_is_full_attention(base_dir, dirs, capsys):
    table1 = json.loads((dirs[0] / "table1.quick.json").read_text()) if (dirs[0] / "table1.quick.json").is_file() \
        else quick("table1", base_dir, dirs, capsys)
    result = quick("table1_window", base_dir, dirs, capsys)
    rows, n = result["rows"], 256  # quick: 4 x 64 tokens
    assert {(r["setting"], r["window"]) for r in rows} == {(s, int(n * f)) for s in ("full", "short", "s2")
                                                            for f in rep.T1_WINDOWS}
    assert all(r["reused"] for r in rows)  # no training: table1's runs at 4x
    at_4x = {r["setting"]: r for r in table1["rows"] if r["context"] == n and "run" in r}
    for r in rows:
        assert r["run"] == at_4x[r["setting"]]["run"] and r["ppl"] > 1 and len(r["loss_bins"]) == rep.LOSS_BINS
        if r["window"] == n:  # a window of the whole context is full attention: table1's own numbers
            assert r["ppl"] == at_4x[r["setting"]]["ppl"]
    by = {(r["setting"], r["window"]): r["ppl"] for r in rows}
    assert by[("s2", n // 8)] != by[("s2", n)]  # a narrower window is a different computation


def test_table1_sink_quick_reuses_table1_and_chooses_k_on_validation(base_dir, dirs, capsys):
    table1 = json.loads((dirs[0] / "table1.quick.json").read_text()) if (dirs[0] / "table1.quick.json").is_file() \
        else quick("table1", base_dir, dirs, capsys)
    result = quick("table1_sink", base_dir, dirs, capsys)
    t = rep.table1_sink
    rows, start, selection = result["rows"], result["starting_point"], result["selection"]
    contexts = (128, 512)  # quick: 2 x 64 and 8 x 64 tokens
    assert {(r["setting"], r["context"], r["test"]) for r in rows} == \
        {(s, n, "full") for s in t.SETTINGS for n in contexts} | \
        {(s, n, test) for s in t.DIAGNOSED if s != "base+PI" for n in contexts for test in t.TESTS}
    assert {(r["context"], r["test"]) for r in start} == {(n, test) for n in contexts for test in t.TESTS}
    old = {(r["setting"], r["context"]): r for r in table1["rows"]}
    for r in rows:
        if r["setting"] in ("full", "short", "s2"):  # Table 1's runs, not retrained
            assert r["reused"] and r["run"] == old[(r["setting"], r["context"])]["run"]
            if r["test"] == "full":
                assert r["ppl"] == old[(r["setting"], r["context"])]["ppl"]
        if r["test"] == "full":
            assert r["ppl_test"] > 1 and r["ppl_test"] != r["ppl"] and r["ppl_last_quarter_test"] > 1
            assert ("first_mass" in r) == (r["setting"] in t.DIAGNOSED)
    assert [c["every"] for c in selection] == list(t.FULL_EVERY) and all(c["context"] == 512 for c in selection)
    chosen = {r["every"] for r in rows if r["setting"] == "s2_full_steps"}
    assert len(chosen) == 1 and chosen <= set(t.FULL_EVERY)
    config = {c["run"]: c for c in result["settings"]["train_configs"]}
    for r in rows:
        assert config[r["run"]]["full_attention_every"] == (r["every"] or 0)
        assert config[r["run"]]["group_schedule"] == ("grow" if r["setting"] == "s2_grow" else "none")
        assert r["flops_rel"] == pytest.approx(1.0) if r["setting"] == "full" else r["flops_rel"] < 1
    by = {(r["setting"], r["context"], r["test"]): r["ppl"] for r in rows}
    assert by[("s2", 512, "window 0.5")] != by[("s2", 512, "full")]  # hiding keys changes the computation
    assert t.diagnostics(result) and t.mass(result)[("s2", 512)]["per_head"]


@pytest.mark.parametrize("name, ids", [
    ("table2", {(s, r) for s, r, _ in rep.T2_SETTINGS}),
    ("table6", {(p, full) for p in rep.T6_NAMES for full in (False, True)}),
    ("table7", {(g,) for g, _ in rep.T7_FRACTIONS}),
    ("figure5", None), ("figure4", None)])
def test_other_tables_quick(name, ids, base_dir, dirs, capsys):
    result = quick(name, base_dir, dirs, capsys)
    rows = result["rows"]
    if ids is not None:
        assert {tuple(r[f] for f in rep.ID_FIELDS[name]) for r in rows} == ids
        assert all(r["ppl"] > 1 and r["ppl_last_quarter"] > 1 for r in rows)
        assert all(r["ppl_test"] > 1 and r["ppl_test"] != r["ppl"] and r["ppl_last_quarter_test"] > 1 for r in rows)
    if name == "table2":
        params = {(r["setting"], r["rank"]): r["trainable_params"] for r in rows}
        assert params[("lora", 8)] < params[("lora+norm", 8)] < params[("lora+embed", 8)] \
            < params[("lora+norm+embed", 8)] < params[("full", None)]
        assert params[("lora", 16)] == 2 * params[("lora", 8)]
        # the diagnostic of attention: the same methods trained with full attention, at both rates
        attention = {r["setting"]: r["attention"] for r in rows}
        assert {s for s, a in attention.items() if a == "full"} == {s for s in attention if s.endswith("_full_attn")}
        assert set(attention.values()) == {"s2", "full"} and attention["lora+norm+embed"] == "s2"
        lr = {r["setting"]: r["lr"] for r in rows}
        assert lr["full_lr10_full_attn"] == pytest.approx(10 * lr["full_full_attn"])
        for t in rep.table2.LORA_PLUS_RATES:  # LoRA+ at each rate, with S2-Attn and with full attention
            s2 = rep.table2.lora_plus(t)
            assert lr[s2] == lr[s2 + "_full_attn"] == pytest.approx(t * lr["lora+norm+embed"])
        assert params[("lora+norm+embed_full_attn", 8)] == params[("lora+norm+embed", 8)]
        cells = {(c["method"], c["times"], c["attention"]) for c in rep.table2.without_s2(result)}
        assert cells == {("full FT", 1, "S2-Attn"), ("full FT", 1, "full attention"), ("full FT", 10, "full attention"),
                         *(("LoRA+", t, a) for t in rep.table2.LORA_PLUS_RATES for a in ("S2-Attn", "full attention"))}
        assert {c["label"] for c in results.compare(result)} == {  # the diagnostic of attention is not Table 2's
            f"{s} r={r}" if r else s for s, r in {(s, r) for s, r, _ in rep.T2_SETTINGS} - {
                (s, 8 if s.startswith("lora") else None) for s in rep.table2.WITHOUT_S2_ONLY}}
        assert "Trained with full attention instead of S2-Attn" in results.verdict({**result, "quick": False})
        assert rep.table2.plot_without_s2(result).axes
    if name == "table6":
        by = {(r["pattern"], r["test_full_attention"]): r["ppl"] for r in rows}
        assert by[("s2", True)] != by[("s2", False)]  # a model's own pattern is a different computation
    if name == "figure5":
        assert {r["setting"] for r in rows} == {"full", "lora_plus", "lora_plus_lr10", "lora_plus_lr10_full_attn"}
        starts = [r["val_window_ppl"] for r in rows if r["step"] == 0]
        assert len(starts) == 4 and len(set(starts)) == 1  # all start from the same interpolated base
        lr = {r["setting"]: r["lr"] for r in rows}
        assert lr["lora_plus_lr10"] == pytest.approx(10 * lr["lora_plus"]) and lr["lora_plus"] == lr["full"]
        assert lr["lora_plus_lr10_full_attn"] == lr["lora_plus_lr10"]
        attention = {r["setting"]: r["attention"] for r in rows}
        assert attention == {"full": "s2", "lora_plus": "s2", "lora_plus_lr10": "s2",
                             "lora_plus_lr10_full_attn": "full"}
        assert "trained with full attention instead at that rate" in results.verdict({**result, "quick": False})
        last = max(r["step"] for r in rows)  # the final models, tested as every table tests: both splits
        finals = [r for r in rows if "ppl_test" in r]
        assert {(r["setting"], r["step"]) for r in finals} == {(s, last) for s in lr}
        assert all(r["ppl"] > 1 and r["ppl_test"] > 1 and r["ppl_test"] != r["ppl"] for r in finals)
    if name == "figure4":
        assert {r["model"] for r in rows} == {"base", "base + extended PI", "extended", "extended + extended PI",
                                              "extended (full FT)", "extended (full FT, passkey docs)"}
        assert all(0 <= r["accuracy"] <= 1 for r in rows)
        factors = {r["model"]: r["rope_factor"] for r in rows}
        assert factors["extended + extended PI"] == pytest.approx(rep.EXTENDED_PI * factors["extended"])
        assert factors["extended"] == factors["extended (full FT)"] == rep.figure4.FACTOR  # the paper's 32k = 8x 4k
        assert factors["extended (full FT, passkey docs)"] == rep.figure4.FACTOR
        shares = {(c["method"], c["passkey_share"], c["passkey_placement"])
                  for c in result["settings"]["train_configs"]}
        assert shares == {("lora_plus", 0.0, "packed"), ("full", 0.0, "packed"),
                          ("full", rep.figure4.PASSKEY_SHARE, "row")}
        assert {(r["model"], r["format"]) for r in rows} == \
            {(m, f) for m in factors for f in rep.figure4.FORMATS}  # both prompts, every model once per length


def test_the_cache_key_depends_on_the_code_a_run_executes(tmp_path, monkeypatch):
    from minilongllora.reproduce import runner

    (tmp_path / "model.py").write_text("a = 1\n")
    (tmp_path / "cli.py").write_text("b = 1\n")
    monkeypatch.setattr(runner, "PACKAGE", tmp_path)
    before = runner.code_fingerprint()
    (tmp_path / "cli.py").write_text("b = 2\n")  # the command line runs nothing of a run
    assert runner.code_fingerprint() == before
    (tmp_path / "model.py").write_text("a = 2\n")
    assert runner.code_fingerprint() != before
    cfg = rep.Plan.make("base", 256).config(1024)
    assert runner.run_key(cfg, "base+code-1") != runner.run_key(cfg, "base+code-2")
