"""The GPU check: one command, under 8 minutes on one CUDA GPU, that tells whether the CUDA path does what the CPU
tests promise, and how fast it is.

    python benchmarks/gpu_check.py            # on a CUDA machine: writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --dry-run  # the same code on the CPU with tiny shapes (CI runs this)

Three sections, each recorded even if a later one fails:
  parity     our model in bf16 autocast on the GPU (as the trainer runs it) against fp32 on the CPU, same random
             weights and tokens; and fp32 on the GPU (TF32 off) against fp32 on the CPU. Tolerances: fp32 ≤ 1e-4
             relative (only the order of the sums differs); bf16 ≤ 3e-2 relative in L2 with ≥ 95% of the argmax
             tokens equal, because bf16 keeps 8 bits of mantissa (each rounding ≈ 2^-9 relative) and a forward pass
             rounds a few dozen times in a row, so errors of about 1e-2 are the expected size, not a bug.
  backends   which SDPA kernel runs full attention and S2-Attn's grouped calls in bf16: the aten ops seen by the
             profiler under torch's own choice, and whether each runs with only the flash kernel allowed.
  throughput one LoRA+ training step as in the paper (r=8, α=16 on q/k/v/o, embedding and norms trainable; frozen
             weights in bf16, bf16 autocast, gradient checkpointing, AdamW), batch 1, for the `small` preset and a
             Llama-2-7B-shaped model cut to 4 layers, at 8k, 16k and 32k tokens, full attention vs S2-Attn (split,
             groups of n/4): tokens/s (median of 3 steps after one warm-up), peak GPU memory, and model FLOPs
             utilization: 3 x the forward FLOPs of flops.py (the paper's Table 11 count) per second, over the bf16
             matrix-product peak measured in the same run (a 8192² product; 2048² in the dry run).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from minilongllora.attention import causal_attention, sparse_attention  # noqa: E402
from minilongllora.config import LlamaConfig  # noqa: E402
from minilongllora.flops import flops_breakdown  # noqa: E402
from minilongllora.lora import apply_lora_plus  # noqa: E402
from minilongllora.model import Llama, lm_loss  # noqa: E402

FULL = {"models": {"small": ("small", {}), "llama2-7b-4layers": ("llama2-7b", {"n_layers": 4})},
        "lengths": [8192, 16384, 32768], "parity_len": 2048, "peak_n": 8192}
DRY = {"models": {"small": ("small", {"n_layers": 1, "dim": 64, "n_heads": 4, "ffn_dim": 128}),
                  "llama2-7b-4layers": ("llama2-7b", {"n_layers": 2, "dim": 64, "n_heads": 4, "ffn_dim": 128,
                                                      "vocab_size": 512})},
       "lengths": [256, 512], "parity_len": 128, "peak_n": 1024}
PARITY_FP32, PARITY_BF16, PARITY_ARGMAX = 1e-4, 3e-2, 0.95
STEPS = 3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_model(preset: str, overrides: dict, max_len: int, device: torch.device, seed: int = 0) -> Llama:
    """A seeded random model built on `device` (a 7B-shaped model never passes through the CPU)."""
    torch.manual_seed(seed)
    config = LlamaConfig.from_preset(preset, **{**overrides, "max_seq_len": max(max_len, 256)})
    with device:
        return Llama(config)


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref).norm() / ref.norm()).item()


def check_parity(spec: dict, device: torch.device) -> dict:
    """Logits on `device` (fp32 with TF32 off, and bf16 autocast) against fp32 on the CPU."""
    preset, overrides = spec["models"]["small"]
    n = spec["parity_len"]
    cpu_model = make_model(preset, overrides, n, torch.device("cpu")).eval()
    tokens = torch.randint(0, cpu_model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = cpu_model(tokens)
        model = copy.deepcopy(cpu_model).to(device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
        fp32 = model(tokens.to(device)).cpu()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = model(tokens.to(device)).float().cpu()
    out = {"tokens": n, "model": preset, "fp32_relative_error": relative_error(fp32, ref),
           "bf16_relative_error": relative_error(bf16, ref),
           "bf16_argmax_agreement": (bf16.argmax(-1) == ref.argmax(-1)).float().mean().item(),
           "tolerances": {"fp32": PARITY_FP32, "bf16": PARITY_BF16, "argmax": PARITY_ARGMAX}}
    out["passed"] = (out["fp32_relative_error"] <= PARITY_FP32 and out["bf16_relative_error"] <= PARITY_BF16
                     and out["bf16_argmax_agreement"] >= PARITY_ARGMAX)
    return out


def sdpa_ops(fn) -> list[str]:
    """The scaled-dot-product aten ops (or, on the CPU's bf16 path, the batched products) that `fn` calls."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    names = {e.name for e in prof.events()}
    return sorted(n for n in names if "scaled_dot_product" in n or "attention" in n or n in ("aten::bmm",
                                                                                            "aten::baddbmm"))


def check_backends(device: torch.device, n: int) -> dict:
    """Which kernels run full attention and S2-Attn in bf16, and whether they run with only flash allowed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(1, 8, n, 64, device=device, dtype=torch.bfloat16) for _ in range(3))
    calls = {"full": lambda: causal_attention(q, k, v), "s2": lambda: sparse_attention(q, k, v, "s2", n // 4)}
    out = {}
    for name, fn in calls.items():
        entry = {"ops": sdpa_ops(fn)}
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                fn()
            entry["flash_only_runs"] = True
        except RuntimeError as e:  # no flash kernel for these inputs on this device
            entry["flash_only_runs"], entry["flash_error"] = False, str(e).splitlines()[0][:300]
        out[name] = entry
    return out


def matmul_peak(device: torch.device, n: int) -> float:
    """TFLOP/s of an n x n bf16 product (best of 10): the ceiling for MFU, measured, not taken from a data sheet."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    a @ b
    times = []
    for _ in range(10):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e12


def lora_plus_step_model(preset: str, overrides: dict, max_len: int, device: torch.device) -> Llama:
    """LoRA+ as the paper's recipe, frozen weights in bf16 and trainable ones in fp32 (as train.build_model on CUDA),
    gradient checkpointing on."""
    model = make_model(preset, overrides, max_len, device)
    apply_lora_plus(model, r=8, alpha=16.0)
    for p in model.parameters():
        p.data = p.data.to(torch.float32 if p.requires_grad else torch.bfloat16)
    model.gradient_checkpointing = True
    return model.train()


def time_steps(model: Llama, n: int, attention: str, device: torch.device) -> dict:
    """Median seconds of STEPS training steps after one warm-up, and the peak memory of a step."""
    model.config.attention = attention  # the pattern the forward pass reads while training
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.95), weight_decay=0.0)
    tokens = torch.randint(0, model.config.vocab_size, (1, n), device=device)
    times = []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for i in range(STEPS + 1):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = lm_loss(model(tokens), tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"seconds": statistics.median(times), "peak_gib": peak, "loss": loss.item()}


def check_throughput(spec: dict, device: torch.device, peak_tflops: float) -> dict:
    out = {}
    for name, (preset, overrides) in spec["models"].items():
        model = lora_plus_step_model(preset, overrides, max(spec["lengths"]), device)
        rows = []
        for n in spec["lengths"]:
            f = flops_breakdown(model.config, n, group_size_ratio=0.25)
            for attention in ("full", "s2"):
                try:
                    r = time_steps(model, n, attention, device)
                except torch.OutOfMemoryError as e:
                    rows.append({"tokens": n, "attention": attention, "error": f"out of memory: {e}"[:300]})
                    continue
                fwd = f["total_full"] if attention == "full" else f["total_s2"]
                r.update(tokens=n, attention=attention, tok_per_s=n / r["seconds"],
                         mfu=3 * fwd / r["seconds"] / peak_tflops)
                rows.append(r)
                print(f"{name:<18} {n:>6} {attention:<4} {r['tok_per_s']:>9.0f} tok/s  MFU {100 * r['mfu']:5.1f}%  "
                      f"peak {r['peak_gib'] if r['peak_gib'] is None else round(r['peak_gib'], 2)} GiB", flush=True)
        out[name] = {"config": {k: getattr(model.config, k) for k in ("dim", "n_layers", "n_heads", "ffn_dim",
                                                                        "vocab_size")}, "rows": rows}
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same code on the CPU with tiny shapes")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/gpu_check.json, "
                   "gpu_check_dry_run.json with --dry-run)")
    args = p.parse_args(argv)
    spec = DRY if args.dry_run else FULL
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; pass --dry-run to run the check on the CPU with tiny shapes", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    out_path = args.out or ROOT / "benchmarks" / "results" / ("gpu_check_dry_run.json" if args.dry_run
                                                              else "gpu_check.json")
    started = time.time()
    results = {"dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
               "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
               "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}

    def save():
        results["seconds"] = round(time.time() - started, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1) + "\n")

    ok = True
    sections = [("parity", lambda: check_parity(spec, device)),
                ("backends", lambda: check_backends(device, spec["lengths"][0])),
                ("matmul_peak_tflops", lambda: matmul_peak(device, spec["peak_n"])),
                ("throughput", lambda: check_throughput(spec, device, results["matmul_peak_tflops"]))]
    for name, run in sections:
        try:
            results[name] = run()
        except Exception:  # record it and go on: a failed section must not hide the others' results
            results[name] = {"error": traceback.format_exc(limit=3)}
            ok = False
            print(f"{name}: FAILED\n{results[name]['error']}", file=sys.stderr)
        else:
            print(f"{name}: {json.dumps(results[name]) if name != 'throughput' else 'done'}", flush=True)
        save()
    ok = ok and results["parity"].get("passed", False)
    print(f"{'passed' if ok else 'FAILED'} in {time.time() - started:.0f} s; results: {out_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
