"""The paper's ablations at CPU scale, one JSON per table: `python -m minilongllora reproduce NAME [--quick]`.

    table1   full-attention FT vs short attention (pattern 1 only) vs S2-Attn, at 4x / 8x / 16x the base's context
             (and the starting point, "base+PI": the base with the interpolation, before fine-tuning, kept apart
             from the table's rows under "starting_point")
    table1_lr  (not in the paper) Table 1 at 4x under learning rates 1e-4, 2.5e-4, 5e-4, 1e-3, short and S2-Attn also
             tested with their own pattern: does S2-Attn's gap to full attention depend on how far fine-tuning moves?
    table1_window  (not in the paper) table1's three models at 4x tested with a sliding window of n/8, n/4, n/2 and
             with full attention: which keys break the grouped models when they are tested with full attention?
    table2   full FT vs LoRA r = 8, 16, 32, 64 vs LoRA r=8 + norm / + embed / + norm & embed, S2-Attn, at 16x
    table6   attention patterns (S2 across heads / layers, only P1, only P2, dilated, block / stride sparse) at 4x,
             each tested with its own pattern and with full attention
    table7   S2-Attn group sizes 1/2, 1/4, 1/6, 1/8 of the target, and full attention, at 6x (1536 tokens: there
             all four are even divisors, 768 / 384 / 256 / 192; at 4x the nearest valid 1/6 group would be 128 = 1/8)
    table8   S2-Attn variants roll (Algorithm 1), roll_up (Var 1), split (Var 2), swap (Var 3), and full attention,
             at 4x
    table11  the FLOPs of Llama-2-7B by kind at 8192 … 65536 tokens, full attention vs S2-Attn (seconds, no training)
    figure4  passkey retrieval against length: the base and the 16x model, each with and without "extended PI"
    figure5  validation perplexity against fine-tuning steps: full FT vs LoRA+, S2-Attn, at 4x

Everything starts from one base model (default `data/tiny-base`: the byte-level `tiny` LLaMA, 3.4M parameters,
pretrained at L = 256 tokens by the `pretrain-tiny` recipe) and the shipped pystdlib corpus (train split for
fine-tuning, validation split for every number). Each row is a context-extension fine-tuning run with linear
position interpolation by (target / L), then evaluated with full attention (as the paper tests) unless the table
says otherwise. The paper's contexts 8192 / 16384 / 32768 are 2x / 4x / 8x Llama-2's 4096; ours are 4x / 8x / 16x of
256 (1024 / 2048 / 4096 tokens), so that the short groups of the longest target still hold 1024 tokens.

Metrics of every row (validation split, full attention):
* `ppl`: strided sliding-window perplexity (stride 256, every token scored once; `evaluate.perplexity`, the
  project's standard and the paper's S = 256) over the first `ppl_windows` windows of the validation documents.
* `ppl_last_quarter`: exp of the mean loss at the last quarter of window positions (tokens 3n/4 … n−1, predicted
  from at least 3n/4 tokens of context; `evaluate.position_loss`) over the first n tokens of each of the first
  `lq_documents` validation documents. PILOT.md found the effect of short attention there: 11% at the last quarter,
  4% over all tokens. `loss_quarters` gives the mean loss of each quarter of the window, `loss_bins` of each 16th.
* Every run also logs its validation perplexity every steps/10 steps (train's `val_ppl`: the whole-window mean over
  the first `eval_windows` packed validation windows, 8192 tokens), kept under settings.runs[KEY].curve: the
  recovery from interpolation, and Figure 5's curves.

Budget (one for every table, so identical settings in different tables are the same run: table1's s2 at 4x is
table8's split and Figure 5's full FT, table6's s2 is Figure 5's LoRA+, table2's full FT is table1's s2 at 16x, and
Figure 4's model is table2's LoRA+). Every run: 4096 tokens per step (4 x 1024, 2 x 2048, 1 x 4096, 3 x 1536),
STEPS = 250 optimizer steps (1.0M tokens, 1/7 epoch of the train split; PILOT.md's 0.6M at lr 2e-4 did not recover
the base's own-context quality, so this is 1.7x the tokens at 5x the rate), AdamW β = (0.9, 0.95), weight decay 0,
20 warmup steps then constant, clip 1.0, bf16 autocast (`PRECISION`; `--precision fp32` for fp32). Learning rate 1e-3 for every method, full fine-tuning, LoRA and LoRA+
alike, as the paper uses one rate (2e-5) for all: the base's pretraining rate, constant to its end, so fine-tuning
continues at the rate the base finished with (the `extend-tiny-4x` recipe uses 5e-4: see recipes.py for why; table1_lr
repeats Table 1 at 4x with 1e-4, 2.5e-4 and 5e-4). Seeds 0 … N−1 (`--seeds N`, default 1) change the data order and the
LoRA initialisation; each seed is its own row, `summary` gives mean and std over seeds.

Estimated full-run times, 1 seed, 2 quiet cores, bf16 (train + evaluation; the model from measured fp32 tokens/s:
8,000 tok/s at 1024 with S2 + LoRA+, 7,000 at 256 with full FT, divided by BF16_SPEEDUP; see `estimate_seconds`). "alone" starts from an empty cache;
"in order" runs the tables in the order listed, each reusing the runs of the ones before:

    table          alone   in order   runs (new in order)
    table1          20 min   20 min     9 (9)
    table1_lr       19 min   15 min     12 (9)
    table1_window    5 min    1 min     3 (0)
    table8           8 min    4 min     5 (3)
    figure5          3 min    1 min     2 (1)
    table6          10 min    8 min     7 (6)
    table2          17 min   15 min     8 (7)
    figure4          5 min    3 min     1 (0)
    table7           9 min    9 min     5 (5)
    table11          0 min    0 min     0 (0)
    all                   ~ 1 h 16 min  (40 runs of 1.0M tokens; N seeds: about N times as long)

`--quick` runs every table with 2 steps of 1 sequence at contexts of 4 x 64 … 16 x 64 tokens (PI by context / L
where that is above 1), 2 evaluation windows, 1 document, 1 passkey trial at 2 lengths: the mechanics in seconds
(about 10 s for table1 with the tiny base on one thread), numbers meaningless; the JSON says "quick": true and goes
to NAME.quick.json, so it never overwrites a full result.

Cache. Runs live in `--cache-dir` (default runs/reproduce) under the hash of their exact TrainConfig (out_dir
aside) and the base's weights; a finished run (its result.json) is reused, an interrupted one resumes from its
checkpoint (saved every 50 steps); evaluations are cached beside it (evals.json), keyed by their settings. Delete the
cache after changing the model or training code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import LlamaConfig
from .errors import UserInputError
from .paper import PAPER, T6_PATTERNS  # the paper's numbers (Llama2 7B), in our row fields
from .train import TrainConfig

TABLES = ("table1", "table2", "table6", "table7", "table8", "table11", "figure4", "figure5", "table1_lr",
          "table1_window")
RUN_ORDER = ("table1", "table1_lr", "table1_window", "table8", "figure5", "table6", "table2", "figure4",  # most reuse
             "table7", "table11")  # first
DEFAULT_BASE = "data/tiny-base"
DEFAULT_CACHE = "runs/reproduce"

# ---------------------------------------------------------------------------------------------------- the budget
STEPS = 250  # optimizer steps of every fine-tuning run
TOKENS_PER_STEP = 4096  # batch = round(4096 / context) sequences
WARMUP_STEPS = 20
LR = {"full": 1e-3, "lora": 1e-3, "lora_plus": 1e-3}  # one rate for every method, as the paper (2e-5 for all)
SAVE_EVERY = 50  # checkpoints, for resuming an interrupted run (they change nothing in the trained weights)
CURVE_POINTS = 10  # validation perplexity every STEPS / 10 steps
CURVE_TOKENS = 8192  # … over this many validation tokens (eval_windows = 8192 / context)
PPL_WINDOWS = 48  # sliding-window perplexity: the first 48 windows (stride 256) of the validation documents
LQ_DOCUMENTS = 24  # last-quarter perplexity: the first n tokens of the first 24 validation documents (all of them)
STRIDE = 256  # the paper's S
LOSS_BINS = 16  # the position-loss curve of every row, as the mean loss of 16 equal bins of window positions
PASSKEY_TRIALS = 10  # the paper's 10 trials per length
EXTENDED_PI = 1.5  # Figure 4's "extended PI": 32k -> 48k in the paper, the interpolation factor times 1.5

QUICK = dict(steps=2, tokens_per_step=1, warmup_steps=0, save_every=0, curve_every=1, curve_windows=1,
             ppl_windows=2, lq_documents=1, passkey_trials=1)
PRECISION = "bf16"  # CPU bf16 autocast: about 2x fp32 here; README: the same conclusions as fp32 (figure5, main job)
QUICK_UNIT = 64  # quick: contexts of 4 x 64 … 16 x 64 tokens whatever the base (PI by context / base context ≥ 1)
MIN_PASSKEY_TOKENS = 256  # the passkey prompt without filler is ~240 byte tokens


@dataclass(frozen=True)
class Plan:
    """Where the runs start (base model and its context L) and the budget every table shares."""

    base: str
    base_context: int
    quick: bool = False
    steps: int = STEPS
    tokens_per_step: int = TOKENS_PER_STEP
    warmup_steps: int = WARMUP_STEPS
    save_every: int = SAVE_EVERY
    curve_every: int = max(1, STEPS // CURVE_POINTS)
    curve_windows: int | None = None  # None: CURVE_TOKENS // context
    ppl_windows: int = PPL_WINDOWS
    lq_documents: int = LQ_DOCUMENTS
    passkey_trials: int = PASSKEY_TRIALS
    unit: int = 0  # contexts are factor x unit: the base's context, or at most QUICK_UNIT tokens with quick
    precision: str = PRECISION

    @classmethod
    def make(cls, base: str, base_context: int, quick: bool = False, precision: str = PRECISION) -> Plan:
        unit = min(base_context, QUICK_UNIT) if quick else base_context
        return cls(base=base, base_context=base_context, quick=quick, unit=unit, precision=precision,
                   **(QUICK if quick else {}))

    def context(self, factor: float) -> int:
        return int(round(factor * (self.unit or self.base_context)))

    def config(self, context: int, *, method: str = "full", attention: str = "s2", variant: str = "split",
               group_size: int | None = None, rank: int = 8, train_embed: bool = True, train_norm: bool = True,
               seed: int = 0, lr: float | None = None) -> TrainConfig:
        """The TrainConfig of one row: `context` tokens, PI by context / L, the shared budget."""
        ratio = 0.25
        if group_size is not None:  # an exact group: int(context * ratio) must give it back (TrainConfig's rule)
            ratio = group_size / context
            if int(context * ratio) != group_size:
                ratio = (group_size + 0.5) / context
        return TrainConfig(
            base=self.base, out_dir="", seq_len=context, steps=self.steps,
            batch_size=max(1, round(self.tokens_per_step / context)), grad_accum=1, lr=lr or LR[method],
            weight_decay=0.0, warmup_steps=self.warmup_steps, betas=(0.9, 0.95), clip=1.0, seed=seed, method=method,
            lora_r=rank, lora_alpha=16.0, lora_dropout=0.0, train_embed=train_embed, train_norm=train_norm,
            attention=attention, s2_variant=variant, group_size_ratio=ratio,
            rope_factor=max(1.0, context / self.base_context), gradient_checkpointing=False, precision=self.precision,
            data="pystdlib", save_every=self.save_every, eval_every=self.curve_every,
            eval_windows=self.curve_windows or max(1, CURVE_TOKENS // context), log_every=50, device="cpu")

    def budget(self) -> dict:
        return {"steps": self.steps, "target_tokens_per_step": self.tokens_per_step,
                "batch_size": "round(target_tokens_per_step / context) sequences, at least 1 (see per_context)",
                "warmup_steps": self.warmup_steps, "schedule": "linear warmup, then constant",
                "lr": dict(LR), "betas": [0.9, 0.95], "weight_decay": 0.0, "clip": 1.0, "precision": self.precision,
                "rope": "linear position interpolation by context / base context"}

    def evaluation(self) -> dict:
        return {"split": "validation (pystdlib, 24 documents)", "attention": "full unless test_full_attention is "
                "false", "ppl": {"protocol": "sliding", "stride": STRIDE, "max_windows": self.ppl_windows},
                "ppl_last_quarter": {"documents": self.lq_documents, "positions": "3n/4 … n−1 of the first n "
                                     "tokens of each document"},
                "curve": {"every_steps": self.curve_every, "tokens": CURVE_TOKENS if self.curve_windows is None
                          else f"{self.curve_windows} window(s)", "metric": "train.validation_loss (whole-window "
                          "mean over the first packed validation windows)"}}


def group_size_for(context: int, fraction: float) -> int:
    """The even divisor of `context` nearest to fraction × context (the smaller one on a tie): S2-Attn groups must
    be even (half a group is shifted) and tile the sequence."""
    target = context * fraction
    valid = [g for g in range(2, context + 1, 2) if context % g == 0]
    if not valid:
        raise ValueError(f"context {context} has no even divisor")
    return min(valid, key=lambda g: (abs(g - target), g))


DESCRIPTIONS = {
    "table1": "Table 1: full-attention fine-tuning vs short attention (pattern 1, no shift) vs S2-Attn (split), "
              "full FT with PI, tested with full attention, at 4x / 8x / 16x the base's context",
    "table1_lr": "Table 1 at 4x the base's context under learning rates 1e-4 / 2.5e-4 / 5e-4 / 1e-3 (not in the paper): "
                 "full-attention FT vs short attention vs S2-Attn, full FT with PI, tested with full attention and "
                 "(short, S2) with their own pattern",
    "table1_window": "Table 1's models at 4x (full-attention FT, short attention, S2-Attn; full FT with PI) tested "
                     "with a sliding window of n/8, n/4, n/2 tokens and with full attention (not in the paper)",
    "table2": "Table 2: full FT vs LoRA r = 8, 16, 32, 64 vs LoRA r=8 + norm / + embed / + norm & embed, S2-Attn, "
              "at 16x the base's context",
    "table6": "Table 6: attention patterns (S2 across heads / layers, only P1, only P2, dilated, block sparse, stride "
              "sparse), LoRA+ at 4x, each tested with its own pattern and with full attention",
    "table7": "Table 7: S2-Attn group sizes 1/2, 1/4, 1/6, 1/8 of the target and full attention, full FT at 6x",
    "table8": "Table 8: S2-Attn variants roll (Algorithm 1), roll_up (Var 1), split (Var 2), swap (Var 3) and full "
              "attention, full FT at 4x",
    "table11": "Table 11: TFLOPs of Llama-2-7B by kind at 8192 / 16384 / 32768 / 65536 tokens, full attention vs "
               "S2-Attn (from the shapes)",
    "figure4": "Figure 4: passkey retrieval accuracy against length, base and 16x LoRA+ model, each with and "
               "without extended PI (x1.5)",
    "figure5": "Figure 5: validation perplexity against fine-tuning steps, full FT vs LoRA+, S2-Attn at 4x",
}

# which row fields identify a row (everything else but `seed` is a measurement or a detail of the run)
ID_FIELDS = {"table1": ("setting", "context"), "table1_lr": ("setting", "lr"), "table1_window": ("setting", "window"),
             "table2": ("setting", "rank"),
             "table6": ("pattern", "test_full_attention"), "table7": ("group",), "table8": ("variant",),
             "table11": ("context",), "figure4": ("model", "target"), "figure5": ("setting", "step")}
METRICS = ("ppl", "ppl_last_quarter", "accuracy", "val_ppl", "ppl_own_pattern", "ppl_last_quarter_own_pattern")


# ------------------------------------------------------------------------------------------------------ the tables
def table1(plan: Plan, runner, seeds) -> list[dict]:
    rows = []
    for seed in seeds:
        for factor in (4, 8, 16):
            n = plan.context(factor)
            for setting in ("full", "short", "s2"):
                run = runner.train(plan.config(n, method="full", attention=setting, seed=seed))
                rows.append({"setting": setting, "context": n, "seed": seed, "group_size": _group(run["config"]),
                             **runner.ppl(run, n), **runner.last_quarter(run, n), **_run_fields(run)})
            if seed == seeds[0]:  # the starting point: the base with the run's interpolation, before any step
                factor = n / plan.base_context
                rows.append({"setting": "base+PI", "context": n, "seed": None, "group_size": None,
                             **runner.ppl("base", n, rope_factor=factor),
                             **runner.last_quarter("base", n, rope_factor=factor)})
    return rows


T1_LR = (1e-4, 2.5e-4, 5e-4, 1e-3)  # 1e-3 is LR["full"]: those three runs are table1's at 4x


def table1_lr(plan: Plan, runner, seeds) -> list[dict]:
    rows, n = [], plan.context(4)
    for seed in seeds:
        for lr in T1_LR:
            for setting in ("full", "short", "s2"):
                run = runner.train(plan.config(n, method="full", attention=setting, seed=seed, lr=lr))
                row = {"setting": setting, "lr": lr, "context": n, "seed": seed, "group_size": _group(run["config"]),
                       **runner.ppl(run, n), **runner.last_quarter(run, n)}
                if setting != "full":
                    row["ppl_own_pattern"] = runner.ppl(run, n, "train")["ppl"]
                    row["ppl_last_quarter_own_pattern"] = runner.last_quarter(run, n, "train")["ppl_last_quarter"]
                rows.append({**row, **_run_fields(run)})
    return rows


T1_WINDOWS = (1 / 8, 1 / 4, 1 / 2, 1)  # the sliding window as a fraction of the context; 1 is full attention


def table1_window(plan: Plan, runner, seeds) -> list[dict]:
    """Table 1's runs at 4x, each tested with attention limited to the last W keys (`attention.PATTERNS`' "local"):
    the grouped models trained on distances below n/4 only; which distances make them fail under full attention?"""
    rows, n = [], plan.context(4)
    for seed in seeds:
        for setting in ("full", "short", "s2"):
            run = runner.train(plan.config(n, method="full", attention=setting, seed=seed))
            for fraction in T1_WINDOWS:
                attention = "full" if fraction == 1 else f"local {fraction:g}"
                rows.append({"setting": setting, "window": int(n * fraction), "context": n, "seed": seed,
                             "group_size": _group(run["config"]), **runner.ppl(run, n, attention),
                             **runner.last_quarter(run, n, attention), **_run_fields(run)})
    return rows


T2_SETTINGS = (("full", None, dict(method="full")),
               *(("lora", r, dict(method="lora", rank=r)) for r in (8, 16, 32, 64)),
               ("lora+norm", 8, dict(method="lora_plus", train_embed=False, train_norm=True)),
               ("lora+embed", 8, dict(method="lora_plus", train_embed=True, train_norm=False)),
               ("lora+norm+embed", 8, dict(method="lora_plus")))


def table2(plan: Plan, runner, seeds) -> list[dict]:
    rows, n = [], plan.context(16)
    for seed in seeds:
        for setting, rank, kw in T2_SETTINGS:
            cfg = plan.config(n, attention="s2", seed=seed, **kw)
            run = runner.train(cfg)
            rows.append({"setting": setting, "rank": rank, "context": n, "seed": seed, "method": cfg.method,
                         "trainable_params": runner.trainable(cfg), **runner.ppl(run, n),
                         **runner.last_quarter(run, n), **_run_fields(run)})
    return rows


T6_NAMES = {"s2": "S2 cross heads", "s2_layers": "S2 cross layers", "short": "S2 only P1", "shift_all": "S2 only P2",
            "dilated": "dilated cross heads", "block_sparse": "block sparse cross heads",
            "stride_sparse": "stride sparse cross heads"}


def table6(plan: Plan, runner, seeds) -> list[dict]:
    rows, n = [], plan.context(4)
    for seed in seeds:
        for pattern in T6_PATTERNS:
            run = runner.train(plan.config(n, method="lora_plus", attention=pattern, seed=seed))
            for full in (False, True):
                attention = "full" if full else "train"
                rows.append({"pattern": pattern, "paper_name": T6_NAMES[pattern], "test_full_attention": full,
                             "context": n, "seed": seed, **runner.ppl(run, n, attention),
                             **runner.last_quarter(run, n, attention), **_run_fields(run)})
    return rows


T7_FRACTIONS = (("full", None), ("1/2", 1 / 2), ("1/4", 1 / 4), ("1/6", 1 / 6), ("1/8", 1 / 8))
T7_FACTOR = 6  # 6 x 256 = 1536: 1/2, 1/4, 1/6 and 1/8 of it are all even divisors (768, 384, 256, 192)


def table7(plan: Plan, runner, seeds) -> list[dict]:
    rows, n = [], plan.context(T7_FACTOR)
    for seed in seeds:
        for group, fraction in T7_FRACTIONS:
            size = None if fraction is None else group_size_for(n, fraction)
            cfg = plan.config(n, method="full", attention="full" if size is None else "s2", group_size=size, seed=seed)
            run = runner.train(cfg)
            rows.append({"group": group, "fraction": fraction, "group_size": size,
                         "exact": size is None or abs(size - n * fraction) < 1e-9, "context": n, "seed": seed,
                         **runner.ppl(run, n), **runner.last_quarter(run, n), **_run_fields(run)})
    return rows


T8_VARIANTS = (("full", "full attention"), ("roll", "Ours (Algorithm 1)"), ("roll_up", "Var 1 (shift up)"),
               ("split", "Var 2 (individual groups for the shifted tokens)"), ("swap", "Var 3 (swap)"))


def table8(plan: Plan, runner, seeds) -> list[dict]:
    rows, n = [], plan.context(4)
    for seed in seeds:
        for variant, name in T8_VARIANTS:
            cfg = plan.config(n, method="full", attention="full" if variant == "full" else "s2",
                              variant="split" if variant == "full" else variant, seed=seed)
            run = runner.train(cfg)
            rows.append({"variant": variant, "paper_name": name, "context": n, "seed": seed, **runner.ppl(run, n),
                         **runner.last_quarter(run, n), **_run_fields(run)})
    return rows


T11_CONTEXTS = (8192, 16384, 32768, 65536)


def table11(plan: Plan, runner, seeds) -> list[dict]:
    from .flops import flops_breakdown

    config = LlamaConfig.from_preset("llama2-7b")
    return [{"preset": "llama2-7b", **flops_breakdown(config, n), "unit": "TFLOPs"} for n in T11_CONTEXTS]


def passkey_lengths(plan: Plan) -> list[int]:
    """Every 2L from 2L to 1.5 x the 16x model's context (24L), and L itself, from ~256 tokens (the prompt's floor)."""
    L = plan.context(1)
    top = int(EXTENDED_PI * 16 * L)
    lengths = sorted({L, *range(2 * L, top + 1, 2 * L)})
    lengths = [n for n in lengths if n >= MIN_PASSKEY_TOKENS] or [MIN_PASSKEY_TOKENS]
    if plan.quick:
        lengths = sorted({lengths[0], max(lengths[0], 16 * L)})
    return lengths


def figure4(plan: Plan, runner, seeds) -> list[dict]:
    rows, n = [], plan.context(16)
    lengths, factor = passkey_lengths(plan), n / plan.base_context
    for seed in seeds:
        run = runner.train(plan.config(n, method="lora_plus", attention="s2", seed=seed))  # = table2's LoRA+
        for model, source, rope in (("base", "base", 1.0), ("base + extended PI", "base", EXTENDED_PI),
                                    ("extended", run, factor), ("extended + extended PI", run, EXTENDED_PI * factor)):
            trained = plan.base_context if source == "base" else n
            for r in runner.passkey(source, lengths, plan.passkey_trials, rope):
                rows.append({"model": model, "rope_factor": rope, "trained_context": trained, "seed": seed, **r,
                             **({} if source == "base" else _run_fields(run))})
    return rows


def figure5(plan: Plan, runner, seeds) -> list[dict]:
    rows, n = [], plan.context(4)
    for seed in seeds:
        for setting in ("full", "lora_plus"):
            cfg = plan.config(n, method=setting, attention="s2", seed=seed)
            run = runner.train(cfg)
            start = runner.val_ppl_at_start(cfg)
            rows.append({"setting": setting, "step": 0, "tokens": 0, "val_ppl": start, "context": n, "seed": seed,
                         "run": run["key"]})
            rows += [{"setting": setting, "step": m["step"], "tokens": m["tokens"], "val_ppl": m["val_ppl"],
                      "context": n, "seed": seed, "run": run["key"]} for m in run["metrics"] if "val_ppl" in m]
    return rows


TABLE_FUNCTIONS = {"table1": table1, "table1_lr": table1_lr, "table1_window": table1_window, "table2": table2,
                   "table6": table6, "table7": table7, "table8": table8, "table11": table11, "figure4": figure4, "figure5": figure5}


def _group(cfg: TrainConfig) -> int | None:
    return None if cfg.attention == "full" else max(2, int(cfg.seq_len * cfg.group_size_ratio))


def _run_fields(run: dict) -> dict:
    return {"run": run["key"], "train_loss": run["loss"], "train_seconds": run["train_seconds"],
            "reused": run["reused"]}


# -------------------------------------------------------------------------------------------------------- running
def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_fingerprint(base: str) -> str:
    """sha256 of the base's config.json and weight files: a remade base gets new cache keys."""
    h = hashlib.sha256()
    path = Path(base)
    for f in sorted(path.glob("*.json")) + sorted(path.glob("*.safetensors")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def run_key(cfg: TrainConfig, fingerprint: str) -> str:
    """The cache key of a run: its TrainConfig without out_dir, and the base's fingerprint."""
    d = cfg.to_dict()
    d.pop("out_dir")
    return _sha({"config": d, "base": fingerprint})


def _documents():
    from .longlora import validation_documents

    return validation_documents("validation")


class Runner:
    """Trains (or reuses) runs and evaluates models, caching both under `cache_dir`."""

    def __init__(self, plan: Plan, cache_dir: str | Path):
        self.plan, self.cache = plan, Path(cache_dir)
        self.fingerprint = base_fingerprint(plan.base)
        self.docs = _documents()
        self.runs: dict[str, dict] = {}  # key -> {config, train_seconds, tokens, loss, curve, reused}

    # training ------------------------------------------------------------------------------------------------
    def train(self, cfg: TrainConfig) -> dict:
        from .train import find_checkpoint, train

        key = run_key(cfg, self.fingerprint)
        out = self.cache / key
        cfg = cfg.replace(out_dir=str(out))
        done = out / "result.json"
        reused = done.is_file()
        if not reused:
            resume = find_checkpoint(out) is not None
            if not resume and out.exists():
                shutil.rmtree(out)
            started = time.time()
            result = train(cfg, resume=resume)
            summary = {"config": cfg.to_dict(), "final": result["final"], "loss": result["loss"],
                       "metrics": result["metrics"], "train_seconds": result["metrics"][-1]["seconds"],
                       "wall_seconds": round(time.time() - started, 1)}
            _write_json(done, summary)
            shutil.rmtree(out / "checkpoint", ignore_errors=True)  # only needed to resume; final/ is the model
        summary = json.loads(done.read_text())
        run = {"key": key, "config": cfg, "final": summary["final"], "loss": summary["loss"],
               "metrics": summary["metrics"], "train_seconds": summary["train_seconds"], "reused": reused,
               "dir": str(out)}
        self.runs.setdefault(key, {
            "config": summary["config"], "train_seconds": summary["train_seconds"],
            "wall_seconds": summary.get("wall_seconds"), "reused": reused,
            "tokens": summary["metrics"][-1]["tokens"], "final_train_loss": summary["loss"],
            "curve": [{"step": m["step"], "val_ppl": m["val_ppl"]} for m in summary["metrics"] if "val_ppl" in m]})
        return run

    def trainable(self, cfg: TrainConfig) -> int:
        from .train import _meta_model

        return sum(p.numel() for p in _meta_model(cfg).parameters() if p.requires_grad)

    # evaluation ----------------------------------------------------------------------------------------------
    def _cached(self, source, spec: dict, compute):
        folder = self.cache / "base-evals" / self.fingerprint if source == "base" else Path(source["dir"])
        path = folder / "evals.json"
        key = json.dumps(spec, sort_keys=True)
        cache = json.loads(path.read_text()) if path.is_file() else {}
        if key not in cache:
            cache[key] = compute()
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_json(path, cache)
        return cache[key]

    def _model(self, source, attention: str = "full", rope_factor: float | None = None):
        from .hf import from_hf

        overrides = {}
        if rope_factor is not None:
            overrides["rope_scaling"] = {"rope_type": "linear", "factor": float(rope_factor)} if rope_factor > 1 \
                else None
        if source == "base":
            return from_hf(self.plan.base, **overrides).eval()
        cfg = source["config"]
        if attention == "train":
            overrides.update(attention=cfg.attention, s2_variant=cfg.s2_variant,
                             group_size_ratio=cfg.group_size_ratio, eval_attention="train")
        elif attention.startswith("local "):  # "local F": a sliding window of F x the evaluated length
            overrides.update(attention="local", group_size_ratio=float(attention.split()[1]), eval_attention="train")
        return from_hf(source["final"], **overrides).eval()

    def ppl(self, run, n: int, attention: str = "full", rope_factor: float | None = None) -> dict:
        """Sliding-window perplexity of a run (or of "base", with linear PI by `rope_factor` where given)."""
        from .evaluate import perplexity

        spec = {"kind": "ppl", "n": n, "stride": min(STRIDE, n), "windows": self.plan.ppl_windows,
                "attention": attention, **({} if rope_factor is None else {"rope_factor": rope_factor})}

        def compute():
            r = perplexity(self._model(run, attention, rope_factor), self.docs, n, stride=min(STRIDE, n),
                           max_windows=self.plan.ppl_windows, batch_size=4, progress=False)
            return {"ppl": r["ppl"], "ppl_tokens": r["tokens_scored"], "ppl_windows": r["windows"]}

        return self._cached(run, spec, compute)

    def last_quarter(self, run, n: int, attention: str = "full", rope_factor: float | None = None) -> dict:
        from .evaluate import position_loss

        spec = {"kind": "last_quarter", "n": n, "documents": self.plan.lq_documents, "attention": attention,
                "bins": LOSS_BINS, **({} if rope_factor is None else {"rope_factor": rope_factor})}

        def compute():
            docs = [d[:n] for d in self.docs if d.numel() >= n][:self.plan.lq_documents]
            if not docs:
                raise ValueError(f"no validation document holds {n} tokens")
            curve = position_loss(self._model(run, attention, rope_factor), docs, n, batch_size=4).double()
            # entry i predicts token i + 1: the last quarter of positions is tokens 3n/4 … n−1
            quarters = [curve[max(0, q * n // 4 - 1):(q + 1) * n // 4 - 1].mean().item() for q in range(4)]
            bins = [curve[max(0, b * n // LOSS_BINS - 1):(b + 1) * n // LOSS_BINS - 1].mean().item()
                    for b in range(LOSS_BINS)]
            return {"ppl_last_quarter": math.exp(quarters[3]), "loss_quarters": quarters, "loss_bins": bins,
                    "lq_documents": len(docs)}

        return self._cached(run, spec, compute)

    def passkey(self, source, lengths: list[int], trials: int, rope_factor: float) -> list[dict]:
        from .data import ByteTokenizer
        from .evaluate import passkey_accuracy

        spec = {"kind": "passkey", "lengths": list(lengths), "trials": trials, "rope_factor": rope_factor}
        return self._cached(source, spec, lambda: passkey_accuracy(
            self._model(source, rope_factor=rope_factor), ByteTokenizer(), lengths, trials=trials,
            check_context=False, progress=False))

    def val_ppl_at_start(self, cfg: TrainConfig) -> float:
        """train's validation perplexity of the base with the run's position interpolation, before any step."""
        from .train import validation_loss, validation_rows

        spec = {"kind": "val_start", "n": cfg.seq_len, "windows": cfg.eval_windows, "rope_factor": cfg.rope_factor}

        def compute():
            model = self._model("base", rope_factor=cfg.rope_factor)
            loss = validation_loss(model, validation_rows(cfg), cfg.batch_size, "cpu", contextlib.nullcontext)
            return math.exp(loss)

        return self._cached("base", spec, compute)


# ---------------------------------------------------------------------------------------------- the time estimate
# µs per token on 2 quiet cores (tiny preset: 4 layers, dim 256, 8 heads, fp32). Measured here on one thread per
# configuration (a few steps each, 4096 tokens per step) and scaled by 1.75, the ratio that matches the recipes'
# 2-core figures (8,000 tok/s at 1024 with S2 + LoRA+, 7,000 at 256 with full FT). A step costs a fixed part per token
# plus a part per token of attention span (the context for full attention, the group for grouped patterns).
TRAIN_US = {"full": 143.0, "lora": 110.0, "lora_plus": 110.0}  # per token, fixed part
TRAIN_US_PER_SPAN = 0.053  # per token per token of span
OTHER_PATTERNS = 1.12  # s2_layers, shift_all, dilated, block_sparse, stride_sparse: slower than s2 by ~12%
FORWARD_US, FORWARD_US_PER_SPAN = 48.0, 0.017  # inference (evaluation) forward pass
RUN_OVERHEAD_S = 5.0  # data packing, model building, checkpoints, HF export
BF16_SPEEDUP = 2.2  # training tok/s, bf16 autocast over fp32 (benchmarks/results/speed_cpu.json: 2.2x and 2.5x)


def train_us_per_token(cfg: TrainConfig) -> float:
    span = cfg.seq_len if cfg.attention == "full" else max(2, int(cfg.seq_len * cfg.group_size_ratio))
    us = TRAIN_US[cfg.method] + TRAIN_US_PER_SPAN * span
    us /= BF16_SPEEDUP if cfg.precision == "bf16" else 1.0
    return us * (OTHER_PATTERNS if cfg.attention not in ("full", "s2", "short") else 1.0)


def forward_seconds(tokens: float, n: int, span: int | None = None) -> float:
    return tokens * (FORWARD_US + FORWARD_US_PER_SPAN * (span or n)) * 1e-6


class CostRunner:
    """The Runner's interface, but it only adds up the estimated seconds (and remembers what it has "run", so
    tables in a sequence reuse each other's runs as the real cache does)."""

    def __init__(self, plan: Plan):
        self.plan, self.seen, self.seconds, self.new_runs, self.used = plan, set(), 0.0, 0, set()
        self.runs = {}

    def train(self, cfg: TrainConfig) -> dict:
        key = run_key(cfg, "estimate")
        self.used.add(key)
        if key not in self.seen:
            self.seen.add(key)
            self.new_runs += 1
            tokens = cfg.steps * cfg.batch_size * cfg.seq_len
            curve = (cfg.steps // cfg.eval_every) * cfg.eval_windows * cfg.seq_len if cfg.eval_every else 0
            self.seconds += tokens * train_us_per_token(cfg) * 1e-6 + forward_seconds(curve, cfg.seq_len)
            self.seconds += RUN_OVERHEAD_S
        metrics = [{"step": s, "tokens": s * cfg.batch_size * cfg.seq_len, "val_ppl": float("nan")}
                   for s in range(cfg.eval_every, cfg.steps + 1, cfg.eval_every or cfg.steps + 1)]
        return {"key": key, "config": cfg, "loss": None, "metrics": metrics, "train_seconds": None, "reused": False}

    def trainable(self, cfg):
        return None

    def _once(self, spec, seconds: float) -> None:
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in self.seen:
            self.seen.add(key)
            self.seconds += seconds

    @staticmethod
    def _span(run, n, attention) -> int:
        if attention.startswith("local "):
            return int(2 * n * float(attention.split()[1]))  # blocks of W queries read 2W keys
        return n if attention == "full" else _group(run["config"])

    def ppl(self, run, n, attention="full", rope_factor=None):
        span = self._span(run, n, attention)
        key = run if run == "base" else run["key"]
        self._once(("ppl", key, n, attention, rope_factor), forward_seconds(self.plan.ppl_windows * n, n, span))
        return {"ppl": None}

    def last_quarter(self, run, n, attention="full", rope_factor=None):
        span = self._span(run, n, attention)
        key = run if run == "base" else run["key"]
        self._once(("lq", key, n, attention, rope_factor), forward_seconds(self.plan.lq_documents * n, n, span))
        return {"ppl_last_quarter": None}

    def passkey(self, source, lengths, trials, rope_factor):
        key = source if source == "base" else source["key"]
        self._once(("passkey", key, rope_factor), sum(forward_seconds(trials * n, n) for n in lengths))
        return [{"target": n, "length": n, "accuracy": None, "trials": trials} for n in lengths]

    def val_ppl_at_start(self, cfg):
        self._once(("start", cfg.seq_len), forward_seconds(cfg.eval_windows * cfg.seq_len, cfg.seq_len))
        return None


def estimate_seconds(names=RUN_ORDER, *, seeds: int = 1, base_context: int = 256, quick: bool = False) -> dict:
    """{name: {"alone": s, "in_order": s, "runs": r, "new_runs": r_new}} for the tables `names` run one after the
    other (in_order: reusing earlier tables' runs), from the cost model above; plus "total"."""
    plan = Plan.make("estimate", base_context, quick)
    chained, out = CostRunner(plan), {}
    for name in names:
        alone = CostRunner(plan)
        TABLE_FUNCTIONS[name](plan, alone, range(seeds))
        before, runs_before = chained.seconds, chained.new_runs
        chained.used = set()
        TABLE_FUNCTIONS[name](plan, chained, range(seeds))
        out[name] = {"alone": alone.seconds, "in_order": chained.seconds - before, "runs": len(alone.used),
                     "new_runs": chained.new_runs - runs_before}
    out["total"] = {"in_order": chained.seconds, "new_runs": chained.new_runs}
    return out


def estimate_text(seeds: int = 1) -> str:
    """The estimate as the table in the module docstring."""
    est = estimate_seconds(seeds=seeds)
    lines = ["    table          alone   in order   runs (new in order)"]
    for name in RUN_ORDER:
        e = est[name]
        lines.append(f"    {name:<14}{e['alone'] / 60:>4.0f} min {e['in_order'] / 60:>4.0f} min     "
                     f"{e['runs']} ({e['new_runs']})")
    total = est["total"]["in_order"]
    lines.append(f"    all                   ~ {int(total // 3600)} h {round(total % 3600 / 60):.0f} min  "
                 f"({est['total']['new_runs']} runs of {STEPS * TOKENS_PER_STEP / 1e6:.1f}M tokens; N seeds: about N "
                 f"times as long)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ the result
def _write_json(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    raise TypeError(f"not JSON serializable: {type(x)}")


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the checkout holding this package, or None outside one (read-only)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor()
            or platform.machine(), "cuda": torch.cuda.is_available()}


def summarize(name: str, rows: list[dict]) -> list[dict]:
    """Mean and sample std over seeds of every metric, per row identity (ID_FIELDS)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(f) for f in ID_FIELDS[name]), []).append(r)
    out = []
    for ident, members in groups.items():
        s = dict(zip(ID_FIELDS[name], ident))
        s["seeds"] = [m.get("seed") for m in members]
        for metric in METRICS:
            values = [m[metric] for m in members if isinstance(m.get(metric), (int, float))]
            if values:
                s[f"{metric}_mean"] = float(np.mean(values))
                s[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out.append(s)
    return out


def _per_context(runs: dict) -> dict:
    """{context: {batch_size, tokens_per_step, steps, tokens_per_run}} of the runs of a table."""
    out = {}
    for r in runs.values():
        c = r["config"]
        out[str(c["seq_len"])] = {"batch_size": c["batch_size"], "tokens_per_step": c["batch_size"] * c["seq_len"],
                                  "steps": c["steps"], "tokens_per_run": c["steps"] * c["batch_size"] * c["seq_len"]}
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def result_path(out: str | Path, name: str, quick: bool = False) -> Path:
    return Path(out) / (f"{name}.quick.json" if quick else f"{name}.json")


def command_line(name: str, quick: bool, seeds: int, out, base, cache_dir) -> str:
    parts = ["python", "-m", "minilongllora", "reproduce", name] + (["--quick"] if quick else [])
    parts += ["--seeds", str(seeds), "--out", str(out), "--base", str(base), "--cache-dir", str(cache_dir)]
    return shlex.join(parts)


def reproduce(name: str, *, quick: bool = False, seeds: int = 1, out: str | Path = "notebooks/results",
              base: str | None = None, cache_dir: str | Path | None = None, precision: str = PRECISION) -> dict:
    """Run table or figure `name` (one of TABLES) and write OUT/NAME.json (OUT/NAME.quick.json with quick=True).
    Returns the written dict: name, quick, description, command, argv, git_commit, started, seconds, machine,
    settings (base, budget, evaluation, train_configs, runs), paper, rows, summary (and table1's starting_point: the
    base with each context's interpolation, before fine-tuning)."""
    if name not in TABLES:
        raise UserInputError(f"unknown table {name!r}; choose one of {', '.join(TABLES)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise UserInputError(f"--seeds must be a positive integer, got {seeds!r}")
    base = base or DEFAULT_BASE
    cache_dir = cache_dir or DEFAULT_CACHE
    started, t0, commit = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.time(), git_commit()  # the code it starts with
    if name == "table11":  # no model involved
        plan, runner = Plan.make(base, 256, quick), None
    else:
        if not (Path(base) / "config.json").is_file():
            raise FileNotFoundError(f"no base model at {base} (a Hugging Face directory; make it with `python -m "
                                    f"minilongllora pretrain` and `export runs/pretrain-tiny --out {base}`)")
        plan = Plan.make(base, LlamaConfig.from_hf(base).max_seq_len, quick, precision)
        runner = Runner(plan, cache_dir)
    print(f"reproduce {name}{' (quick)' if quick else ''}: {DESCRIPTIONS[name]}; base {base} "
          f"(context {plan.base_context}), seeds 0..{seeds - 1}", flush=True)
    rows = TABLE_FUNCTIONS[name](plan, runner, list(range(seeds)))
    start = [r for r in rows if r.get("setting") == "base+PI"]  # table1's starting point: not a row of the table
    rows = [r for r in rows if r.get("setting") != "base+PI"]
    seconds = round(time.time() - t0, 1)
    runs = runner.runs if runner is not None else {}
    est = estimate_seconds((name,), seeds=seeds, base_context=plan.base_context, quick=quick)[name]
    result = {
        "name": name, "quick": quick, "description": DESCRIPTIONS[name],
        "command": command_line(name, quick, seeds, out, base, cache_dir), "argv": list(sys.argv),
        "git_commit": commit, "started": started, "seconds": seconds, "machine": machine(),
        "settings": {
            "base": base, "base_context": plan.base_context, "context_unit": plan.context(1),
            "seeds": list(range(seeds)), "cache_dir": str(cache_dir),
            "budget": {**plan.budget(), "per_context": _per_context(runs), "runs": len(runs),
                       "tokens_all_runs": sum(r["tokens"] for r in runs.values()),
                       "train_seconds_all_runs": round(sum(r["train_seconds"] for r in runs.values()), 1),
                       "train_seconds_new_runs": round(sum(r["train_seconds"] for r in runs.values()
                                                           if not r["reused"]), 1),
                       "wall_seconds": seconds,
                       "estimated_seconds_alone": None if quick else round(est["alone"], 1)},
            "evaluation": plan.evaluation(),
            "train_configs": [{"run": k, **r["config"]} for k, r in runs.items()],
            "runs": {k: {f: v for f, v in r.items() if f != "config"} for k, r in runs.items()},
        },
        "paper": {**PAPER[name], "label": "the paper's numbers (Llama2 7B), copied from PAPER.md; not ours"},
        "rows": rows,
        "summary": summarize(name, rows),
        **({"starting_point": start} if start else {}),
    }
    path = result_path(out, name, quick)
    _write_json(path, result)
    print(f"wrote {path} ({len(rows)} rows, {seconds:.0f} s)", flush=True)
    return result
