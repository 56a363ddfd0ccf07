"""The budget every table shares, and `Plan`: where the runs start and the TrainConfig of one row."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..attention import group_size
from ..trainconfig import TrainConfig

DEFAULT_BASE = "data/tiny-base"
DEFAULT_CACHE = "runs/reproduce"

# The regime (README "The regime"): fine-tuning is small beside the base's own pretraining, as in the paper. Llama 2
# saw ~2T tokens at a peak lr of 3e-4; LongLoRA fine-tunes ~0.5B more tokens (~0.03%) at 2e-5 (~1/15 of the peak).
# Ours: a tenth of the base's peak lr, the most the regime allows (the paper's 1/15 would leave the interpolation
# less recovered: in the main job's sweep, 1.2M tokens at half the rate left LoRA+ at 9.20 against 4.28; recipes.py),
# and at most 5% of its pretraining tokens: 400 x 4096 = 1.64M of the tiny base's 34.4M (4.8%), enough that
# full-attention fine-tuning flattens (settings.runs[KEY].curve of every results file).
LR_RATIO = 0.1  # fine-tuning lr / the base's pretraining peak lr: at most 1/10
MAX_TOKEN_RATIO = 0.05  # fine-tuning tokens per run / the base's pretraining tokens: at most 5%
STEPS = 400  # optimizer steps of every fine-tuning run
TOKENS_PER_STEP = 4096  # batch = round(4096 / context) sequences
WARMUP_STEPS = 20  # the paper's
LR = {"full": 1e-4, "lora": 1e-4, "lora_plus": 1e-4}  # one rate for every method, as the paper (2e-5 for all)
SAVE_EVERY = 50  # checkpoints, for resuming an interrupted run (they change nothing in the trained weights)
CURVE_POINTS = 10  # validation (whole-window) perplexity every STEPS / 10 steps
CURVE_TOKENS = 8192  # … over this many validation tokens (eval_windows = 8192 / context)
PPL_WINDOWS = 48  # sliding-window perplexity: the first 48 windows (stride 256) of the validation documents
LQ_DOCUMENTS = 24  # last-quarter perplexity: the first n tokens of the first 24 validation documents (all of them)
STRIDE = 256  # the paper's S
LOSS_BINS = 16  # the position-loss curve of every row, as the mean loss of 16 equal bins of window positions
PASSKEY_TRIALS = 10  # the paper's 10 trials per length

QUICK = dict(steps=2, tokens_per_step=1, warmup_steps=0, save_every=0, curve_every=1, curve_windows=1,
             ppl_windows=2, lq_documents=1, passkey_trials=1)
PRECISION = "bf16"  # CPU bf16 autocast: about 2x fp32 here; README: the same conclusions as fp32 (figure5, main job)
QUICK_UNIT = 64  # quick: contexts of 4 x 64 … 16 x 64 tokens whatever the base (PI by context / base context ≥ 1)


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

    def rope_factor(self, context: int) -> float:
        """Linear PI by context / L for a context of `context` tokens (none below the base's: quick contexts)."""
        return max(1.0, context / self.base_context)

    def config(self, context: int, *, method: str = "full", attention: str = "s2", variant: str = "split",
               group_size: int | None = None, rank: int = 8, train_embed: bool = True, train_norm: bool = True,
               seed: int = 0, lr: float | None = None) -> TrainConfig:
        """The TrainConfig of one row: `context` tokens, PI by context / L, the shared budget; `group_size` an exact
        group (as a ratio of the context, which `attention.group_size` turns back into it)."""
        ratio = 0.25 if group_size is None else group_size / context
        cfg = TrainConfig(
            base=self.base, out_dir="", seq_len=context, steps=self.steps,
            batch_size=max(1, round(self.tokens_per_step / context)), grad_accum=1, lr=lr or LR[method],
            weight_decay=0.0, warmup_steps=self.warmup_steps, betas=(0.9, 0.95), clip=1.0, seed=seed, method=method,
            lora_r=rank, lora_alpha=16.0, lora_dropout=0.0, train_embed=train_embed, train_norm=train_norm,
            attention=attention, s2_variant=variant, group_size_ratio=ratio,
            rope_factor=self.rope_factor(context), gradient_checkpointing=False, precision=self.precision,
            data="pystdlib", save_every=self.save_every, eval_every=self.curve_every,
            eval_windows=self.curve_windows or max(1, CURVE_TOKENS // context), log_every=50, device="cpu")
        if group_size is not None and group_of(cfg) != group_size:
            raise ValueError(f"group {group_size} is not a valid S2-Attn group of {context} tokens (even, >= 2)")
        return cfg

    def regime(self) -> dict:
        """The regime of the plan against the base's own pretraining (its pretrain_run.json): contexts as multiples
        of the base's, the learning rate's ratio to the base's peak, fine-tuning tokens over pretraining tokens."""
        pre = base_pretraining(self.base)
        tokens = self.steps * self.tokens_per_step
        return {"base_context": self.base_context, "base_pretraining_tokens": pre.get("tokens"),
                "base_peak_lr": pre.get("peak_lr"), "lr": dict(LR),
                "lr_ratio": None if not pre.get("peak_lr") else max(LR.values()) / pre["peak_lr"],
                "max_lr_ratio": LR_RATIO, "fine_tuning_tokens_per_run": tokens,
                "token_ratio": None if not pre.get("tokens") else tokens / pre["tokens"],
                "max_token_ratio": MAX_TOKEN_RATIO, "warmup_steps": self.warmup_steps}

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


def base_pretraining(base: str) -> dict:
    """{tokens, peak_lr} of the base's pretraining from its pretrain_run.json (written by data/make_base.py); {} for
    a base without one (a test's, a user's Hugging Face model)."""
    path = Path(base) / "pretrain_run.json"
    if not path.is_file():
        return {}
    run = json.loads(path.read_text())
    cfg = run["train_config"]
    return {"tokens": cfg["steps"] * run["global_batch"] * cfg["seq_len"], "peak_lr": cfg["lr"]}


def group_of(cfg) -> int | None:
    """The S2-Attn group a run trains with (a TrainConfig or its dict), None for full attention."""
    get = cfg.get if isinstance(cfg, dict) else lambda name, default=None: getattr(cfg, name)
    if get("attention") == "full":
        return None
    return group_size(get("seq_len"), get("group_size_ratio", 0.25))


def continued_from(config: dict) -> str | None:
    """The cache key of the run whose final model a run (its config dict) trains on from (table1_from_full's
    continuations: base = CACHE/KEY/final), None for a run from a base model."""
    base = Path(config.get("base") or "")
    return base.parent.name if base.name == "final" else None


def group_size_for(context: int, fraction: float) -> int:
    """The even divisor of `context` nearest to fraction × context (the smaller one on a tie): S2-Attn groups must
    be even (half a group is shifted) and tile the sequence."""
    target = context * fraction
    valid = [g for g in range(2, context + 1, 2) if context % g == 0]
    if not valid:
        raise ValueError(f"context {context} has no even divisor")
    return min(valid, key=lambda g: (abs(g - target), g))
