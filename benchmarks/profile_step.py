"""Where a LoRA+ training step spends its time: ours (full attention) against transformers + peft, by kind of op.

    python benchmarks/profile_step.py                       # tiny and small at n = 2048, fp32 and bf16 (~2 min)
    python benchmarks/profile_step.py --models small --sizes 4096 --precisions bf16

The same step as `bench_vs_hf.py` (same weights, same LoRA+, AdamW), profiled with `torch.profiler` over `--steps`
steps after one warm-up step. Each op's self CPU time is put in one bucket:
  matmul      aten::mm / addmm / bmm / baddbmm / linear / matmul (and their backward's products)
  attention   SDPA's kernels (flash / math / efficient, forward and backward), softmax and its backward
  optimizer   AdamW (fused or foreach kernels, `_fused_adamw_`, `_foreach_*`)
  copy/cast   aten::copy_ / to / _to_copy / clone / contiguous (dtype casts of autocast included)
  other       everything else (elementwise: RMSNorm, SiLU, RoPE, loss, embedding, ...)
Prints ms per step by bucket for each implementation: the answer to "ours is no faster than transformers in fp32,
why?" is that both spend their time in the same matrix-product and SDPA kernels.
Writes benchmarks/results/profile_step_cpu.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import ROOT, machine_info, warn_if_busy, write_results  # noqa: E402
from bench_vs_hf import build, export_base, random_tokens, share_lora, step_config, step_fn  # noqa: E402

BUCKETS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul"),
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax"),
    "optimizer": ("adamw", "_foreach_", "adam"),
    "copy/cast": ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous"),
}
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "profile_step_cpu.json"


def bucket(name: str) -> str:
    low = name.lower()
    for kind, keys in BUCKETS.items():
        if any(low == k or (not k.startswith("aten::") and k in low) for k in keys):
            return kind
    return "other"


def profile_impl(impl: str, path: Path, ours_ref, tokens: torch.Tensor, bf16: bool, steps: int) -> dict:
    model, opt = build(impl, path)
    if impl == "hf":
        share_lora(ours_ref, model)
    elif ours_ref is not None:
        model.load_state_dict(ours_ref.state_dict())
    step = step_fn(impl)
    step(model, opt, tokens, bf16)  # warm-up: AdamW's moments exist, kernels chosen
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(model, opt, tokens, bf16)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        kind = bucket(event.key)
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total / 1e3 / steps  # ms per step
    return {"ms_per_step": totals, "total_ms": sum(totals.values()), "model": model}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=("tiny", "small"), default=["tiny", "small"])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048])
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    machine = machine_info()
    machine["busy_warning"] = warn_if_busy(machine["torch_threads"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        for preset in args.models:
            for n in args.sizes:
                path = export_base(preset, n, Path(tmp), None)
                tokens = random_tokens(step_config(preset, n, "full").vocab_size, n)
                for precision in args.precisions:
                    ours = profile_impl("ours_full", path, None, tokens, precision == "bf16", args.steps)
                    hf = profile_impl("hf", path, ours.pop("model"), tokens, precision == "bf16", args.steps)
                    hf.pop("model")
                    row = {"preset": preset, "n": n, "precision": precision, "ours_full": ours, "hf": hf}
                    rows.append(row)
                    print(f"\n{preset} n={n} {precision}: ms per step by kind (self CPU time, {args.steps} steps)")
                    kinds = list(BUCKETS) + ["other"]
                    print(f"{'':>10} " + " ".join(f"{k:>10}" for k in kinds) + f" {'total':>10}")
                    for impl in ("hf", "ours_full"):
                        t = row[impl]["ms_per_step"]
                        print(f"{impl:>10} " + " ".join(f"{t.get(k, 0.0):>10.1f}" for k in kinds)
                              + f" {row[impl]['total_ms']:>10.1f}")
    write_results(args.out, {"machine": machine, "settings": {"steps": args.steps, "buckets": BUCKETS}, "rows": rows})


if __name__ == "__main__":
    main()
