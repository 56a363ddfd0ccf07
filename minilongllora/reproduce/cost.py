"""How long the full reproductions take: a cost model run through the tables' own plans (`CostRunner` has the
Runner's interface but only adds up estimated seconds, remembering what it has "run" so that tables in a sequence
reuse each other's runs as the real cache does). Shown by `python -m minilongllora reproduce --help` only."""

from __future__ import annotations

import json

from ..config import LlamaConfig
from ..trainconfig import TrainConfig
from .plan import STEPS, TOKENS_PER_STEP, Plan, group_of
from .runner import Runner, run_key

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
    span = cfg.seq_len if cfg.attention == "full" else group_of(cfg)
    us = TRAIN_US[cfg.method] + TRAIN_US_PER_SPAN * span
    us /= BF16_SPEEDUP if cfg.precision == "bf16" else 1.0
    return us * (OTHER_PATTERNS if cfg.attention not in ("full", "s2", "short") else 1.0)


def forward_seconds(tokens: float, n: int, span: int | None = None) -> float:
    return tokens * (FORWARD_US + FORWARD_US_PER_SPAN * (span or n)) * 1e-6


class CostRunner:
    """The Runner's interface, adding up estimated seconds instead of running anything."""

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
        metrics = [{"step": s, "tokens": s * cfg.batch_size * cfg.seq_len, "val_window_ppl": float("nan")}
                   for s in range(cfg.eval_every, cfg.steps + 1, cfg.eval_every or cfg.steps + 1)]
        return {"key": key, "config": cfg, "loss": None, "metrics": metrics, "train_seconds": None, "reused": False,
                "dir": f"estimate/{key}"}

    def trainable(self, cfg):
        return None

    def _once(self, spec, seconds: float) -> None:
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in self.seen:
            self.seen.add(key)
            self.seconds += seconds

    def _forward(self, kind: str, run, n: int, attention: str, rope_factor, count: int, *edits) -> None:
        if attention.startswith("local "):
            span = int(2 * n * float(attention.split()[1]))  # blocks of W queries read 2W keys
        elif attention != "full" and attention.split()[0] in ("no_first", "window", "window_sinks"):
            span = n  # sinks.KeyMasked: a dense n x n mask
        else:
            span = n if attention == "full" else group_of(run["config"])
        key = run if run == "base" else run["key"]
        self._once((kind, key, n, attention, rope_factor, *edits), forward_seconds(count * n, n, span))

    def ppl(self, run, n, attention="full", rope_factor=None, split="validation", rotate=None, grafted=None,
            heads=None):
        self._forward(f"ppl {split}", run, n, attention, rope_factor, self.plan.ppl_windows, rotate, grafted, heads)
        return {"ppl": 1.0}

    def last_quarter(self, run, n, attention="full", rope_factor=None, split="validation", rotate=None):
        self._forward(f"lq {split}", run, n, attention, rope_factor, self.plan.lq_documents, rotate)
        return {"ppl_last_quarter": None, "loss_quarters": None, "loss_bins": None}

    def test_split(self, run, n, attention="full", rope_factor=None):
        return Runner.test_split(self, run, n, attention, rope_factor)  # the same two calls, on the test split

    def first_token_mass(self, run, n, k, documents, rope_factor=None):
        self._forward("mass", run, n, "full", rope_factor, 2 * documents)  # explicit probabilities: about twice
        return {}

    def distance_mass(self, run, n, documents, rope_factor=None):
        self._forward("distance", run, n, "full", rope_factor, 2 * documents)  # explicit probabilities: about twice
        return {}

    def far_reading(self, run, n, documents, test, rope_factor=None, grafted=None, heads=None):
        self._forward("far reading", run, n, "full", rope_factor, 3 * documents, grafted, heads)  # probs, 2 passes
        return {"mass": None, "change": None}

    def score_by_frequency(self, run, n, documents, near, far, rope_factor=None):
        self._forward("frequency", run, n, "full", rope_factor, 2 * documents)  # like the explicit probabilities
        return {"far_minus_near": None}

    def rotary_phase(self, run, n, documents, pair=None, rope_factor=None):
        self._forward("phase", run, n, "full", rope_factor, documents)
        # stand-in angles in the tiny preset's shape (layers x heads, the scale of the µs above): the tests by layer and
        # by head evaluate once per entry
        config = LlamaConfig.from_preset("tiny")
        phase = [[0.0] * config.n_heads for _ in range(config.n_layers)]
        return {"phase": phase, "magnitude": phase, "pair": 0}

    def passkey(self, source, lengths, trials, rope_factor, format="paper"):
        key = source if source == "base" else source["key"]
        self._once(("passkey", key, rope_factor, format), sum(forward_seconds(trials * n, n) for n in lengths))
        return [{"target": n, "length": n, "accuracy": None, "trials": trials} for n in lengths]

    def window_ppl_at_start(self, cfg):
        self._once(("start", cfg.seq_len), forward_seconds(cfg.eval_windows * cfg.seq_len, cfg.seq_len))
        return None


def estimate_seconds(names=None, *, seeds: int = 1, base_context: int = 256, quick: bool = False) -> dict:
    """{name: {"alone": s, "in_order": s, "runs": r, "new_runs": r_new}} for the tables `names` (default RUN_ORDER) run
    one after the other (in_order: reusing earlier tables' runs), from the cost model above; plus "total"."""
    from . import RUN_ORDER, TABLES

    plan = Plan.make("estimate", base_context, quick)
    chained, out = CostRunner(plan), {}
    for name in names or RUN_ORDER:
        alone = CostRunner(plan)
        TABLES[name].rows(plan, alone, range(seeds))
        before, runs_before = chained.seconds, chained.new_runs
        chained.used = set()
        TABLES[name].rows(plan, chained, range(seeds))
        out[name] = {"alone": alone.seconds, "in_order": chained.seconds - before, "runs": len(alone.used),
                     "new_runs": chained.new_runs - runs_before}
    out["total"] = {"in_order": chained.seconds, "new_runs": chained.new_runs}
    return out


def estimate_text(seeds: int = 1) -> str:
    """The estimate as the table in the package docstring."""
    from . import RUN_ORDER

    est = estimate_seconds(seeds=seeds)
    w = max(map(len, RUN_ORDER)) + 2  # the names' column
    lines = [f"    {'table':<{w}}  alone   in order   runs (new in order)"]
    for name in RUN_ORDER:
        e = est[name]
        lines.append(f"    {name:<{w}}{e['alone'] / 60:>4.0f} min {e['in_order'] / 60:>4.0f} min     "
                     f"{e['runs']} ({e['new_runs']})")
    total = est["total"]["in_order"]
    lines.append(f"    {'all':<{w}}         ~ {int(total // 3600)} h {round(total % 3600 / 60):.0f} min  "
                 f"({est['total']['new_runs']} runs, most of {STEPS * TOKENS_PER_STEP / 1e6:.1f}M tokens; "
                 "N seeds: about N times as long)")
    return "\n".join(lines)
