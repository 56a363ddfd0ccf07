"""Benchmark: the trainer's own tokens/s in fp32 and bf16 autocast, against the trainer before the speed work.

    python benchmarks/bench_speed.py                 # pretrain-tiny and extend-tiny-4x, 3 rounds x 30 steps (~8 min)
    python benchmarks/bench_speed.py --quick         # 1 round x 6 steps, no baseline (~1 min): checks the script
    python benchmarks/bench_speed.py --baseline none # without the old trainer

Variants, each a fresh process per round, the rounds interleaved (A B C D E, then B C D E A, ...) so that every ratio
is measured under the same machine load:
  trainer fp32 / bf16   `python -m minilongllora {pretrain,extend} --recipe R --steps N --precision P`; tok/s = median
                        of the trainer's per-step `tok_per_s` (metrics.jsonl) after the first WARMUP steps
  baseline fp32         the same command run from `git archive BASELINE` (the commit before the speed work) in a
                        temporary directory: "today's fp32" of the speed issue
  bare fp32 / bf16      forward + loss + backward + clip + AdamW of the same model, batch and data, nothing else
                        (no logging, checkpoint or validation): what the trainer's loop costs on top of the step
In the same run: the matrix-product peak of this CPU (a 2048 x 2048 product, fp32 and bf16) and model FLOPs
utilization, MFU = 3 x forward FLOPs per token (flops.py; S2-Attn's for S2 runs) x tokens/s / the bf16 peak.
Writes benchmarks/results/speed_cpu.json. These machines are shared and noisy: only ratios within one run mean much.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import ROOT, machine_info, warn_if_busy, write_results  # noqa: E402

from minilongllora.flops import flops_breakdown  # noqa: E402
from minilongllora.recipes import get_recipe  # noqa: E402

RECIPES = {"pretrain-tiny": "pretrain", "extend-tiny-4x": "extend"}
# the step's shape as the baseline commit's recipes had it, so every variant runs the same batches (pretrain-tiny
# now trains on 16 x 256 with 2% passkey documents: a different batch, not a different speed question)
SHAPE = {"pretrain-tiny": {"batch_size": 8, "passkey_share": 0.0}, "extend-tiny-4x": {}}
BASELINE = "3f5f2cd"  # the last commit before bf16 autocast by default and the step's overheads removed
WARMUP = 3
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "speed_cpu.json"


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n x n matrix product in `dtype` (best of `repeats`): the ceiling the model's products approach."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bare_steps(recipe: str, precision: str, steps: int) -> list[float]:
    """tok/s of `steps` bare training steps (subprocess mode `--bare`): the model, optimizer and batches the trainer
    would use, and nothing around the step."""
    from contextlib import nullcontext

    from minilongllora.model import lm_loss
    from minilongllora.train import build_model, load_dataset, make_optimizer

    cfg = get_recipe(recipe, precision=precision, **SHAPE[recipe])
    model = build_model(cfg, precision="fp32").train()  # the CPU trainer keeps every weight in fp32
    optimizer = make_optimizer(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    data = load_dataset(cfg)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    rates = []
    for step in range(steps):
        t0 = time.perf_counter()
        tokens = data.batch(step, cfg.batch_size)
        with autocast():
            logits = model(tokens)
        lm_loss(logits, tokens).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rates.append(tokens.numel() / (time.perf_counter() - t0))
    return rates


def run_variant(variant: str, recipe: str, steps: int, threads: int, baseline_dir: Path | None) -> float:
    """Median tok/s after WARMUP steps of one variant, run in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    kind, precision = variant.split("-")
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "bare":
            cmd = [sys.executable, __file__, "--bare", recipe, precision, str(steps)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rates = json.loads(out.strip().splitlines()[-1])
        else:
            if kind == "baseline":
                env["PYTHONPATH"] = str(baseline_dir)
            cmd = [sys.executable, "-m", "minilongllora", RECIPES[recipe], "--recipe", recipe, "--steps", str(steps),
                   "--precision", precision, "--out-dir", f"{tmp}/run", "--eval-every", "0", "--save-every", "0",
                   "--log-every", str(steps)]
            if kind != "baseline":
                cmd += [a for k, v in SHAPE[recipe].items() for a in (f"--{k.replace('_', '-')}", str(v))]
            done = subprocess.run(cmd, env=env, cwd=baseline_dir if kind == "baseline" else ROOT, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            rates = [json.loads(line)["tok_per_s"] for line in open(f"{tmp}/run/metrics.jsonl")]
    return statistics.median(rates[WARMUP:])


def export_baseline(ref: str, into: Path) -> Path:
    """The package as it was at git commit `ref`, unpacked into `into` (with the shipped data it reads)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "minilongllora", "data"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def model_flops_per_token(recipe: str) -> float:
    """Training FLOPs per token: 3 x the forward pass (flops.py counts it as the paper's Table 11 does)."""
    from minilongllora.trainconfig import resolve_model_config

    cfg = get_recipe(recipe, **SHAPE[recipe])
    config, _ = resolve_model_config(cfg)
    f = flops_breakdown(config, cfg.seq_len, group_size_ratio=cfg.group_size_ratio)
    total = f["total_full"] if cfg.attention == "full" else f["total_s2"]
    return 3 * total * 1e12 / cfg.seq_len


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="steps per run (the first 3 are not timed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline", default=BASELINE, help="git commit of the old trainer, or 'none'")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--bare", nargs=3, metavar=("RECIPE", "PRECISION", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bare:  # subprocess mode
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(bare_steps(args.bare[0], args.bare[1], int(args.bare[2]))))
        return
    if args.quick:
        args.rounds, args.steps, args.baseline = 1, 6, "none"
    torch.set_num_threads(args.threads)
    busy = warn_if_busy(args.threads)
    variants = ["trainer-fp32", "trainer-bf16", "bare-fp32", "bare-bf16"]
    with tempfile.TemporaryDirectory() as tmp:
        baseline_dir = None
        if args.baseline != "none":
            baseline_dir = export_baseline(args.baseline, Path(tmp))
            variants.insert(0, "baseline-fp32")
        peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
        print(f"matrix-product peak, {args.threads} threads: fp32 {peak['fp32']:.0f} GFLOP/s, "
              f"bf16 {peak['bf16']:.0f} GFLOP/s")
        rates = {r: {v: [] for v in variants} for r in args.recipes}
        for rnd in range(args.rounds):
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for recipe in args.recipes:
                for v in order:
                    rates[recipe][v].append(run_variant(v, recipe, args.steps, args.threads, baseline_dir))
                    print(f"round {rnd + 1}: {recipe:<15} {v:<14} {rates[recipe][v][-1]:>8.0f} tok/s", flush=True)
    results = {}
    for recipe, by_variant in rates.items():
        tok = {v: statistics.median(r) for v, r in by_variant.items()}
        ref = tok.get("baseline-fp32", tok["trainer-fp32"])
        flops = model_flops_per_token(recipe)
        results[recipe] = {
            "tok_per_s": tok, "per_round": by_variant,
            "trainer_bf16_over_baseline_fp32": tok["trainer-bf16"] / ref,
            "trainer_bf16_over_trainer_fp32": tok["trainer-bf16"] / tok["trainer-fp32"],
            "bare_bf16_over_bare_fp32": tok["bare-bf16"] / tok["bare-fp32"],
            "trainer_over_bare_bf16": tok["trainer-bf16"] / tok["bare-bf16"],
            "mfu_bf16": flops * tok["trainer-bf16"] / (peak["bf16"] * 1e9),
            "mfu_fp32_of_fp32_peak": flops * tok["trainer-fp32"] / (peak["fp32"] * 1e9),
            "train_flops_per_token": flops,
        }
    print(f"\n{'recipe':<16}" + "".join(f"{v:>15}" for v in variants) + f"{'bf16/old fp32':>15}{'MFU bf16':>10}")
    for recipe, r in results.items():
        print(f"{recipe:<16}" + "".join(f"{r['tok_per_s'][v]:>15.0f}" for v in variants)
              + f"{r['trainer_bf16_over_baseline_fp32']:>14.2f}x{100 * r['mfu_bf16']:>9.1f}%")
    write_results(args.out, {"machine": {**machine_info(), "busy_warning": busy}, "quick": args.quick,
                             "settings": {"rounds": args.rounds, "steps": args.steps, "warmup_steps": WARMUP,
                                          "threads": args.threads, "baseline": args.baseline},
                             "matmul_peak_gflops": peak, "recipes": results})
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
