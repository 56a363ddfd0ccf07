"""The paper's ablations at CPU scale, one JSON per table: `python -m minilongllora reproduce NAME [--quick]`.

    table1   full-attention FT vs short attention (pattern 1 only) vs S2-Attn, at 2x / 4x / 8x the base's context
             (and the starting point, "base+PI": the base with the interpolation, before fine-tuning, kept apart
             from the table's rows under "starting_point")
    table1_lr  (not in the paper) Table 1 at 4x under learning rates 2.5e-5 … 1e-3 (a quarter of the regime's to the
             base's peak), short and S2-Attn also tested with their own pattern: does S2-Attn's gap to full attention
             depend on how far fine-tuning moves, and does S2-Attn close short attention's gap at lower rates?
    table1_window  (not in the paper) table1's three models at 4x tested with a sliding window of n/8, n/4, n/2 and
             with full attention: which keys break the grouped models when they are tested with full attention?
    table1_from_full  (not in the paper) table1's three settings at 4x and 8x trained 400 steps more from
             full-attention FT's model instead of the base: does training in groups keep long context where the model
             no longer has to recover from the interpolation?
    table1_from_full_budget  (not in the paper) table1_from_full's 8x continuations with 400 and 800 steps: do the
             800 grouped steps that break the model from the base (table1_budget) break one that reads the window?
    table1_budget  (not in the paper) table1's three settings at 4x and 8x with the regime's 400 steps and with 800
             (past the 5% token cap, on purpose): does S2-Attn's gap shrink once full attention flattens? And a
             look inside the models: the loss by position with the interpolation stretched, attention by distance
             head by head, each rotary frequency's part of a far key's score, the phase test (the slow
             frequency's query phases turned onto full FT's, tested with full attention and the own pattern) and
             the graft test (which of full FT's weights repair a grouped model, which of its weights break full FT)
    table1_sink  (not in the paper, issue 16) Table 1 at 2x and 8x with short_sink, s2_sink, S2-Attn + every k-th
             step full (k chosen on validation), S2-Attn + growing groups; FLOPs relative to full attention; Table
             1's models tested with the first tokens or the far keys hidden, and their attention on the first tokens
    table2   full FT vs LoRA r = 8, 16, 32, 64 vs LoRA r=8 + norm / + embed / + norm & embed, S2-Attn, at 8x;
             not in the paper, LoRA and LoRA+ at ten times the rate, LoRA+ at 2.5 and 5 times it, and full FT and
             LoRA+ trained with full attention at those rates: is LoRA+'s gap LoRA's or S2-Attn's?
    table6   attention patterns (S2 across heads / layers, only P1, only P2, dilated, block / stride sparse) at 8x,
             each tested with its own pattern and with full attention
    table7   S2-Attn group sizes 1/2, 1/4, 1/6, 1/8 of the target, and full attention, at 3x (768 tokens: the
             smallest multiple where all four are even divisors, 384 / 192 / 128 / 96)
    table8   S2-Attn variants roll (Algorithm 1), roll_up (Var 1), split (Var 2), swap (Var 3), and full attention,
             at 2x
    table11  the FLOPs of Llama-2-7B by kind at 8192 … 65536 tokens, full attention vs S2-Attn (seconds, no training)
    figure4  passkey retrieval against length: the base and the 8x LoRA+ model, each with and without "extended PI",
             with the code prompt the base retrieves from and with the paper's; not in the paper, the 8x full-FT
             model, and it fine-tuned with the base's 2% of passkey documents
    figure5  validation perplexity against fine-tuning steps: full FT vs LoRA+, S2-Attn, at 2x; not in the paper,
             LoRA+ at ten times the rate, with S2-Attn and with full attention

Everything starts from one base model (default `data/tiny-base`: the byte-level `tiny` LLaMA, 3,295,488 parameters
with the embedding, pretrained at L = 256 tokens by the `pretrain-tiny` recipe) and the shipped pystdlib corpus
(train split for fine-tuning, validation split for every number, the test split reported beside it). Each row is a
context-extension fine-tuning run with linear position interpolation by (target / L), then evaluated with full
attention (as the paper tests) unless the table says otherwise. The contexts are the paper's as multiples of the
base's: its 8192 / 16384 / 32768 are 2x / 4x / 8x Llama 2's 4096, ours 512 / 1024 / 2048; each table at the multiple
of its own in the paper (Tables 2 and 6 and Figure 4 at 32k = 8x, Table 8 and Figure 5 at 8k = 2x, Table 7 at 3x
where its four groups divide).

Metrics of every row (validation split, full attention):
* `ppl`: strided sliding-window perplexity (stride 256, every token scored once; `evaluate.perplexity`, the
  project's standard and the paper's S = 256) over the first `ppl_windows` windows of the validation documents.
* `ppl_last_quarter`: exp of the mean loss at the last quarter of window positions (tokens 3n/4 … n−1, predicted
  from at least 3n/4 tokens of context; `evaluate.position_loss`) over the first n tokens of each of the first
  `lq_documents` validation documents. PILOT.md found the effect of short attention there: 11% at the last quarter,
  4% over all tokens. `loss_quarters` gives the mean loss of each quarter of the window, `loss_bins` of each 16th.
* `ppl_test`, `ppl_last_quarter_test`: the same two on the test split (`Runner.test_split`), never read to choose a
  setting: the regime's settings were fixed once on validation (plan.py), and every table reports the test split too
  (compare's `ours_test`, `ours_test_rel`, and `test_vs_ref`, the verdict rule against the reference row on the test
  split; `on_test` says in each verdict whether the test split resolves each comparison as validation does). Table 1,
  2, 6, 7, 8 rows and Figure 5's final models; the diagnostics table1_lr and table1_window stay on validation.
* Every run also logs its validation perplexity every steps/10 steps (train's `val_window_ppl`: the whole-window mean
  over the first `eval_windows` packed validation windows, 8192 tokens; `val_ppl` in records made before its rename),
  kept under settings.runs[KEY].curve: the recovery from interpolation, and Figure 5's curves.

The regime (plan.py; every results file records it under settings.regime, with the steps of its runs and its largest
run's token ratio): fine-tuning small beside the base's own pretraining, as the paper's (about 0.03% of Llama 2's
tokens at 1/15 of its peak learning rate). Every run: 4096 tokens per step (8 x 512, 4 x 1024, 2 x 2048, 5 x 768),
STEPS = 400 optimizer steps (1.64M tokens, 4.8% of the tiny base's 34.4M: at most 5%), learning rate 1e-4 for every
method (a tenth of the base's peak 1e-3: at most a tenth; one rate for all, as the paper's 2e-5), AdamW β = (0.9,
0.95), weight decay 0, 20 warmup steps then constant (the paper's), clip 1.0, bf16 autocast (`PRECISION`;
`--precision fp32` for fp32). Identical settings in different tables are the same run (table1's s2 at 2x is table8's
split and Figure 5's full FT; table2's full FT is table1's s2 at 8x, its full FT with full attention table1's full at
8x). Seeds 0 … N−1 (`--seeds N`, default 1) change the data order and the LoRA initialisation; each seed is its own
row, `summary` gives mean and std over seeds, and a verdict calls two rows different only when their means differ by
more than twice the larger standard error (`compare.resolve`), "not resolved" otherwise.

Estimated full-run times, 1 seed, 2 quiet cores, bf16 (train + evaluation; the model from measured fp32 tokens/s:
8,000 tok/s at 1024 with S2 + LoRA+, 7,000 at 256 with full FT, divided by BF16_SPEEDUP; see `cost.py`). "alone"
starts from an empty cache; "in order" runs the tables in the order listed, each reusing the runs of the ones before:

    table                      alone   in order   runs (new in order)
    table1                     24 min   24 min     9 (9)
    table1_lr                  43 min   36 min     18 (15)
    table1_window               8 min    1 min     3 (0)
    table1_from_full           32 min   16 min     12 (6)
    table1_from_full_budget    30 min   18 min     7 (3)
    table1_budget              88 min   71 min     12 (6)
    table1_sink                47 min   31 min     16 (10)
    table8                     11 min    6 min     5 (3)
    figure5                     7 min    5 min     4 (3)
    table6                     19 min   19 min     7 (7)
    table2                     49 min   40 min     18 (15)
    figure4                     8 min    4 min     3 (1)
    table7                     11 min   11 min     5 (5)
    table11                     0 min    0 min     0 (0)
    all                               ~ 4 h 42 min  (83 runs, most of 1.6M tokens; N seeds: about N times as long)

`--quick` runs every table with 2 steps of 1 sequence at contexts of 2 x 64 … 16 x 64 tokens (PI by context / L
where that is above 1), 2 evaluation windows, 1 document, 1 passkey trial at 2 lengths: the mechanics in seconds
(about 10 s for table1 with the tiny base on one thread), numbers meaningless; the JSON says "quick": true and goes
to NAME.quick.json, so it never overwrites a full result.

Cache. Runs live in `--cache-dir` (default runs/reproduce) under the hash of their exact TrainConfig, the base's
weights and the package's source code (runner.py): a code change never reuses a stale run.

Layout: plan.py (the budget, `Plan`), runner.py (training and evaluation, cached), record.py (the results file),
compare.py and curves.py (what the tables share to compare and plot), cost.py (the time estimate above), results.py
(the notebooks' reading API), and one module per table holding its plan (`rows`), the paper's numbers (`PAPER`), its
comparison, plot and verdict. The lesson (model, attention, training) never imports this subpackage.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import UserInputError
from . import (figure4, figure5, table1, table1_budget, table1_from_full, table1_from_full_budget, table1_lr,
               table1_sink, table1_window, table2, table6, table7, table8, table11)
from .figure4 import EXTENDED_PI, MIN_PASSKEY_TOKENS, passkey_lengths  # noqa: F401
from .plan import (CURVE_POINTS, CURVE_TOKENS, DEFAULT_BASE, DEFAULT_CACHE, LOSS_BINS, LQ_DOCUMENTS,  # noqa: F401
                   LR, PASSKEY_TRIALS, PPL_WINDOWS, PRECISION, QUICK, QUICK_UNIT, SAVE_EVERY, STEPS, STRIDE,
                   TOKENS_PER_STEP, WARMUP_STEPS, Plan, continued_from, group_size_for)
from .record import command_line, git_commit, machine, per_context, result_path, summarize
from .table1_budget import T1_BUDGET_FACTORS, T1_BUDGET_SETTINGS, T1_BUDGETS  # noqa: F401
from .table1_lr import T1_LR  # noqa: F401
from .table1_window import T1_WINDOWS  # noqa: F401
from .table2 import T2_SETTINGS  # noqa: F401
from .table6 import T6_NAMES, T6_PATTERNS  # noqa: F401
from .table7 import T7_FACTOR, T7_FRACTIONS  # noqa: F401
from .table8 import T8_VARIANTS  # noqa: F401
from .table11 import T11_CONTEXTS  # noqa: F401

TABLES = {m.NAME: m for m in (table1, table2, table6, table7, table8, table11, figure4, figure5, table1_lr,
                              table1_window, table1_budget, table1_sink, table1_from_full, table1_from_full_budget)}
RUN_ORDER = ("table1", "table1_lr", "table1_window", "table1_from_full", "table1_from_full_budget", "table1_budget",
             "table1_sink", "table8", "figure5", "table6", "table2", "figure4", "table7",
             "table11")  # those that reuse most first
DESCRIPTIONS = {name: m.DESCRIPTION for name, m in TABLES.items()}
ID_FIELDS = {name: m.ID_FIELDS for name, m in TABLES.items()}
PAPER = {name: m.PAPER for name, m in TABLES.items()}


def estimate_text(seeds: int = 1) -> str:
    """The time estimate of every table (the table in this docstring), from the cost model of cost.py."""
    from .cost import estimate_text

    return estimate_text(seeds)


def _plan_and_runner(name: str, base: str, quick: bool, precision: str, cache_dir):
    """The plan (base model, its context) and the runner of a table; table11 needs neither model nor runner."""
    from ..config import LlamaConfig
    from .runner import Runner

    if name == "table11":  # no model involved
        return Plan.make(base, 256, quick), None
    if not (Path(base) / "config.json").is_file():
        raise FileNotFoundError(f"no base model at {base} (a Hugging Face directory; make it with `python -m "
                                f"minilongllora pretrain` and `export runs/pretrain-tiny --out {base}`)")
    plan = Plan.make(base, LlamaConfig.from_hf(base).max_seq_len, quick, precision)
    return plan, Runner(plan, cache_dir)


def reproduce(name: str, *, quick: bool = False, seeds: int = 1, out: str | Path = "notebooks/results",
              base: str | None = None, cache_dir: str | Path | None = None, precision: str = PRECISION) -> dict:
    """Run table or figure `name` (one of TABLES) and write OUT/NAME.json (OUT/NAME.quick.json with quick=True).
    Returns the written dict: name, quick, description, command, argv, git_commit, started, seconds, machine,
    settings (base, budget, evaluation, train_configs, runs), paper, rows, summary (and table1's starting_point: the
    base with each context's interpolation, before fine-tuning)."""
    from ..files import write_json
    from .cost import estimate_seconds
    from .record import jsonable

    if name not in TABLES:
        raise UserInputError(f"unknown table {name!r}; choose one of {', '.join(TABLES)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise UserInputError(f"--seeds must be a positive integer, got {seeds!r}")
    base, cache_dir = base or DEFAULT_BASE, cache_dir or DEFAULT_CACHE
    started, t0, commit = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.time(), git_commit()  # the code it starts with
    plan, runner = _plan_and_runner(name, base, quick, precision, cache_dir)
    print(f"reproduce {name}{' (quick)' if quick else ''}: {DESCRIPTIONS[name]}; base {base} "
          f"(context {plan.base_context}), seeds 0..{seeds - 1}", flush=True)
    rows = TABLES[name].rows(plan, runner, list(range(seeds)))
    start = [r for r in rows if r.get("setting") == "base+PI"]  # the starting point: not a row of the table
    selection = [r for r in rows if r.get("selection")]  # table1_sink's candidates, chosen among on validation
    rows = [r for r in rows if r.get("setting") != "base+PI" and not r.get("selection")]
    seconds = round(time.time() - t0, 1)
    runs = runner.runs if runner is not None else {}
    estimate = None if quick else round(estimate_seconds((name,), seeds=seeds, base_context=plan.base_context)[name]
                                        ["alone"], 1)
    result = {
        "name": name, "quick": quick, "description": DESCRIPTIONS[name],
        "command": command_line(name, quick, seeds, out, base, cache_dir), "argv": list(sys.argv),
        "git_commit": commit, "started": started, "seconds": seconds, "machine": machine(),
        "settings": _settings(plan, runs, seeds, cache_dir, seconds, estimate),
        "paper": {**PAPER[name], "label": "the paper's numbers (Llama2 7B), copied from PAPER.md; not ours"},
        "rows": rows,
        "summary": summarize(ID_FIELDS[name], rows),
        **({"starting_point": start} if start else {}),
        **({"selection": selection} if selection else {}),
    }
    path = result_path(out, name, quick)
    write_json(path, result, default=jsonable)
    print(f"wrote {path} ({len(rows)} rows, {seconds:.0f} s)", flush=True)
    return result


def _max_run_token_ratio(plan: Plan, runs: dict) -> float | None:
    """The largest run's fine-tuning tokens over the base's pretraining tokens, counting those of the run it continues
    where its base is another run's final model (the regime caps it at 5%; only the diagnostics past the cap on
    purpose, table1_budget, table1_from_full and table1_from_full_budget, exceed it)."""
    pre = plan.regime()["base_pretraining_tokens"]

    def tokens(r):
        start = continued_from(r["config"])
        return r["tokens"] + (runs[start]["tokens"] if start in runs else 0)

    return max(tokens(r) for r in runs.values()) / pre if pre and runs else None


def _settings(plan: Plan, runs: dict, seeds: int, cache_dir, seconds: float, estimate: float | None) -> dict:
    return {
        "base": plan.base, "base_context": plan.base_context, "context_unit": plan.context(1),
        "regime": {**plan.regime(), "contexts_x_base": sorted({r["config"]["seq_len"] / plan.base_context
                                                               for r in runs.values()}),
                   "steps_of_runs": sorted({r["config"]["steps"] for r in runs.values()}),  # past the cap: >1 budget
                   "max_run_token_ratio": _max_run_token_ratio(plan, runs)},
        "seeds": list(range(seeds)), "cache_dir": str(cache_dir),
        "budget": {**plan.budget(), "per_context": per_context(runs), "runs": len(runs),
                   "tokens_all_runs": sum(r["tokens"] for r in runs.values()),
                   "train_seconds_all_runs": round(sum(r["train_seconds"] for r in runs.values()), 1),
                   "train_seconds_new_runs": round(sum(r["train_seconds"] for r in runs.values() if not r["reused"]),
                                                   1),
                   "wall_seconds": seconds, "estimated_seconds_alone": estimate},
        "evaluation": plan.evaluation(),
        "train_configs": [{"run": k, **r["config"]} for k, r in runs.items()],
        "runs": {k: {f: v for f, v in r.items() if f != "config"} for k, r in runs.items()},
    }
