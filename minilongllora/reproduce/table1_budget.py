"""(Not in the paper.) Table 1 at 4x and 8x, full-attention FT, short attention and S2-Attn, with the regime's budget
and with twice it (800 steps: 9.5% of the base's pretraining tokens, past the regime's 5% cap): does S2-Attn's gap
shrink once full-attention fine-tuning has flattened, as it does at 2x within the budget? And where a grouped model
breaks, it looks inside without retraining: the loss by position with the interpolation stretched (distance or number
of keys?), the attention by key distance head by head, each rotary frequency's part of a far key's score, and the
phase test: a slow frequency's query phases turned by a weight edit onto full FT's, tested with full attention and with
the model's own pattern; and the graft test: which of full FT's weights, put in a grouped model's place, repair it,
and which of the grouped model's break full FT (notebook 08, §8.3-8.4)."""

from __future__ import annotations

import dataclasses
import math

import torch

from .compare import (OUR_MODEL, RULE, figure, label_axes, mean, paper_value, pct, ppl_row, quick_note, reference,
                      rel, resolve, seeds_text, than, versus)
from .plan import Plan, group_of
from .runner import run_fields
from .table1 import PAPER_PPL

NAME = "table1_budget"
DESCRIPTION = ("Table 1 at 4x and 8x the base's context with the regime's 400 steps and with twice them (not in the "
               "paper; past the 5% token cap): full-attention FT vs short attention vs S2-Attn, full FT with PI, "
               "tested with full attention")
ID_FIELDS = ("setting", "context", "steps")
T1_BUDGETS = (1, 2)  # the budget as a multiple of the regime's steps; 1 is table1's runs
T1_BUDGET_SETTINGS = ("full", "short", "s2")
GROUPED = ("short", "s2")  # the settings that train in groups, each compared with full-attention FT
T1_BUDGET_FACTORS = (4, 8)  # table1's contexts where full-attention FT has not flattened within the budget
BEYOND_THE_CAP = True  # its longer runs exceed the regime's token cap on purpose (a diagnostic)
# every row's loss by position is also measured with its interpolation stretched this much further (PI by 1.5 x n / L):
# the same keys, each 1.5 times closer in rotary position. A break that moves with it is one of distance, not of the
# number of keys.
PI_STRETCH = 1.5
DISTANCE_DOCUMENTS = 4  # every run's attention by distance (sinks.distance_mass) over the first 4 validation documents
# and each rotary frequency's part of a far key's score against a near one's (sinks.score_by_frequency), in 16ths of
# the window: near, the first 4 (within the training group, a quarter of the window); far, from the 12th on (beyond
# about 1,400 tokens at 8x, where S2-Attn's loss breaks)
NEAR_BINS, FAR_BINS = 4, 11
# that frequency, pair d/4 of d/2 (8 of 16 in the tiny base: sinks.rotary_phase's default), whose angle per base
# position is 10000^(-1/2) = 0.01 radians (score_by_frequency): every run's phase there (sinks.rotary_phase), and
# each grouped model tested with its queries at that frequency turned toward full FT's phases of the same seed
# (t = 1: onto them, t = 2: twice as far), in every layer and in one layer at a time (t = 1), with full attention and
# with its own pattern; full FT turned onto the grouped model's phases; and the grouped model turned back onto the
# base's phases (a repair that needs no full-attention model); and the pair with its two neighbours turned at once.
# Does that one angle per head carry the break, and does the grouped model's own pattern care?
PHASE_STEPS = (1.0, 2.0)
# the graft test: which weights carry the break? Each grouped model tested with some of full FT's weights (same seed)
# in place of its own (sinks.graft), and full FT with some of the grouped model's: name -> (the parameters' names,
# which rows of W_q and W_k: all; "slow", the phase test's pair and its two neighbours; "fast", every faster pair)
GRAFTS = {"W_q, W_k": (("q_proj", "k_proj"), None), "W_v, W_o": (("v_proj", "o_proj"), None),
          "outside attention": (("mlp", "norm", "embed_tokens", "lm_head"), None),
          "W_q, W_k slow pairs": (("q_proj", "k_proj"), "slow"), "W_q, W_k fast pairs": (("q_proj", "k_proj"), "fast")}
GRAFTS_INTO_FULL = ("W_q, W_k", "W_q, W_k slow pairs", "W_q, W_k fast pairs")
# and full FT's W_q and W_k in one layer at a time (every grouped row), and in one head at a time (the rows at the
# longest context and budget): which heads carry the break? There, each grouped model is also tested with the keys
# beyond a window of n/2 hidden (sinks.KeyMasked, notebook 16's test) in every head, in one layer's heads at a time,
# and in the two heads whose graft closes most; full FT with the same keys hidden: do those heads' far keys do it?
# And in one head at a time, to find the heads without a full-attention model. Every model's far reading
# (sinks.far_reading, every context and budget): how much of each head's attention and output those keys make.
HIDDEN = "window 0.5"
PAPER = {"source": "LongLoRA v3 Table 1 (PAPER.md §1), its 16384 and 32768 columns (4x and 8x Llama 2's 4096)",
         "setup": "the paper has no budget ablation: Table 1 at the same multiples (its 1000 steps) for reference.",
         "rows": [{"setting": s, "steps": 1000, "context": 4096 * f, "ppl": PAPER_PPL[s][i]}
                  for s in T1_BUDGET_SETTINGS for i, f in ((1, 4), (2, 8))]}


def rows(plan: Plan, runner, seeds) -> list[dict]:
    """Each seed's full-attention FT, short-attention and S2-Attn run at each context with each budget, the grouped
    ones also tested with their own pattern, every run's loss by position also with its interpolation stretched by
    PI_STRETCH, where the window's last queries attend (by distance, `distance_mass`) and why
    (`score_by_frequency`), every run's slow-frequency phases (`sinks.rotary_phase`) and each grouped run's phase test
    (`_phase_turned`) and graft test (`_grafted`), how much each head reads from the keys beyond n/2
    (`sinks.far_reading`), and at the longest context and budget the far-key test (`_far_keys_hidden`); the curve is
    recorded every `plan.curve_every` steps in both, so the two budgets' curves share their first points."""
    out = []
    for seed in seeds:
        for factor in T1_BUDGET_FACTORS:
            n = plan.context(factor)
            pi = plan.rope_factor(n)  # the runs' interpolation
            base_phase = _phase_fields(runner.rotary_phase("base", n, DISTANCE_DOCUMENTS, rope_factor=pi))
            for budget in T1_BUDGETS:
                p = dataclasses.replace(plan, steps=budget * plan.steps)
                full_run = full_phases = None
                for setting in T1_BUDGET_SETTINGS:
                    run = runner.train(p.config(n, method="full", attention=setting, seed=seed))
                    row = {"setting": setting, "steps": p.steps, "context": n, "seed": seed,
                           "group_size": group_of(run["config"]), **runner.ppl(run, n), **runner.last_quarter(run, n),
                           **runner.test_split(run, n)}
                    if setting != "full":  # tested with its own pattern too: does it still improve there?
                        row["ppl_own_pattern"] = runner.ppl(run, n, "train")["ppl"]
                    row["loss_bins_stretched"] = runner.last_quarter(run, n, rope_factor=PI_STRETCH * pi)["loss_bins"]
                    row["distance_mass"] = runner.distance_mass(run, n, DISTANCE_DOCUMENTS)
                    row["far_minus_near"] = runner.score_by_frequency(run, n, DISTANCE_DOCUMENTS, NEAR_BINS,
                                                                      FAR_BINS)["far_minus_near"]
                    phase = runner.rotary_phase(run, n, DISTANCE_DOCUMENTS)
                    row["rotary_phase"] = _phase_fields(phase)
                    # how much each head reads, and takes, from the keys the far-key test hides
                    row["far_reading"] = runner.far_reading(run, n, DISTANCE_DOCUMENTS, HIDDEN)
                    by_head = factor == max(T1_BUDGET_FACTORS) and budget == max(T1_BUDGETS)
                    # the phases of its slow neighbours too: {pair: layers x heads}, the middle one the test's
                    phases = {q: runner.rotary_phase(run, n, DISTANCE_DOCUMENTS, q)["phase"]
                              for q in (phase["pair"] - 1, phase["pair"] + 1)} | {phase["pair"]: phase["phase"]}
                    if setting == "full":
                        full_run, full_phases = run, phases
                    else:
                        row.update(_phase_turned(runner, run, n, phase["pair"], phases, full_run, full_phases,
                                                 base_phase["phase"], setting))
                        shape = len(phase["phase"]), len(phase["phase"][0])  # layers, heads
                        row.update(_grafted(runner, run, n, full_run, phase["pair"], shape, by_head))
                        if by_head:
                            row["far_keys_hidden"] = _far_keys_hidden(runner, run, n, full_run, shape,
                                                                      row["grafted_by_head"])
                    out.append({**row, **run_fields(run)})
            if seed == seeds[0]:  # the starting point's attention: the base with the runs' interpolation
                out.append({"setting": "base+PI", "steps": 0, "context": n, "seed": None,
                            "distance_mass": runner.distance_mass("base", n, DISTANCE_DOCUMENTS, rope_factor=pi),
                            "far_minus_near": runner.score_by_frequency("base", n, DISTANCE_DOCUMENTS, NEAR_BINS,
                                                                        FAR_BINS, rope_factor=pi)["far_minus_near"],
                            "rotary_phase": base_phase,
                            "far_reading": runner.far_reading("base", n, DISTANCE_DOCUMENTS, HIDDEN,
                                                              rope_factor=pi)})
    return out


def _phase_fields(phase: dict) -> dict:
    """The two fields of sinks.rotary_phase that a row keeps (layers x heads each)."""
    return {"phase": phase["phase"], "magnitude": phase["magnitude"]}


def turn(pair: int, phase: list, target: list, t: float = 1.0, layer: int | None = None, **label) -> dict:
    """The `rotate` of Runner._model that turns a model's queries at rotary `pair` from its phases `phase` t times
    the way to `target` (each layers x heads, radians; the shorter way round), in every layer or in `layer` only;
    `label` says toward what (it goes into the evaluations' cache keys)."""
    angles = [[round(t * math.remainder(b - a, 2 * math.pi), 6) if layer in (None, i) else 0.0
               for a, b in zip(pa, pb)] for i, (pa, pb) in enumerate(zip(phase, target))]
    return {"pair": pair, "angles": angles, "t": t, "layer": "all" if layer is None else layer, **label}


def _phase_turned(runner, run, n: int, pair: int, phases: dict, full_run, full_phases: dict, base_phase: list,
                  setting: str) -> dict:
    """A grouped run's fields of the phase test (see PHASE_STEPS; `phases` and `full_phases`: {pair: layers x heads}
    for `pair` and its two neighbours): its perplexity with its phases at `pair` turned toward full FT's (same seed)
    t times, with full attention and with its own pattern; turned onto them one layer at a time; its loss by position
    turned onto them; full FT's perplexity turned onto this run's phases; its perplexities turned back onto the base's
    phases (with the same interpolation), a repair that needs no full-attention model; and its perplexities with the
    three slow pairs turned onto full FT's phases at once."""
    toward, phase, full_phase = "full FT's phases, same seed", phases[pair], full_phases[pair]

    def ppl(t: float, attention: str = "full", layer: int | None = None) -> float:
        return runner.ppl(run, n, attention, rotate=turn(pair, phase, full_phase, t, layer, toward=toward))["ppl"]

    slow = [turn(q, phases[q], full_phases[q], toward=toward) for q in sorted(phases)]  # one edit per pair
    return {"phase_turned": [{"t": t, "ppl": ppl(t), "ppl_own_pattern": ppl(t, "train")} for t in PHASE_STEPS],
            "phase_turned_by_layer": [ppl(1.0, layer=i) for i in range(len(phase))],
            "loss_bins_phase_turned": runner.last_quarter(run, n, rotate=turn(pair, phase, full_phase, toward=toward))
            ["loss_bins"],
            "full_with_these_phases": runner.ppl(full_run, n, rotate=turn(pair, full_phase, phase,
                                                                          toward=f"{setting}'s phases, same seed"))
            ["ppl"],
            "phase_to_base": {f: runner.ppl(run, n, attention, rotate=turn(pair, phase, base_phase,
                                                                           toward="the base's phases with PI"))["ppl"]
                              for f, attention in (("ppl", "full"), ("ppl_own_pattern", "train"))},
            "phase_turned_slow": {"pairs": sorted(phases), **{f: runner.ppl(run, n, attention, rotate=slow)["ppl"]
                                                             for f, attention in (("ppl", "full"),
                                                                                  ("ppl_own_pattern", "train"))}}}


def _grafted(runner, run, n: int, full_run, pair: int, shape: tuple[int, int], by_head: bool) -> dict:
    """A grouped run's fields of the graft test (GRAFTS; `pair`: the phase test's), all tested with full attention:
    "grafted", its perplexity with each set of full FT's weights (same seed) in place of its own; "full_grafted",
    full FT's with each of GRAFTS_INTO_FULL of this run's; "grafted_by_layer", its perplexity with full FT's W_q and
    W_k in one layer at a time; and with `by_head`, "grafted_by_head", in one head at a time (`shape`: layers x
    heads), and "far_reading_grafted", its far reading (`sinks.far_reading`) with each of GRAFTS_INTO_FULL of full
    FT's."""
    rows = {None: None, "slow": [pair - 1, pair, pair + 1], "fast": list(range(pair - 1))}

    def spec(donor, name: str) -> dict:
        names, which = GRAFTS[name]
        return {"donor": donor["key"], "names": list(names), "pairs": rows[which]}

    def qk(layer: int, head: int | None = None) -> float:  # full FT's W_q and W_k rows of one layer (or head)
        names = [f"layers.{layer}.self_attn.{w}_proj" for w in "qk"]
        edit = {"donor": full_run["key"], "names": names, "pairs": None, **({} if head is None else {"heads": [head]})}
        return runner.ppl(run, n, grafted=edit)["ppl"]

    layers, heads = shape
    return {"grafted": {name: runner.ppl(run, n, grafted=spec(full_run, name))["ppl"] for name in GRAFTS},
            "full_grafted": {name: runner.ppl(full_run, n, grafted=spec(run, name))["ppl"]
                             for name in GRAFTS_INTO_FULL},
            "grafted_by_layer": [qk(i) for i in range(layers)],
            **({} if not by_head else {
                "grafted_by_head": [[qk(i, h) for h in range(heads)] for i in range(layers)],
                "far_reading_grafted": {name: runner.far_reading(run, n, DISTANCE_DOCUMENTS, HIDDEN,
                                                                 grafted=spec(full_run, name))
                                        for name in GRAFTS_INTO_FULL}})}


def _far_keys_hidden(runner, run, n: int, full_run, shape: tuple[int, int], by_head: list) -> dict:
    """A grouped run's perplexity with the keys beyond HIDDEN's window hidden: "all" (every head), "by_layer" (the
    heads of one layer at a time), "heads" and "these_heads" (the two heads whose graft closes most, `by_head`:
    layers x heads of perplexities), and full FT's with the same keys hidden ("full_all", "full_these_heads").
    Without a full-attention model: "by_head" (hidden in one head at a time, layers x heads), "found_heads" and
    "found" (the two heads whose hiding alone lowers the perplexity most, hidden together), and "far_reading", every
    head's far reading with those two's far keys hidden (sinks.far_reading's `heads`). All on the validation split,
    where the heads are chosen; "test": "all", "these_heads" and "found" on the test split."""
    layers, heads = shape

    def two(ppl: list) -> list:  # the two heads of the lowest perplexity, in (layer, head) order
        flat = sorted(range(layers * heads), key=lambda i: ppl[i // heads][i % heads])[:2]
        return [[i // heads, i % heads] for i in sorted(flat)]

    def ppl(model, hidden: list | None = None, split: str = "validation") -> float:
        return runner.ppl(model, n, HIDDEN, split=split, heads=hidden)["ppl"]

    chosen = two(by_head)
    alone = [[ppl(run, [[i, h]]) for h in range(heads)] for i in range(layers)]
    found = two(alone)
    return {"all": ppl(run), "by_layer": [ppl(run, [[i, h] for h in range(heads)]) for i in range(layers)],
            "heads": chosen, "these_heads": ppl(run, chosen),
            "full_all": ppl(full_run), "full_these_heads": ppl(full_run, chosen),
            "by_head": alone, "found_heads": found, "found": ppl(run, found),
            "far_reading": runner.far_reading(run, n, DISTANCE_DOCUMENTS, HIDDEN, heads=found),
            "test": {"all": ppl(run, split="test"), "these_heads": ppl(run, chosen, "test"),
                     "found": ppl(run, found, "test")}}


def _paper_context(result: dict, n: int) -> int:
    """The paper's context at the same multiple of its base's (4096) as `n` of ours."""
    settings = result["settings"]
    return 4096 * round(n / (settings.get("context_unit") or settings["base_context"]))


def compare(result: dict) -> list[dict]:
    rows_, out = result["rows"], []
    for n in sorted({r["context"] for r in rows_}):
        pn = _paper_context(result, n)
        pref = paper_value(result, setting="full", context=pn)
        for steps in sorted({r["steps"] for r in rows_}):
            ref = reference(rows_, setting="full", steps=steps, context=n)
            for s in T1_BUDGET_SETTINGS:
                row = ppl_row(f"{s} {steps} steps @ {n}", paper_value(result, setting=s, context=pn), pref, rows_,
                              ref, setting=s, steps=steps, context=n)
                own = mean(rows_, "ppl_own_pattern", setting=s, steps=steps, context=n)
                out.append({**row, "ours_own": own, "ours_own_rel": rel(own, ref["ppl"]), "setting": s,
                            "steps": steps, "context": n, "paper_context": pn})
    return out


def _gaps(rows_: list[dict], steps: int, n: int, setting: str = "s2", metric: str = "ppl") -> list[float]:
    """A grouped setting's gap to full-attention FT of the same seed, per seed, at one budget and context (in `metric`;
    table1_from_full_budget's last quarter too)."""
    full = {r["seed"]: r[metric] for r in rows_ if r["setting"] == "full" and r["steps"] == steps
            and r["context"] == n}
    return [r[metric] / full[r["seed"]] - 1 for r in rows_ if r["setting"] == setting and r["steps"] == steps
            and r["context"] == n]


def plot(result: dict, rows_: list[dict]):
    """Left: each grouped setting's gap to full-attention FT by budget at each context (each seed and the mean);
    right: the absolute sliding-window perplexities, the grouped ones also tested with their own pattern."""
    from ..plotting import color

    fig, (a, b) = figure()
    rs = result["rows"]
    budgets, contexts = sorted({r["steps"] for r in rs}), sorted({r["context"] for r in rs})
    styles, markers = dict(zip(contexts, ("-", "--", ":"))), {"full": "o", "short": "s", "s2": "^"}
    present = [s for s in T1_BUDGET_SETTINGS if any(r["setting"] == s for r in rs)]
    for n in contexts:
        for setting in (s for s in present if s in GROUPED):
            gaps = [_gaps(rs, x, n, setting) for x in budgets]
            for x, g in zip(budgets, gaps):
                a.scatter([x] * len(g), [100 * v for v in g], color=color(setting), alpha=0.5, s=14)
            a.plot(budgets, [100 * sum(g) / len(g) for g in gaps], marker=markers[setting], ls=styles[n],
                   color=color(setting), label=f"{setting} @ {n} (mean)")
            own = [mean(rs, "ppl_own_pattern", setting=setting, steps=x, context=n) for x in budgets]
            if None not in own:  # files made before the own-pattern test lack it
                b.plot(budgets, own, marker="v", ls=styles[n], color=color(setting), alpha=0.5,
                       label=f"{setting} @ {n}, own pattern")
        for setting in present:
            b.plot(budgets, [mean(rs, "ppl", setting=setting, steps=x, context=n) for x in budgets],
                   marker=markers[setting], ls=styles[n], color=color(setting), label=f"{setting} @ {n}")
    a.axhline(0, color="k", lw=0.8)
    label_axes(a, OUR_MODEL + quick_note(result), "fine-tuning steps", "vs full FT, same seed (%)")
    label_axes(b, "ours: absolute perplexity", "fine-tuning steps", "sliding-window perplexity")
    b.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # many lines: the legend beside the axes
    for ax in (a, b):
        ax.set_xticks(budgets)
    fig.tight_layout()
    return fig


def _by_setting(result: dict, field: str, **match) -> dict:
    """{(setting, steps): [each seed's `field`]} of the rows whose fields equal `match`, and of the starting point
    (("base+PI", 0): the base with the interpolation, before fine-tuning)."""
    out = {}
    for r in result["rows"] + result.get("starting_point", []):
        if r.get(field) and all(r.get(k) == v for k, v in match.items()):
            out.setdefault((r["setting"], r["steps"]), []).append(r[field])
    return out


def distance_mass(result: dict, **match) -> dict:
    """{(setting, steps): distance_mass averaged over the seeds} (`_by_setting`)."""
    return {key: {"mean": [sum(col) / len(col) for col in zip(*(m["mean"] for m in ms))],
                  "per_head": torch.tensor([m["per_head"] for m in ms]).mean(0)}
            for key, ms in _by_setting(result, "distance_mass", **match).items()}


def plot_distance_mass(result: dict, context: int | None = None, far: int = FAR_BINS):
    """Where the window's last queries attend under full attention at `context` (default the longest), mean of the
    seeds, and of the base with the interpolation before fine-tuning (gray). Left: the share of attention on keys at
    each distance, per setting and budget. Right: each head's share on keys at least far/16 of the window back (the
    bins where S2-Attn's loss breaks at 8x), per setting, at the longer budget."""
    from ..plotting import color

    rs = result["rows"]
    n = context or max(r["context"] for r in rs)
    got = distance_mass(result, context=n)
    if not got:
        raise ValueError(f"{result['name']}: no row at {n} tokens has its attention by distance")
    fig, (a, b) = figure()
    bins = len(next(iter(got.values()))["mean"])
    xs = [(i + 0.5) * n / bins for i in range(bins)]
    long = max(k[1] for k in got)
    for (setting, steps), m in sorted(got.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if setting == "base+PI":
            a.plot(xs, m["mean"], marker="x", ms=4, color="gray", ls="--", lw=1, label="base+PI, before FT")
            continue
        a.plot(xs, m["mean"], marker="o" if setting == "full" else "^", ms=4, color=color(setting),
               ls="-" if steps == long else ":", label=f"{setting}, {steps} steps")
    a.set_yscale("log")
    a.axvline(far * n / bins, color="gray", ls=":", lw=0.8)
    label_axes(a, f"n = {n}: the last {n // bins} queries' attention" + quick_note(result), "key distance (tokens)",
               "share of attention (mean of layers and heads)")
    present = [s for s in T1_BUDGET_SETTINGS if (s, long) in got]
    width = 0.8 / len(present)
    for i, setting in enumerate(present):
        heads = got[(setting, long)]["per_head"][..., far:].sum(-1).flatten()  # (layers x heads,)
        b.bar([j + (i - len(present) / 2 + 0.5) * width for j in range(len(heads))], heads.tolist(), width,
              color=color(setting), label=f"{setting}, {long} steps")
    if ("base+PI", 0) in got:
        heads = got[("base+PI", 0)]["per_head"][..., far:].sum(-1).flatten()
        b.scatter(range(len(heads)), heads.tolist(), marker="x", color="gray", s=16, zorder=3,
                  label="base+PI, before FT")
    layers, h = got[("full", long)]["per_head"].shape[:2]
    b.set_xticks(range(0, layers * h, h), [f"layer {i}" for i in range(layers)])
    label_axes(b, f"each head's share beyond {far * n // bins} tokens", "head (layer by layer)",
               "share of attention")
    return fig


def far_minus_near(result: dict, **match) -> dict:
    """{(setting, steps): far_minus_near (layers x heads x frequencies) averaged over the seeds} (`_by_setting`)."""
    return {key: torch.tensor(ms, dtype=torch.float64).mean(0)
            for key, ms in _by_setting(result, "far_minus_near", **match).items()}


def plot_score_by_frequency(result: dict, context: int | None = None, heads: int = 2):
    """Why the far keys draw attention: for the `heads` heads where S2-Attn at the longer budget puts the most more
    attention than full FT beyond FAR_BINS/16 of the window (`distance_mass`), each rotary frequency's part of a far
    key's score minus a near key's (q·k/√d; near: within the training group), for the base with PI, full FT and
    S2-Attn (mean of the seeds). Above zero, that frequency makes far keys score higher than near ones."""
    from ..plotting import color

    rs = result["rows"]
    n = context or max(r["context"] for r in rs)
    got, mass = far_minus_near(result, context=n), distance_mass(result, context=n)
    if not got:
        raise ValueError(f"{result['name']}: no row at {n} tokens has its score by frequency")
    long = max(k[1] for k in got)
    extra = (mass[("s2", long)]["per_head"][..., FAR_BINS:].sum(-1)
             - mass[("full", long)]["per_head"][..., FAR_BINS:].sum(-1))  # (layers, heads)
    order = extra.flatten().argsort(descending=True)[:heads].tolist()
    h = extra.shape[1]
    fig, axes = figure(ncols=heads)
    for ax, flat in zip(axes, order):
        layer, head = divmod(flat, h)
        series = [("base+PI", 0, "gray", "base+PI")] + [(s, long, color(s), f"{s} {long}") for s in T1_BUDGET_SETTINGS]
        series = [s for s in series if (s[0], s[1]) in got]
        width = 0.8 / len(series)
        for i, (setting, steps, c, label) in enumerate(series):
            parts = got[(setting, steps)][layer, head]
            ax.bar([f + (i - len(series) / 2 + 0.5) * width for f in range(len(parts))], parts.tolist(), width,
                   color=c, label=f"{label} (sum {parts.sum().item():+.1f})")
        ax.axhline(0, color="black", lw=0.8)
        label_axes(ax, f"n = {n}, layer {layer} head {head}" + quick_note(result),
                   "rotary frequency (0 fastest; legend: setting, steps)", "far key's score minus near key's",
                   legend=7)
        ax.legend(fontsize=7, loc="upper right")  # the fast and the slowest frequencies' bars are near zero
    return fig


def _per_seed(result: dict, field: str, shares, **match) -> dict:
    """{(setting, steps): [shares(row, full) for each seed]} over the rows that have `field` and whose fields equal
    `match`, full being full FT's row of the same seed, budget and context: what the phase, graft and far-key tests
    share."""
    rs = [r for r in result["rows"] if all(r.get(k) == v for k, v in match.items())]
    full = {(r["seed"], r["steps"], r["context"]): r for r in rs if r["setting"] == "full"}
    out = {}
    for r in (r for r in rs if r.get(field)):
        out.setdefault((r["setting"], r["steps"]), []).append(shares(r, full[(r["seed"], r["steps"], r["context"])]))
    return out


def _mean(xs: list):
    """The mean over seeds of numbers, or of lists or dicts of them, element by element (a dict's fields that some
    seed lacks, from files recorded before they existed, are left out)."""
    if isinstance(xs[0], dict):
        return {k: _mean([x[k] for x in xs]) for k in xs[0] if all(k in x for x in xs)}
    if isinstance(xs[0], list):
        return [_mean(list(col)) for col in zip(*xs)]
    return sum(xs) / len(xs)


def phase_turned(result: dict, **match) -> dict:
    """{(setting, steps): the phase test of a grouped setting (PHASE_STEPS), mean of the seeds} of the rows whose
    fields equal `match`: "t" (0: as trained, then PHASE_STEPS), "ppl" and "ppl_own_pattern" at each t, "closed" (the
    share of its gap to full FT of the same seed that turning closes, at each t), "by_layer" (that share turning one
    layer at a time onto full FT's phases), "own_change" (its own pattern's change at each t against t = 0),
    "full_change" (full FT's change turned onto this setting's phases), "base_closed" and "base_own_change" (the
    same two turned back onto the base's phases instead), and "slow_closed" and "slow_own_change" (the same two with
    the three slow pairs turned onto full FT's phases)."""
    def shares(r: dict, full: dict) -> dict:
        ref = full["ppl"]
        ppl = [r["ppl"]] + [x["ppl"] for x in r["phase_turned"]]
        own = [r["ppl_own_pattern"]] + [x["ppl_own_pattern"] for x in r["phase_turned"]]
        gap = r["ppl"] - ref
        return {
            "ppl": ppl, "ppl_own_pattern": own, "closed": [(r["ppl"] - p) / gap for p in ppl],
            "by_layer": [(r["ppl"] - p) / gap for p in r["phase_turned_by_layer"]],
            "own_change": [o / own[0] - 1 for o in own], "full_change": [r["full_with_these_phases"] / ref - 1],
            **({} if "phase_to_base" not in r else {  # recorded since the repair onto the base's phases was added
                "base_closed": [(r["ppl"] - r["phase_to_base"]["ppl"]) / gap],
                "base_own_change": [r["phase_to_base"]["ppl_own_pattern"] / own[0] - 1]}),
            **({} if "phase_turned_slow" not in r else {  # recorded since the three slow pairs were added
                "slow_closed": [(r["ppl"] - r["phase_turned_slow"]["ppl"]) / gap],
                "slow_own_change": [r["phase_turned_slow"]["ppl_own_pattern"] / own[0] - 1]})}

    return {key: {"t": [0.0, *PHASE_STEPS], **_mean(xs)}
            for key, xs in _per_seed(result, "phase_turned", shares, **match).items()}


def plot_phase_turned(result: dict, context: int | None = None):
    """The phase test at `context` (default the longest), mean of the seeds. Left: each grouped model's perplexity
    with its slow-frequency query phases turned t times the way to full FT's, tested with full attention (solid) and
    with its own pattern (dotted); full FT's own as a line. Right: the share of the gap to full FT that turning onto
    full FT's phases closes, in every layer at once, one layer at a time, and with the pair's two neighbours, and
    that turning back onto the base's phases closes, at each budget."""
    from ..plotting import color

    n = context or max(r["context"] for r in result["rows"])
    got = phase_turned(result, context=n)
    if not got:
        raise ValueError(f"{result['name']}: no row at {n} tokens has the phase test")
    fig, (a, b) = figure()
    budgets = sorted({steps for _, steps in got})
    for steps in budgets:
        ls = "-" if steps == budgets[-1] else "--"
        a.axhline(mean(result["rows"], "ppl", setting="full", steps=steps, context=n), color=color("full"), ls=ls,
                  lw=1, label=f"full FT, {steps} steps")
        for setting in (s for s in GROUPED if (s, steps) in got):
            g = got[(setting, steps)]
            a.plot(g["t"], g["ppl"], marker="o", color=color(setting), ls=ls,
                   label=f"{setting} {steps}, full attention")
            a.plot(g["t"], g["ppl_own_pattern"], marker="v", color=color(setting), ls=":", alpha=0.6,
                   label=f"{setting} {steps}, own pattern")
    a.set_xticks(got[next(iter(got))]["t"])
    label_axes(a, f"n = {n}: the slow frequency's phases turned" + quick_note(result),
               "t (0: as trained; 1: onto full FT's phases)", "sliding-window perplexity")
    a.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    keys = sorted(got, key=lambda k: (k[1], k[0]))
    width = 0.8 / len(keys)
    extra = [(f, name) for f, name in (("slow_closed", "pair ± 1"), ("base_closed", "onto\nbase's"))
             if all(f in g for g in got.values())]  # files recorded before these edits lack them
    for i, (setting, steps) in enumerate(keys):
        g = got[(setting, steps)]
        shares = [g["closed"][1]] + g["by_layer"] + [g[f][0] for f, _ in extra]
        b.bar([j + (i - len(keys) / 2 + 0.5) * width for j in range(len(shares))], [100 * v for v in shares], width,
              color=color(setting), alpha=1.0 if steps == budgets[-1] else 0.5, label=f"{setting}, {steps} steps")
    names = ["all layers"] + [f"layer {i}" for i in range(len(g["by_layer"]))] + [name for _, name in extra]
    b.set_xticks(range(len(names)), names, fontsize=7)
    b.axhline(0, color="k", lw=0.8)
    label_axes(b, "turned onto full FT's phases (t = 1), or onto the base's", "which heads and pairs",
               "share of the gap to full FT closed (%)", legend=7)
    fig.tight_layout()
    return fig


def grafted(result: dict, **match) -> dict:
    """{(setting, steps): the graft test of a grouped setting (GRAFTS), mean of the seeds} of the rows whose fields
    equal `match`: "closed", {graft: the share of its gap to full FT of the same seed that taking full FT's weights
    closes}; "opened", {graft: the share of that gap that full FT opens with the grouped model's weights}; and where
    recorded, "by_layer" (the share closed by full FT's W_q and W_k in one layer at a time) and "by_head" (in one
    head at a time, layers x heads)."""
    def shares(r: dict, full: dict) -> dict:
        ref = full["ppl"]
        gap = r["ppl"] - ref
        return {"closed": {g: (r["ppl"] - p) / gap for g, p in r["grafted"].items()},
                "opened": {g: (p - ref) / gap for g, p in r["full_grafted"].items()},
                **({} if "grafted_by_layer" not in r else {  # recorded since the test by layer was added
                    "by_layer": [(r["ppl"] - p) / gap for p in r["grafted_by_layer"]]}),
                **({} if "grafted_by_head" not in r else {
                    "by_head": [[(r["ppl"] - p) / gap for p in layer] for layer in r["grafted_by_head"]]})}

    return {key: _mean(xs) for key, xs in _per_seed(result, "grafted", shares, **match).items()}


def plot_grafted(result: dict, context: int | None = None):
    """The graft test at `context` (default the longest), mean of the seeds, one bar per grouped setting and budget.
    Left: the share of its gap to full FT closed with full FT's weights in place of its own (each of GRAFTS), beside
    the phase test's two turns (one angle per head at the slow pair, and at the three slow pairs). Right: the share
    of that gap opened in full FT with the grouped model's weights."""
    from ..plotting import color

    n = context or max(r["context"] for r in result["rows"])
    got, turned = grafted(result, context=n), phase_turned(result, context=n)
    if not got:
        raise ValueError(f"{result['name']}: no row at {n} tokens has the graft test")
    fig, (a, b) = figure()
    keys = sorted(got, key=lambda k: (k[1], k[0]))
    long, width = max(k[1] for k in keys), 0.8 / len(keys)
    names = list(next(iter(got.values()))["closed"])
    for i, key in enumerate(keys):
        bars = [got[key]["closed"][g] for g in names] + [turned[key]["closed"][1], turned[key]["slow_closed"][0]]
        into_full = [got[key]["opened"][g] for g in got[key]["opened"]]
        style = dict(color=color(key[0]), alpha=1.0 if key[1] == long else 0.5, label=f"{key[0]}, {key[1]} steps")
        for ax, values in ((a, bars), (b, into_full)):
            ax.bar([j + (i - len(keys) / 2 + 0.5) * width for j in range(len(values))], [100 * v for v in values],
                   width, **style)
    short = lambda g: g.replace("W_q, W_k ", "W_q, W_k\n").replace("outside ", "outside\n")  # noqa: E731
    a.set_xticks(range(len(names) + 2), [short(g) for g in names] + ["phase\nturned", "3 phases\nturned"],
                 fontsize=7)
    b.set_xticks(range(len(got[keys[0]]["opened"])), [short(g) for g in got[keys[0]]["opened"]], fontsize=7)
    for ax in (a, b):
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(100, color="gray", ls=":", lw=0.8)
    label_axes(a, f"n = {n}: full FT's weights in the grouped model" + quick_note(result), "weights taken",
               "share of the gap to full FT closed (%)", legend=7)
    label_axes(b, "the grouped model's weights in full FT", "weights given", "share of the gap opened (%)", legend=7)
    a.get_legend().remove()  # the right panel's legend says the same, where the bars leave room
    b.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def _heads_map(got: dict, n: int, result: dict, what: str):
    """One heat map per grouped setting of `got` ({(setting, steps): {"by_head": layers x heads of shares, and
    "by_layer" where given}): each cell the share of the gap to full FT closed (%), `what` in the titles."""
    fig, axes = figure(ncols=len(got))
    for ax, (setting, steps) in zip(axes, sorted(got, key=lambda k: GROUPED.index(k[0]))):
        g = got[(setting, steps)]
        share = 100 * torch.tensor(g["by_head"])  # (layers, heads)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
        for (layer, head), v in zip(((i, h) for i in range(share.shape[0]) for h in range(share.shape[1])),
                                    share.flatten().tolist()):
            ax.text(head, layer, f"{round(v)}", ha="center", va="center", fontsize=8, color="white" if v > 50 else "k")
        ax.grid(False)
        ax.set_xticks(range(share.shape[1]))
        ax.set_yticks(range(share.shape[0]), [f"layer {i} (all: {100 * v:.0f}%)" for i, v in enumerate(g["by_layer"])])
        ax.set_xlabel("head")
        ax.set_title(f"n = {n}, {setting} {steps} steps, {what}: % of the gap closed" + quick_note(result),
                     fontsize=9)
    fig.tight_layout()
    return fig


def plot_grafted_heads(result: dict, context: int | None = None):
    """Which heads carry the break, at `context` (default the longest) and the longest budget, mean of the seeds: the
    share of each grouped model's gap to full FT closed with full FT's W_q and W_k in one head at a time (a cell per
    layer and head), and in a whole layer (in the row's label)."""
    n = context or max(r["context"] for r in result["rows"])
    got = {k: g for k, g in grafted(result, context=n).items() if "by_head" in g}
    if not got:
        raise ValueError(f"{result['name']}: no row at {n} tokens has the graft test by head")
    return _heads_map(got, n, result, "full FT's W_q, W_k")


def plot_far_keys_heads(result: dict, context: int | None = None):
    """The same heads found without a full-attention model, at `context` (default the longest), mean of the seeds:
    the share of each grouped model's gap to full FT closed with the keys beyond HIDDEN's window hidden in one head
    at a time (a cell per layer and head), and in a whole layer's heads (in the row's label)."""
    n = context or max(r["context"] for r in result["rows"])
    got = {k: g for k, g in far_keys_hidden(result, context=n).items() if "by_head" in g}
    if not got:
        raise ValueError(f"{result['name']}: no row at {n} tokens has the far-key test by head")
    return _heads_map(got, n, result, "far keys hidden")


def far_keys_hidden(result: dict, **match) -> dict:
    """{(setting, steps): the far-key test of a grouped setting (HIDDEN), mean of the seeds} of the rows whose fields
    equal `match`: "all", "by_layer" and "these_heads", the share of its gap to full FT (same seed) closed with the
    keys beyond the window hidden in every head, in one layer's heads, in the two heads whose graft closes most;
    "heads", those two heads for each seed; "full_all" and "full_these_heads", full FT's change with the same keys
    hidden. Where recorded, found without a full-attention model: "by_head" (the share closed hiding them in one
    head at a time, layers x heads), "found_heads" (each seed's two heads that close most) and "found" (the share
    the two close together); and "test", the shares of "all", "these_heads" and "found" on the test split (its gap
    to full FT's test perplexity)."""
    def shares(r: dict, full: dict) -> dict:
        h, ref = r["far_keys_hidden"], full["ppl"]
        closed = lambda p, own=r["ppl"], ref=ref: (own - p) / (own - ref)  # noqa: E731
        return {"all": closed(h["all"]), "by_layer": [closed(p) for p in h["by_layer"]],
                "these_heads": closed(h["these_heads"]), "full_all": h["full_all"] / ref - 1,
                "full_these_heads": h["full_these_heads"] / ref - 1,
                **({} if "by_head" not in h else {  # recorded since the heads were also found without full FT
                    "by_head": [[closed(p) for p in layer] for layer in h["by_head"]], "found": closed(h["found"]),
                    "test": {k: closed(p, r["ppl_test"], full["ppl_test"]) for k, p in h["test"].items()}})}

    def heads(field: str) -> dict:
        return _per_seed(result, "far_keys_hidden", lambda r, full: r["far_keys_hidden"].get(field), **match)

    chosen, found = heads("heads"), heads("found_heads")
    return {key: {**_mean(xs), "heads": chosen[key], **({} if None in found[key] else {"found_heads": found[key]})}
            for key, xs in _per_seed(result, "far_keys_hidden", shares, **match).items()}


def plot_far_keys_hidden(result: dict, context: int | None = None):
    """The far-key test at `context` (default the longest), mean of the seeds: the share of each grouped model's gap
    to full FT closed with the keys beyond HIDDEN's window hidden in every head, in one layer's heads at a time, in
    the two heads whose graft closes most, and in the two whose own hiding closes most (no full-attention model
    needed; where recorded); full FT's own change under the same hiding in the legend. Right, where recorded: the
    same on the test split (the heads chosen on validation)."""
    from ..plotting import color

    n = context or max(r["context"] for r in result["rows"])
    got = far_keys_hidden(result, context=n)
    if not got:
        raise ValueError(f"{result['name']}: no row at {n} tokens has the far-key test")
    keys = sorted(got, key=lambda k: GROUPED.index(k[0]))
    test = all("test" in g for g in got.values())  # files recorded before the test split lack it
    fig, axes = figure(ncols=2 if test else 1, width=12.0 if test else 8.0)
    width = 0.8 / len(keys)

    def heads(which: str) -> str:  # seed 0's two heads
        return ",\n".join(f"L{a} h{b}" for a, b in got[keys[0]][which][0])

    found = [f"two found\nalone\n({heads('found_heads')})"] if test else []
    names = ["every\nhead", *[f"layer {i}'s\nheads" for i in range(len(got[keys[0]]["by_layer"]))],
             f"two\ngrafted\n({heads('heads')})", *found]
    for i, key in enumerate(keys):
        g = got[key]
        bars = [[g["all"], *g["by_layer"], g["these_heads"], *([g["found"]] if test else [])]]
        bars += [[g["test"]["all"], g["test"]["these_heads"], g["test"]["found"]]] if test else []
        for ax, values in zip(axes, bars):
            ax.bar([j + (i - len(keys) / 2 + 0.5) * width for j in range(len(values))], [100 * v for v in values],
                   width, color=color(key[0]), label=f"{key[0]}, {key[1]} steps (full FT: {pct(g['full_all'])} with "
                                                     f"every head's, {pct(g['full_these_heads'])} with the two heads')")
    axes[0].set_xticks(range(len(names)), names, fontsize=7)
    label_axes(axes[0], f"n = {n}: keys more than {HIDDEN.split()[1]} x n back hidden" + quick_note(result),
               "in which heads", "share of the gap to full FT closed (%)", legend=7)
    if test:
        axes[1].set_xticks(range(3), [names[0], names[-2], names[-1]], fontsize=7)
        label_axes(axes[1], "the test split (heads chosen on validation)", "in which heads",
                   "share of the gap to full FT closed (%)")
        axes[1].get_legend().remove()  # the left one's says which bar is which (and full FT's validation change)
    for ax in axes:
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(100, color="gray", ls=":", lw=0.8)
        ax.set_ylim(top=135)  # room for the legend above the bars
        ax.set_yticks(range(0, 101, 20))
    fig.tight_layout()
    return fig


def far_reading(result: dict, **match) -> dict:
    """{(setting, steps): sinks.far_reading averaged over the seeds} (`_by_setting`, the base included): "mass" and
    "change", layers x heads each; and for the grouped settings, where recorded, "grafted": {graft: the same two
    with that graft of full FT's weights (GRAFTS_INTO_FULL)} and "found_hidden": the same two with the far keys of
    the two heads found alone hidden in the forward pass (`_far_keys_hidden`)."""
    def both(xs: list) -> dict:
        return {f: _mean([x[f] for x in xs]) for f in ("mass", "change")}

    grafted = _by_setting(result, "far_reading_grafted", **match)
    hidden = {key: [x["far_reading"] for x in xs if "far_reading" in x]
              for key, xs in _by_setting(result, "far_keys_hidden", **match).items()}
    return {key: {**both(xs), **({} if key not in grafted else {
                "grafted": {g: both([x[g] for x in grafted[key]]) for g in grafted[key][0]}}),
                  **({"found_hidden": both(hidden[key])} if hidden.get(key) else {})}
            for key, xs in _by_setting(result, "far_reading", **match).items()}


def plot_far_reading(result: dict, context: int | None = None, heads: int = 4):
    """Why two heads of layer 1 cost most, at `context` (default the longest) and the longest budget, mean of the
    seeds. Left: for the `heads` heads whose far keys, hidden alone, close most of S2-Attn's gap, the share of their
    attention on the keys HIDDEN hides, over every query that has such keys, in the base with PI, full FT, the
    grouped models and S2-Attn with full FT's slow or fast rows of W_q and W_k (where recorded). Right: every head of
    each grouped model, that share minus full FT's against the share of the gap its hiding closes."""
    from ..plotting import color

    n = context or max(r["context"] for r in result["rows"])
    reading, hidden = far_reading(result, context=n), far_keys_hidden(result, context=n)
    long = max(k[1] for k in hidden)
    if ("s2", long) not in hidden or "by_head" not in hidden[("s2", long)] or ("full", long) not in reading:
        raise ValueError(f"{result['name']}: no row at {n} tokens has the far-key test by head and far_reading")
    closed = torch.tensor(hidden[("s2", long)]["by_head"])  # (layers, heads)
    top = [divmod(i, closed.shape[1]) for i in closed.flatten().argsort(descending=True)[:heads].tolist()]
    fig, (a, b) = figure()
    bars = [("base with PI", reading[("base+PI", 0)]["mass"], "gray", None)] if ("base+PI", 0) in reading else []
    bars += [(f"{s} {long}", reading[(s, long)]["mass"], color(s), None) for s in ("full", *GROUPED)
             if (s, long) in reading]
    hatch = {"slow": "//", "fast": ".."}  # S2-Attn with full FT's rows of W_q, W_k for those pairs
    bars += [(f"s2 + full FT's {g.split()[-2]} rows", x["mass"], color("s2"), hatch[g.split()[-2]])
             for g, x in reading[("s2", long)].get("grafted", {}).items() if "pairs" in g]
    width = 0.8 / len(bars)
    for i, (label, mass, c, pattern) in enumerate(bars):
        a.bar([j + (i - len(bars) / 2 + 0.5) * width for j in range(len(top))],
              [100 * mass[layer][head] for layer, head in top], width, color="white" if pattern else c,
              edgecolor=c, hatch=pattern, label=label)
    a.set_xticks(range(len(top)), [f"layer {layer}\nhead {head}" for layer, head in top], fontsize=8)
    label_axes(a, f"n = {n}: attention on keys more than {HIDDEN.split()[1]} x n back" + quick_note(result),
               "the heads whose hiding closes most", "attention there (%)", legend=7)
    full = torch.tensor(reading[("full", long)]["mass"])
    for setting in (s for s in GROUPED if (s, long) in hidden and "by_head" in hidden[(s, long)]):
        more = 100 * (torch.tensor(reading[(setting, long)]["mass"]) - full).flatten()
        b.scatter(more, 100 * torch.tensor(hidden[(setting, long)]["by_head"]).flatten(), s=18, alpha=0.8,
                  color=color(setting), label=f"{setting} {long} steps, a dot per head")
    for layer, head in top:
        b.annotate(f"L{layer} h{head}", (100 * (reading[("s2", long)]["mass"][layer][head] - full[layer, head]),
                                         100 * closed[layer, head]), fontsize=7, xytext=(4, -3),
                   textcoords="offset points")
    b.axhline(0, color="k", lw=0.8)
    b.margins(x=0.12)  # room for the labels of the rightmost heads
    label_axes(b, "a head's cost against how much further than full FT it reads",
               "attention beyond the window minus full FT's (points)", "share of the gap closed hiding it (%)",
               legend=7)
    fig.tight_layout()
    return fig


def plot_rotary_phase(result: dict, context: int | None = None, heads: int = 2, theta: float = 10000.0):
    """Where each model's window lies on the slow frequency's cosine, at `context` (default the longest), for the
    `heads` heads whose phase S2-Attn moved furthest from full FT's (magnitude x angle, longer budget): that
    frequency's mean part of a score against key distance, magnitude · cos(θΔ + phase) (`sinks.rotary_phase`; pair
    d/4 turns theta^(-1/2) radians per base position, divided by the interpolation), mean of the seeds' magnitudes and
    phases, for the base with PI, full FT, short attention and S2-Attn. Shaded: the distances a training group holds."""
    from ..plotting import color

    rs = result["rows"]
    n = context or max(r["context"] for r in rs)
    got = _by_setting(result, "rotary_phase", context=n)
    if not got:
        raise ValueError(f"{result['name']}: no row at {n} tokens has its rotary phase")
    long = max(k[1] for k in got)

    def average(key):  # the seeds' mean magnitude (layers, heads) and circular mean phase
        xs = got[key]
        mag = torch.tensor([x["magnitude"] for x in xs]).mean(0)
        phase = torch.tensor([x["phase"] for x in xs])
        return mag, torch.atan2(phase.sin().mean(0), phase.cos().mean(0))

    per = {key: average(key) for key in got}
    (mf, pf), (ms, ps) = per[("full", long)], per[("s2", long)]
    moved = (ms * torch.remainder(ps - pf + math.pi, 2 * math.pi).sub(math.pi).abs()).flatten()
    order = moved.argsort(descending=True)[:heads].tolist()
    per_token = theta ** -0.5 / (n / result["settings"]["base_context"])
    group = max(r["group_size"] or 0 for r in rs if r["context"] == n)
    dist = torch.arange(0, n, max(1, n // 256), dtype=torch.float64)
    fig, axes = figure(ncols=heads)
    series = [("base+PI", 0, "gray", "base+PI")] + [(s, long, color(s), f"{s} {long}") for s in T1_BUDGET_SETTINGS]
    for ax, flat in zip(axes, order):
        layer, head = divmod(flat, mf.shape[1])
        for setting, steps, c, label in (x for x in series if (x[0], x[1]) in per):
            mag, phase = per[(setting, steps)]
            ax.plot(dist, mag[layer, head] * torch.cos(per_token * dist + phase[layer, head]), color=c,
                    ls="--" if setting == "base+PI" else "-", label=f"{label} (phase {phase[layer, head]:.2f})")
        ax.axvspan(0, group, color="gray", alpha=0.12, lw=0)
        ax.axvline(FAR_BINS * n / 16, color="gray", ls=":", lw=0.8)
        label_axes(ax, f"n = {n}, layer {layer} head {head}: shaded, a training group" + quick_note(result),
                   "key distance Δ (tokens)", "slow frequency's part of the score", legend=7)
    fig.tight_layout()
    return fig


def _phase_text(rs: list[dict], n: int, long: int) -> str:
    """The phase test's part of the verdict at one context and budget: the shares of the gap closed (t = 1, 2), the
    own pattern's change, the layer that carries most, full FT turned onto S2-Attn's phases, and S2-Attn turned back
    onto the base's."""
    got = phase_turned({"rows": rs}, context=n, steps=long)
    if ("s2", long) not in got:
        return ""
    s2 = got[("s2", long)]
    layer = max(range(len(s2["by_layer"])), key=lambda i: s2["by_layer"][i])
    text = (f"; turning S2-Attn's slow-frequency query phases onto full FT's (one angle per head, no training) closes "
            f"{100 * s2['closed'][1]:.0f}% of its gap at {long} steps, twice as far {100 * s2['closed'][2]:.0f}% "
            f"(layer {layer} alone {100 * s2['by_layer'][layer]:.0f}%), while its own pattern changes by "
            f"{pct(s2['own_change'][1])} / {pct(s2['own_change'][2])}")
    if ("short", long) in got:
        text += f" (the short-attention model: {100 * got[('short', long)]['closed'][1]:.0f}%)"
    text += f"; full FT turned onto S2-Attn's phases: {pct(s2['full_change'][0])}"
    if "base_closed" in s2:  # files recorded since the repair onto the base's phases was added
        text += (f"; S2-Attn turned back onto the base's phases instead (no full-attention model needed) closes "
                 f"{100 * s2['base_closed'][0]:.0f}%, its own pattern {pct(s2['base_own_change'][0])}")
    if "slow_closed" in s2:  # files recorded since the three slow pairs were added
        text += (f"; that pair and its two neighbours turned onto full FT's phases at once close "
                 f"{100 * s2['slow_closed'][0]:.0f}%, its own pattern {pct(s2['slow_own_change'][0])}")
    return text


def _graft_text(rs: list[dict], n: int, long: int) -> str:
    """The graft test's part of the verdict at one context and budget: the share of S2-Attn's gap closed by each of
    full FT's weights put in its place (and by W_q and W_k of the layer that closes most, and of its two heads that
    close most, where recorded), opened in full FT by S2-Attn's W_q and W_k, and closed by hiding the far keys from
    two heads (`far_keys_hidden`, where recorded)."""
    got = grafted({"rows": rs}, context=n, steps=long).get(("s2", long))
    if got is None:  # files recorded before the graft test
        return ""
    closed, opened = got["closed"], got["opened"]
    where = ""
    if "by_layer" in got:  # files recorded since the test by layer was added
        layer = max(range(len(got["by_layer"])), key=lambda i: got["by_layer"][i])
        where = f"; layer {layer}'s alone {100 * got['by_layer'][layer]:.0f}%"
        if "by_head" in got:
            first, second = sorted(range(len(got["by_head"][layer])), key=lambda h: -got["by_head"][layer][h])[:2]
            where += (f", its head {first} alone {100 * got['by_head'][layer][first]:.0f}%, head {second} "
                      f"{100 * got['by_head'][layer][second]:.0f}%")
    hidden, far = far_keys_hidden({"rows": rs}, context=n, steps=long).get(("s2", long)), ""
    if hidden is not None:  # files recorded since the far-key test was added
        far = (f"; hiding the keys more than {HIDDEN.split()[1]} x n back from the two heads whose graft closes most "
               f"closes {100 * hidden['these_heads']:.0f}% (from every head {100 * hidden['all']:.0f}%; full FT "
               f"{pct(hidden['full_these_heads'])} / {pct(hidden['full_all'])})")
    if hidden is not None and "found_heads" in hidden:  # files recorded since the heads were found without full FT
        same = sum(a == b for a, b in zip(hidden["found_heads"], hidden["heads"]))
        far += (f"; without a full-attention model, the two heads whose own hiding closes most (the same two in "
                f"{same} of {len(hidden['heads'])} seeds) close {100 * hidden['found']:.0f}%; on the test split, "
                f"heads chosen on validation: {100 * hidden['test']['found']:.0f}% (the grafted two "
                f"{100 * hidden['test']['these_heads']:.0f}%, every head {100 * hidden['test']['all']:.0f}%)")
    reading = far_reading({"rows": rs}, context=n)
    if hidden is not None and ("s2", long) in reading and ("full", long) in reading:  # since far_reading was added
        two = hidden["heads"][0]  # seed 0's two heads (the verdict names them)
        mass = {s: [100 * reading[(s, long)]["mass"][a][b] for a, b in two] for s in ("s2", "full")}
        far += (f"; over every query with such keys, layer {two[0][0]}'s head {two[0][1]} and layer {two[1][0]}'s "
                f"head {two[1][1]} put {mass['s2'][0]:.0f}% and {mass['s2'][1]:.0f}% of their attention there (full "
                f"FT {mass['full'][0]:.0f}% / {mass['full'][1]:.0f}%)")
    return (f"; grafting full FT's weights into S2-Attn (same seed) closes {100 * closed['W_q, W_k']:.0f}% of its gap "
            f"with W_q and W_k ({100 * closed['W_q, W_k slow pairs']:.0f}% with their slow pairs' rows only, "
            f"{100 * closed['W_q, W_k fast pairs']:.0f}% with the fast pairs' only{where}), "
            f"{100 * closed['W_v, W_o']:.0f}% with W_v and W_o, {100 * closed['outside attention']:.0f}% with every "
            f"weight outside attention; S2-Attn's W_q and W_k in full FT open {100 * opened['W_q, W_k']:.0f}% of it "
            f"(the slow pairs' rows only {100 * opened['W_q, W_k slow pairs']:.0f}%, the fast pairs' "
            f"{100 * opened['W_q, W_k fast pairs']:.0f}%){far}")


def _at(rs: list[dict], n: int, short: int, long: int) -> str:
    """One context's part of the verdict: S2-Attn against full FT at each budget, full FT's gain from the longer
    budget, and whether S2-Attn's per-seed gap changes with it."""
    parts = []
    for steps in (short, long):
        gap = _gaps(rs, steps, n)
        vs = versus(rs, {"setting": "s2", "steps": steps, "context": n},
                    {"setting": "full", "steps": steps, "context": n})
        parts.append(f"at {steps} steps S2-Attn {pct(sum(gap) / len(gap))} ({than(vs, 'full FT')}; full FT "
                     f"{mean(rs, 'ppl', setting='full', steps=steps, context=n):.3f})")
    full_gain = versus(rs, {"setting": "full", "steps": long, "context": n},
                       {"setting": "full", "steps": short, "context": n})
    change = resolve(_gaps(rs, long, n), _gaps(rs, short, n))
    outcome = {"lower": "S2-Attn's gap shrinks with the longer budget",
               "higher": "S2-Attn's gap grows with the longer budget",
               "not resolved": "the longer budget does not resolve a change in S2-Attn's gap"}[change]
    own = [mean(rs, "ppl_own_pattern", setting="s2", steps=x, context=n) for x in (short, long)]
    if None not in own:  # files made before the own-pattern test lack it
        own_change = versus(rs, {"setting": "s2", "steps": long, "context": n},
                            {"setting": "s2", "steps": short, "context": n}, "ppl_own_pattern")
        outcome += (f" (S2-Attn tested with its own pattern: {own[0]:.3f} → {own[1]:.3f}, "
                    f"{than(own_change, f'at {short}')})")
    if any(r["setting"] == "short" and r["context"] == n for r in rs):  # files made before short was added lack it
        gaps = [_gaps(rs, x, n, "short") for x in (short, long)]
        s2_short = versus(rs, {"setting": "s2", "steps": long, "context": n},
                          {"setting": "short", "steps": long, "context": n})
        outcome += (f"; short attention {pct(sum(gaps[0]) / len(gaps[0]))} → {pct(sum(gaps[1]) / len(gaps[1]))} "
                    f"({than(resolve(gaps[1], gaps[0]), f'at {short}')}), S2-Attn at {long} steps "
                    f"{than(s2_short, 'short')}")
    return (f"{n} tokens: " + "; ".join(parts) + f"; full FT at {long} steps {than(full_gain, f'at {short}')}: "
            f"{outcome}" + _phase_text(rs, n, long) + _graft_text(rs, n, long))


def verdict(result: dict, rows_: list[dict]) -> str:
    """Under the verdict rule (compare.resolve), at each context: S2-Attn against full-attention FT at each budget,
    full FT's gain from the longer budget, S2-Attn's per-seed gap at the longer budget against the shorter one,
    S2-Attn tested with its own pattern at the longer budget against the shorter one, short attention's gap at
    both budgets and against S2-Attn at the longer one, and the phase and graft tests at the longer budget
    (`_phase_text`, `_graft_text`)."""
    rs = result["rows"]
    short, long = min(r["steps"] for r in rs), max(r["steps"] for r in rs)
    contexts = sorted({r["context"] for r in rs})
    paper = ", ".join(f"{pct(PAPER_PPL['s2'][i] / PAPER_PPL['full'][i] - 1)} at {4096 * f}"
                      for i, f in ((1, 4), (2, 8)))
    return (f"Table 1 by budget (not in the paper; past the regime's token cap; {seeds_text(result)}; {RULE}): "
            + " | ".join(_at(rs, n, short, long) for n in contexts)
            + f" (the paper, 1000 steps: S2-Attn {paper}).")
