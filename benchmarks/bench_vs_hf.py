"""Benchmark: a whole LoRA+ training step of minilongllora against transformers + peft, same config, weights, threads.

    python benchmarks/bench_vs_hf.py                # tiny and small at n = 1024 … 8192 (~13 min on 2 cores)
    python benchmarks/bench_vs_hf.py --quick        # seconds: tiny and small at n = 256, 512, 2 repeats
    python benchmarks/bench_vs_hf.py --models tiny --sizes 1024 2048
    python benchmarks/bench_vs_hf.py --threads 1    # steadier on a shared machine (default: torch's default)

Expected duration of the default sweep on a quiet 2-core machine (2 threads, fp32; estimated from the FLOP counts at
the ~100 GFLOP/s a step reaches here, the quick runs and shared/ECOSYSTEM.md; ±50 %): ~13 min, `tiny` ~3 min and
`small` ~10 min (its 8192 step ~25 s for hf and ours_full, ~15 s for ours_s2). Adding `--sizes … 16384` adds
~2 min for tiny and ~17 min for small (~85 s per full-attention step); the `--max-seconds-per-step` guard (default
180) skips a size whose step is predicted (FLOP-scaled from the previous size) to exceed it.

Three implementations of one LoRA+ training step (LongLoRA §3.3: LoRA r=8, α=16 on q, k, v, o, plus trainable
embedding and every RMSNorm; LM head and all other weights frozen), batch 1, random tokens:
  hf         transformers `LlamaForCausalLM` (attn_implementation="sdpa", use_cache=False) wrapped by
             `peft.get_peft_model(LoraConfig(r=8, lora_alpha=16, target_modules=q/k/v/o_proj,
             modules_to_save=["embed_tokens", "norm"]))` ("norm" matches every RMSNorm: peft's suffix rule);
             loss = `model(input_ids=x, labels=x).loss`
  ours_full  `apply_lora_plus(from_hf(dir))`, full causal attention; loss = `lm_loss(model(x), x)`
  ours_s2    the same with S2-Attn (split, G = n/4) while training
All three share the weights: our `Llama` is built once per preset (seeded; norms set around 1 with some spread),
exported with `to_hf`, and every model is loaded from that directory; LoRA A is copied from peft's initialization and
B set to the same random values, so the LoRA path is exercised. RoPE is linearly interpolated by ceil(n / context)
(LongLoRA's recipe), written as `rope_parameters` in config.json. Optimizer: AdamW(lr 2e-5, β=(0.9, 0.95), weight
decay 0) over the trainable parameters of each model.

Same computation first: at every size, before any step, the loss of ours_full and hf on the step's tokens (same
weights, fp32, no autocast, no grad) must agree to `--loss-tol` (relative, default 1e-5) or the script stops; at the
first size of each preset the losses after the timed steps (1 + repeats AdamW steps each) are compared too, which
checks that gradients and optimizer agree.

Time: the three are interleaved in one process: one warm-up step each, then `--repeats` rounds in rotating order
(hf, full, s2; full, s2, hf; …); median seconds per step, tokens/s = n / median. Ratios (tokens/s over hf's) are the
result: they are measured under the same machine load.

Memory: each (implementation, n) runs once more in a fresh process: model loaded from the exported directory, LoRA+
applied, AdamW built, one warm-up step at 256 tokens (AdamW's moments exist), then the kernel's peak-RSS counter is
reset (`echo 5 > /proc/self/clear_refs`), RSS read, one step at n run and the peak read (`VmHWM`). `MB` = peak − RSS
before: activations, gradients, workspace and allocator slack of one step. The weights, optimizer state and the
imported libraries (transformers and peft weigh a few hundred MB) are in `base_mb`, reported in the JSON, not in MB.

Results: benchmarks/results/vs_hf_cpu.json (machine, command line, threads, date, one entry per preset). These
machines are shared and noisy: only ratios measured in one run mean much.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import (  # noqa: E402
    ROOT,
    SizeGuard,
    autocast_context,
    make_optimizer,
    measure_step_peak,
    machine_info,
    random_tokens,
    run_memory_worker,
    step_config,
    step_flops,
    time_interleaved,
    train_step,
    warn_if_busy,
    write_results,
)

from bench_speed import matmul_peak  # noqa: E402

from minilongllora import from_hf, to_hf  # noqa: E402
from minilongllora.lora import LoRALinear, apply_lora_plus  # noqa: E402
from minilongllora.model import Llama, lm_loss  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "vs_hf_cpu.json"
IMPLS = ("hf", "ours_full", "ours_s2")
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj"]
WARMUP_TOKENS = 256


# the three models ---------------------------------------------------------------------------------------------------
def export_base(preset: str, n: int, root: Path, weights: Path | None) -> Path:
    """A HF directory for `preset` with RoPE interpolated for n tokens. The first call builds and exports our Llama;
    later calls (other n, same weights) write only config.json and link the weights file."""
    cfg = step_config(preset, n, "full")
    path = root / f"{preset}_n{n}"
    if weights is None:
        torch.manual_seed(0)
        model = Llama(cfg)
        with torch.no_grad():  # norm weights around 1, so a wrong norm cannot pass the loss check by symmetry
            for name, p in model.named_parameters():
                if p.ndim == 1:
                    p.uniform_(0.75, 1.25)
        return to_hf(model, path)
    path.mkdir(parents=True)
    config = cfg.to_hf_dict()
    config["dtype"] = "float32"  # as to_hf writes it
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (path / "model.safetensors").symlink_to(weights / "model.safetensors")
    return path


def quiet_transformers() -> None:
    """No weight-loading progress bars, and no FutureWarning about peft calling `is_gradient_checkpointing`."""
    import warnings

    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def peft_model(path: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    quiet_transformers()

    hf = LlamaForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    hf.config.use_cache = False  # training: no KV cache
    config = LoraConfig(r=8, lora_alpha=16, target_modules=PROJ, modules_to_save=["embed_tokens", "norm"],
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(hf, config).train()


def ours_model(path: Path, attention: str) -> Llama:
    return apply_lora_plus(from_hf(path, attention=attention), r=8, alpha=16).train()


def build(impl: str, path: Path):
    model = peft_model(path) if impl == "hf" else ours_model(path, impl.removeprefix("ours_"))
    return model, make_optimizer([p for p in model.parameters() if p.requires_grad])


def peft_name(ours: str) -> str:
    """Our trainable parameter name → the peft model's (adapter "default")."""
    module, _, leaf = ours.rpartition(".")
    if leaf in ("lora_A", "lora_B"):
        return f"base_model.model.model.{module}.{leaf}.default.weight"
    return f"base_model.model.model.{module}.modules_to_save.default.{leaf}"


def share_lora(ours: Llama, pm, seed: int = 0) -> None:
    """Give ours peft's LoRA A and give both the same random B (B = 0 at init would leave LoRA unexercised)."""
    g = torch.Generator().manual_seed(seed)
    peft_params = dict(pm.named_parameters())
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, LoRALinear):
                module.lora_A.copy_(peft_params[peft_name(f"{name}.lora_A")])
                b = torch.randn(module.lora_B.shape, generator=g) * 0.02
                module.lora_B.copy_(b)
                peft_params[peft_name(f"{name}.lora_B")].copy_(b)


def hf_step(pm, opt, tokens: torch.Tensor, bf16: bool = False) -> float:
    with autocast_context(bf16):
        loss = pm(input_ids=tokens, labels=tokens, use_cache=False).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def step_fn(impl: str):
    return hf_step if impl == "hf" else train_step


@torch.no_grad()
def fp32_losses(models: dict, tokens: torch.Tensor) -> dict[str, float]:
    """Loss of ours_full and hf on `tokens`, fp32, no autocast, no grad (train mode kept)."""
    return {"ours_full": lm_loss(models["ours_full"][0](tokens), tokens).item(),
            "hf": models["hf"][0](input_ids=tokens, labels=tokens, use_cache=False).loss.item()}


def check_same(losses: dict[str, float], tol: float, what: str) -> float:
    diff = abs(losses["ours_full"] - losses["hf"])
    if diff > tol * max(1.0, abs(losses["hf"])):
        raise SystemExit(f"{what}: ours_full loss {losses['ours_full']:.8f} != hf loss {losses['hf']:.8f} "
                         f"(|diff| {diff:.2e} > --loss-tol {tol:g} relative): not the same computation, no benchmark")
    return diff


# memory: one fresh process per measurement ------------------------------------------------------------------------
def memory_worker(spec: dict) -> None:
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model, opt = build(spec["impl"], Path(spec["path"]))
    step, vocab = step_fn(spec["impl"]), spec["vocab"]
    step(model, opt, random_tokens(vocab, WARMUP_TOKENS), spec["bf16"])
    tokens = random_tokens(vocab, spec["n"])
    print(json.dumps(measure_step_peak(lambda: step(model, opt, tokens, spec["bf16"]))))


# the benchmark ------------------------------------------------------------------------------------------------------
def bench_preset(preset: str, sizes: list[int], repeats: int, bf16: bool, cap: float, tol: float, memory: bool,
                 root: Path, peak_gflops: float) -> dict:
    rows, skipped, guard, weights = [], [], SizeGuard(cap), None
    for i, n in enumerate(sorted(sizes)):
        cfg = step_config(preset, n, "full")
        flops = step_flops(cfg, n, "lora_plus")
        reason = guard.reason_to_skip(n, flops["train_tflops_full"])
        if reason:
            skipped.append({"n": n, "reason": reason})
            print(f"# {preset} n={n}: skipped ({reason})", flush=True)
            continue
        path = export_base(preset, n, root, weights)
        weights = weights or path
        models = {impl: build(impl, path) for impl in IMPLS}
        share_lora(models["ours_full"][0], models["hf"][0])
        models["ours_s2"][0].load_state_dict(models["ours_full"][0].state_dict())
        n_trainable = {impl: sum(p.numel() for p in m.parameters() if p.requires_grad)
                       for impl, (m, _) in models.items()}
        if len(set(n_trainable.values())) != 1:
            raise SystemExit(f"trainable parameter counts differ: {n_trainable}")
        tokens = random_tokens(cfg.vocab_size, n)
        row = {"n": n, "group_size": cfg.group_size(n), "rope_factor": (cfg.rope_scaling or {}).get("factor", 1.0),
               "trainable_params": n_trainable["hf"], "loss": fp32_losses(models, tokens)}  # same computation first
        row["loss_abs_diff"] = check_same(row["loss"], tol, f"{preset} n={n}")
        steps = {impl: (lambda m=m, o=o, f=step_fn(impl): f(m, o, tokens, bf16)) for impl, (m, o) in models.items()}
        times, warm, losses = time_interleaved(steps, repeats)
        row["warmup_step_loss"] = losses  # ours_s2 differs from the others by design (grouped attention)
        if i == 0:  # after the same number of AdamW steps (1 + repeats each): gradients and optimizer agree too
            after = fp32_losses(models, tokens)
            row["loss_after_steps"] = after
            row["loss_after_steps_abs_diff"] = abs(after["ours_full"] - after["hf"])
        del models, steps
        gc.collect()
        row.update({f"{impl}_s": statistics.median(ts) for impl, ts in times.items()})
        row.update({f"{impl}_s_all": ts for impl, ts in times.items()})
        row.update({f"{impl}_warmup_s": t for impl, t in warm.items()})
        row.update({f"{impl}_tokens_per_s": n / row[f"{impl}_s"] for impl in IMPLS})
        row.update({f"{impl}_vs_hf": row[f"{impl}_tokens_per_s"] / row["hf_tokens_per_s"] for impl in IMPLS[1:]})
        row["train_tflops_full"] = flops["train_tflops_full"]
        # model FLOPs utilization: 3 x forward FLOPs (S2-Attn's for ours_s2) per second over the bf16 matmul peak
        model_tflops = {"hf": flops["train_tflops_full"], "ours_full": flops["train_tflops_full"],
                        "ours_s2": flops["train_tflops_s2"]}
        row.update({f"{impl}_mfu": model_tflops[impl] * 1e3 / row[f"{impl}_s"] / peak_gflops for impl in IMPLS})
        rows.append(row)
        guard.record(n, flops["train_tflops_full"], max(row[f"{impl}_s"] for impl in IMPLS))
        print(f"# {preset} timed n={n}: " + ", ".join(f"{impl} {row[impl + '_s']:.3f} s" for impl in IMPLS) +
              f"; loss |ours_full - hf| = {row['loss_abs_diff']:.1e}", flush=True)
    for row in rows if memory else []:
        path = root / f"{preset}_n{row['n']}"
        for impl in IMPLS:
            spec = {"impl": impl, "path": str(path), "n": row["n"], "vocab": step_config(preset, row["n"], "full")
                    .vocab_size, "bf16": bf16, "threads": torch.get_num_threads()}
            mem = run_memory_worker("--_memory-worker", spec, script=__file__)
            row.update({f"{impl}_mb": mem["peak_mb"], f"{impl}_base_mb": mem["base_mb"]})
    return {"rows": rows, "skipped": skipped}


HEADER = (f"{'n':>6} {'hf tok/s':>9} {'full tok/s':>10} {'S2 tok/s':>9} {'full/hf':>8} {'S2/hf':>7} "
          f"{'hf MB':>7} {'full MB':>8} {'S2 MB':>7} {'loss diff':>9} {'hf MFU':>7} {'full MFU':>8}")


def format_row(r: dict) -> str:
    mb = lambda key, w: f"{r[key]:>{w}.0f}" if key in r else f"{'-':>{w}}"  # noqa: E731
    return (f"{r['n']:>6} {r['hf_tokens_per_s']:>9.0f} {r['ours_full_tokens_per_s']:>10.0f} "
            f"{r['ours_s2_tokens_per_s']:>9.0f} {r['ours_full_vs_hf']:>7.2f}x {r['ours_s2_vs_hf']:>6.2f}x "
            f"{mb('hf_mb', 7)} {mb('ours_full_mb', 8)} {mb('ours_s2_mb', 7)} {r['loss_abs_diff']:>9.1e} "
            f"{100 * r['hf_mfu']:>6.1f}% {100 * r['ours_full_mfu']:>7.1f}%")


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_memory-worker":
        return memory_worker(json.loads(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=("tiny", "small"), default=["tiny", "small"])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--repeats", type=int, default=3, help="timed steps per implementation (default 3)")
    p.add_argument("--bf16", action="store_true", help="CPU bf16 autocast for the timed steps (weights in fp32)")
    p.add_argument("--max-seconds-per-step", type=float, default=180.0,
                   help="skip larger sizes of a preset once a step takes, or is predicted from the previous size's "
                        "FLOP-scaled time to take, longer than this (default 180; 0 = no guard)")
    p.add_argument("--loss-tol", type=float, default=1e-5,
                   help="relative tolerance of |loss ours_full - loss hf| (default 1e-5)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default 0: torch's own default)")
    p.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    p.add_argument("--quick", action="store_true", help="check the script works in seconds: n = 256, 512, 2 repeats")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.repeats = [256, 512], min(args.repeats, 2)
    for n in args.sizes:
        if n % 8:
            raise SystemExit(f"seq_len {n} must be a multiple of 8 (G = n/4 must be even)")
    import peft
    import transformers

    machine = machine_info()
    machine.update(transformers=transformers.__version__, peft=peft.__version__)
    print(f"# {machine['processor']}, {machine['cpus_usable']} usable CPUs, torch {machine['torch']} "
          f"({machine['torch_threads']} threads), transformers {transformers.__version__}, peft {peft.__version__}; "
          f"LoRA+ step, {'bf16 autocast' if args.bf16 else 'fp32'}, median of {args.repeats}")
    machine["busy_warning"] = warn_if_busy(machine["torch_threads"])
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    machine["matmul_peak_gflops"] = peaks
    print(f"# matrix-product peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s (MFU is over "
          f"the bf16 peak)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_vs_hf_") as tmp:
        for preset in args.models:
            results[preset] = bench_preset(preset, args.sizes, args.repeats, args.bf16, args.max_seconds_per_step,
                                           args.loss_tol, not args.no_memory, Path(tmp), peaks["bf16"])
            cfg = step_config(preset, 1, "full")
            results[preset]["config"] = {"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                                         "ffn_dim": cfg.ffn_dim, "vocab_size": cfg.vocab_size,
                                         "max_seq_len": cfg.max_seq_len}
            print(f"\n{preset}: dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads, ffn {cfg.ffn_dim}, vocab "
                  f"{cfg.vocab_size}; tokens/s (ratios over hf, measured in this run), peak extra MB of one step")
            print(HEADER)
            for row in results[preset]["rows"]:
                print(format_row(row))
            for skip in results[preset]["skipped"]:
                print(f"{skip['n']:>6}  skipped: {skip['reason']}")
            for row in results[preset]["rows"][:1]:
                if "loss_after_steps_abs_diff" in row:
                    print(f"# loss after {1 + args.repeats} AdamW steps each at n={row['n']}: "
                          f"|ours_full - hf| = {row['loss_after_steps_abs_diff']:.1e}")
    machine["loadavg_at_end"] = list(os.getloadavg())
    write_results(args.out, {
        "machine": machine,
        "settings": {"method": "LoRA+ (r=8, alpha=16, q/k/v/o; embedding and every norm trainable)",
                     "hf": "LlamaForCausalLM sdpa + peft get_peft_model, modules_to_save=[embed_tokens, norm]",
                     "dtype": "bf16 autocast (fp32 weights)" if args.bf16 else "float32", "batch": 1,
                     "optimizer": "AdamW lr 2e-5, betas (0.9, 0.95), weight decay 0", "repeats": args.repeats,
                     "threads": machine["torch_threads"], "max_seconds_per_step": args.max_seconds_per_step,
                     "loss_tol_relative": args.loss_tol, "quick": args.quick,
                     "timing": "median of interleaved steps (rotating order), after one warm-up step each",
                     "memory": f"peak RSS (VmHWM, reset) minus RSS before one step at n, fresh process after a "
                               f"{WARMUP_TOKENS}-token warm-up step; libraries, weights, AdamW state in base_mb, MB"},
        "models": results,
    })
    print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()
