"""Benchmark: full causal attention vs S2-Attn (variant "split", G = n/4), alone and in a whole training step.

Two sections, both run by default (`--sections attention step` picks):
  attention  forward + backward of the attention alone (b=1, h=8, d=32, fp32)
  step       a whole training step of the `tiny` and `small` presets (forward + backward + AdamW over the trainable
             parameters; LoRA+ by default, `--method full` for full fine-tuning), full attention vs S2-Attn

    python benchmarks/bench_attention.py                 # both sections, n = 1024 … 16384 (~23 min, 2 cores)
    python benchmarks/bench_attention.py --quick         # seconds: attention n ≤ 2048; steps n = 256, 512
    python benchmarks/bench_attention.py --sections step --models tiny --sizes 1024 2048 4096
    python benchmarks/bench_attention.py --backend math  # force SDPA's math kernel (writes the n × n matrix out)
    python benchmarks/bench_attention.py --threads 1     # steadier on a shared machine (default: torch's default)

Expected duration of the default sweep on a quiet 2-core machine (2 threads, fp32; estimated from the FLOP counts at
the ~100 GFLOP/s a step reaches here, the quick runs and shared/ECOSYSTEM.md; ±50 %): attention section ~1-2 min;
step section ~21 min: `tiny` ~4 min (all sizes, its 16384 step ~19 s full / ~9 s S2), `small` ~17 min, of which
~11 min is n = 16384 (~85 s full / ~45 s S2 per step, ~5 GB of RAM). `--models tiny` cuts the step section to
~4 min, `--sizes 1024 2048 4096 8192` to ~8 min; the `--max-seconds-per-step` guard (default 180) skips sizes that
would run past it.

Time: the two implementations are interleaved in one process (full, s2, then s2, full, …) and each reports the median
of `--repeats` forward + backward passes after one warm-up, so the speed-up is measured under the same machine load.

Memory: each (implementation, n) runs once more in a fresh subprocess, which allocates its inputs and upstream
gradient, resets the kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`), reads its resident set size, runs one
forward + backward and reads the peak (`VmHWM` in /proc/self/status). The difference is the peak extra resident memory
of the pass: saved activations, the gradients of q, k, v, kernel workspace and allocator slack (page-granular; below
~1 MB it is noise). `getrusage(...).ru_maxrss` cannot be used: after fork + exec it still holds the parent's peak.
With SDPA's fused kernels neither implementation materializes an n × n matrix, so expect similar numbers (the paper's
Table 12 makes the same point about Flash-Attention2); `--backend math` shows the quadratic regime (cf. Table 13).

Predicted speed-ups: FLOPs counted as Table 11 counts them (dense products, no causal halving): 4·n²·d·h for full and
4·n·G·d·h for S2, i.e. n/G = 4; and a causal-aware count (query-key pairs under the masks actually used).

Whole training step (section `step`): for each preset and n, two models with the same weights, one training with full
attention and one with S2-Attn (split, G = n/4), RoPE linearly interpolated by ceil(n / the preset's context) as in
LongLoRA (same cost as no interpolation), batch 1 of random tokens. One step = `lm_loss(model(x), x).backward()`,
`AdamW.step()`, `zero_grad(set_to_none=True)`; AdamW(lr 2e-5, β=(0.9, 0.95), no weight decay) over
`trainable_parameters` only. Timing as above: one warm-up step each, then `--step-repeats` steps interleaved in
alternating order, median. Memory as above, in a fresh process per (preset, n, attention): model and optimizer built,
one warm-up step at 256 tokens (AdamW's moments now exist), then the peak extra RSS of one step at n: activations,
gradients, allocator slack; the weights and the optimizer state are in the baseline (`base_mb`, also reported).
Guard: sizes run in increasing order; a size is skipped (and recorded under `skipped`) once a measured step took more
than `--max-seconds-per-step`, or when the previous size's step, scaled by the FLOP ratio of the two sizes, predicts
that it will.
Predicted speed-up of the step, two ways: `pred 3xfwd` = total_full / total_s2 of `flops.flops_breakdown` (training
≈ 3 × forward FLOPs for every term, so the factor cancels; dense attention as Table 11 counts it); `pred work` counts
the work actually done: attention as query-key pairs under the causal masks (which halves attention's share), and,
with LoRA+, attention ×3 but the frozen matrices ×2 (forward and input gradient, no weight gradient; this raises it).

The results go to benchmarks/results/attention_cpu.json, one key per section (`machine`, `attention`, `step`); other
sections already in the file are kept, so each section can be re-run alone. Every section records its command line,
date and thread count. These machines are shared and noisy: only ratios measured in one run mean much.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from minilongllora.attention import causal_attention, s2_attention  # noqa: E402
from minilongllora.config import LlamaConfig  # noqa: E402
from minilongllora.flops import flops_breakdown  # noqa: E402
from minilongllora.lora import apply_lora_plus, trainable_parameters  # noqa: E402
from minilongllora.model import Llama, lm_loss  # noqa: E402
from minilongllora.rope import interpolation_factor, linear_scaling  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "attention_cpu.json"
IMPLS = {
    "full": lambda q, k, v: causal_attention(q, k, v),
    "s2": lambda q, k, v: s2_attention(q, k, v, q.shape[2] // 4, variant="split"),
}


# helpers ----------------------------------------------------------------------------------------------------------
def backend_context(backend: str):
    if backend == "default":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def make_inputs(b: int, h: int, n: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g).requires_grad_() for _ in range(3))
    return q, k, v, torch.randn(b, h, n, d, generator=g)


def fwd_bwd(impl: str, q, k, v, upstream) -> None:
    q.grad = k.grad = v.grad = None
    IMPLS[impl](q, k, v).backward(upstream)


def predicted_speedups(n: int) -> tuple[float, float]:
    """(dense-FLOP ratio as Table 11 counts it, causal-aware ratio of query-key pairs), for S2 split with G = n/4."""
    G, s = n // 4, n // 8
    tri = lambda m: m * (m + 1) // 2  # noqa: E731  pairs under a causal mask of m tokens
    dense = (4 * n * n) / (4 * n * G)
    pattern1, pattern2 = (n // G) * tri(G), (n // G - 1) * tri(G) + 2 * tri(s)  # split: two half groups at the edges
    return dense, tri(n) / ((pattern1 + pattern2) / 2)


def machine_info() -> dict:
    return {
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def warn_if_busy(threads: int) -> str | None:
    """A warning when other processes already keep the CPUs busy: with more torch threads than idle cores, OpenMP
    threads wait on each other at every barrier and a step can take 10-40x longer (seen on this machine)."""
    load = os.getloadavg()[0]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if load + threads > cpus + 0.5:
        advice = "use a quiet machine, or --threads 1" if threads > 1 else "use a quiet machine"
        msg = (f"WARNING: 1-min load average {load:.1f} on {cpus} CPUs before starting, {threads} torch thread(s): "
               f"other processes compete for the cores and timings can be badly inflated ({advice})")
        print(f"# {msg}", flush=True)
        return msg
    return None


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


# memory: one fresh process per measurement ------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def memory_worker(impl: str, b: int, h: int, n: int, d: int, backend: str, threads: int) -> None:
    """Runs in a subprocess: prints the peak extra resident memory (MB) of one forward + backward."""
    if threads:
        torch.set_num_threads(threads)
    with backend_context(backend):
        fwd_bwd(impl, *make_inputs(1, h, 256, d))  # load kernels and start the thread pool at a negligible size
        inputs = make_inputs(b, h, n, d)
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak RSS) to the current RSS
        before = _status_kib("VmRSS")
        fwd_bwd(impl, *inputs)
        peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mb": (peak - before) / 1024}))


def measure_memory(impl: str, b: int, h: int, n: int, d: int, backend: str) -> float:
    threads = torch.get_num_threads()
    cmd = [sys.executable, __file__, "--_memory-worker", impl, str(b), str(h), str(n), str(d), backend, str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


# section: attention alone -----------------------------------------------------------------------------------------
def time_pair(n: int, repeats: int, b: int, h: int, d: int, backend: str) -> dict[str, list[float]]:
    """Seconds per forward + backward of each implementation, interleaved in alternating order after one warm-up."""
    inputs = make_inputs(b, h, n, d)
    times = {impl: [] for impl in IMPLS}
    with backend_context(backend):
        for impl in IMPLS:
            fwd_bwd(impl, *inputs)
        for r in range(repeats):
            for impl in ("full", "s2") if r % 2 == 0 else ("s2", "full"):
                t0 = time.perf_counter()
                fwd_bwd(impl, *inputs)
                times[impl].append(time.perf_counter() - t0)
    return times


def attention_section(sizes, repeats: int, b: int, h: int, d: int, backend: str, memory: bool) -> dict:
    for n in sizes:
        if n % 8:
            raise ValueError(f"seq_len {n} must be a multiple of 8 (G = n/4 must be even)")
    rows = []
    for n in sizes:  # every timing first, so no memory subprocess runs between timed passes
        times = time_pair(n, repeats, b, h, d, backend)
        row = {"n": n, "group_size": n // 4}
        row.update({f"{impl}_ms": 1e3 * statistics.median(ts) for impl, ts in times.items()})
        row.update({f"{impl}_ms_all": [1e3 * t for t in ts] for impl, ts in times.items()})
        row["speedup"] = row["full_ms"] / row["s2_ms"]
        row["predicted_speedup_flops"], row["predicted_speedup_causal"] = predicted_speedups(n)
        rows.append(row)
        print(f"# timed n={n}: full {row['full_ms']:.1f} ms, s2 {row['s2_ms']:.1f} ms", flush=True)
    for row in rows if memory else []:
        row.update({f"{impl}_mb": measure_memory(impl, b, h, row["n"], d, backend) for impl in IMPLS})
    print(HEADER)
    for row in rows:
        print(format_row(row))
    return {
        "what": "forward+backward of attention alone: full causal (SDPA) vs S2-Attn split, G = n/4",
        "settings": {"batch": b, "heads": h, "head_dim": d, "dtype": "float32", "repeats": repeats,
                     "sdpa_backend": backend, "threads": torch.get_num_threads(),
                     "timing": "median of interleaved repeats, after one warm-up",
                     "memory": "peak RSS (VmHWM, reset) minus RSS after inputs, one fwd+bwd in a fresh process, MB"},
        "rows": rows,
    }


HEADER = (f"{'n':>6} {'full ms':>9} {'s2 ms':>9} {'speed-up':>8} {'pred FLOP':>9} {'pred causal':>11} "
          f"{'full MB':>8} {'s2 MB':>8}")


def format_row(r: dict) -> str:
    mb = lambda key: f"{r[key]:>8.1f}" if key in r else f"{'-':>8}"  # noqa: E731
    return (f"{r['n']:>6} {r['full_ms']:>9.1f} {r['s2_ms']:>9.1f} {r['speedup']:>7.2f}x "
            f"{r['predicted_speedup_flops']:>8.2f}x {r['predicted_speedup_causal']:>10.2f}x "
            f"{mb('full_mb')} {mb('s2_mb')}")


# section: a whole training step ---------------------------------------------------------------------------------
STEP_LR, STEP_BETAS = 2e-5, (0.9, 0.95)  # the paper's AdamW (App. B); weight decay 0
WARMUP_TOKENS = 256  # the memory worker's warm-up step (AdamW's moments are created by the first step)


def step_config(preset: str, n: int, attention: str) -> LlamaConfig:
    """The preset with RoPE linearly interpolated to n tokens (LongLoRA's recipe) and the given training attention."""
    base = LlamaConfig.from_preset(preset)
    factor = interpolation_factor(n, base.max_seq_len)
    return base.replace(rope_scaling=linear_scaling(factor), attention=attention, s2_variant="split",
                        group_size_ratio=0.25)


def autocast_context(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def make_optimizer(params) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=STEP_LR, betas=STEP_BETAS, weight_decay=0.0)


def build_step_model(preset: str, n: int, attention: str, method: str, seed: int = 0):
    """(model in train mode, AdamW over its trainable parameters); the same seed gives the same weights."""
    torch.manual_seed(seed)
    model = Llama(step_config(preset, n, attention))
    if method == "lora_plus":
        apply_lora_plus(model, r=8, alpha=16)  # LoRA on q, k, v, o + trainable embedding and norms (§3.3)
    model.train()
    return model, make_optimizer([p for _, p in trainable_parameters(model)])


def train_step(model, opt, tokens: torch.Tensor, bf16: bool = False) -> float:
    """One optimizer step of our Llama: forward, next-token loss, backward, AdamW, grads freed. Returns the loss."""
    with autocast_context(bf16):
        loss = lm_loss(model(tokens), tokens)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def random_tokens(vocab: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def time_interleaved(steps: dict, repeats: int) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    """steps: name → zero-argument callable doing one step and returning its loss. One warm-up call each, then
    `repeats` rounds, the order rotating each round (a, b, c; b, c, a; …). Returns (seconds per name, warm-up seconds,
    warm-up losses)."""
    names, warm, losses = list(steps), {}, {}
    for name in names:
        t0 = time.perf_counter()
        losses[name] = steps[name]()
        warm[name] = time.perf_counter() - t0
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            gc.collect()
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    return times, warm, losses


def _causal_fraction(n: int) -> tuple[float, float]:
    """Share of the dense products each attention computes under its causal masks: (full, S2 split with G = n/4)."""
    G, s = n // 4, n // 8
    tri = lambda m: m * (m + 1) // 2  # noqa: E731
    pattern1, pattern2 = (n // G) * tri(G), (n // G - 1) * tri(G) + 2 * tri(s)
    return tri(n) / (n * n), (pattern1 + pattern2) / 2 / (n * G)


def step_flops(config: LlamaConfig, n: int, method: str) -> dict:
    """Training-step FLOPs (TFLOPs) and the speed-ups they predict for S2-Attn over full attention."""
    f = flops_breakdown(config, n, group_size_ratio=0.25)
    rest = f["proj"] + f["ffn"] + f["others"]
    frac_full, frac_s2 = _causal_fraction(n)
    rest_factor = 2 if method == "lora_plus" else 3  # frozen matrices: forward + input gradient, no weight gradient
    work_full = 3 * f["attn_full"] * frac_full + rest_factor * rest
    work_s2 = 3 * f["attn_s2"] * frac_s2 + rest_factor * rest
    return {"train_tflops_full": 3 * f["total_full"], "train_tflops_s2": 3 * f["total_s2"],
            "attn_share_full": f["attn_full"] / f["total_full"],
            "predicted_speedup_3xfwd": f["total_full"] / f["total_s2"],
            "predicted_speedup_work": work_full / work_s2, "work_tflops_full": work_full, "work_tflops_s2": work_s2}


def step_memory_worker(spec: dict) -> None:
    """Runs in a subprocess: the peak extra resident memory (MB) of one training step at spec['n']."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model, opt = build_step_model(spec["preset"], spec["n"], spec["attention"], spec["method"])
    train_step(model, opt, random_tokens(model.config.vocab_size, WARMUP_TOKENS), spec["bf16"])
    tokens = random_tokens(model.config.vocab_size, spec["n"])
    print(json.dumps(measure_step_peak(lambda: train_step(model, opt, tokens, spec["bf16"]))))


def measure_step_peak(step) -> dict:
    """Reset the peak-RSS counter, run step(), return {peak_mb: peak − baseline, base_mb, rss_peak_mb}."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak RSS) to the current RSS
    before = _status_kib("VmRSS")
    step()
    peak = _status_kib("VmHWM")
    return {"peak_mb": (peak - before) / 1024, "base_mb": before / 1024, "rss_peak_mb": peak / 1024}


def run_memory_worker(flag: str, spec: dict, script: str = __file__) -> dict:
    """Run `script flag <json spec>` in a fresh Python process and return the JSON it prints last."""
    cmd = [sys.executable, script, flag, json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"memory worker {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class SizeGuard:
    """Skip sizes once a step took more than `cap` seconds, or when the last size's step, scaled by the FLOP ratio,
    predicts more than `cap` for the next one. cap <= 0 disables it."""

    def __init__(self, cap: float):
        self.cap, self.stop, self.last = cap, None, None  # last: (train TFLOPs, slowest median seconds)

    def reason_to_skip(self, n: int, tflops: float) -> str | None:
        if self.cap <= 0:
            return None
        if self.stop:
            return self.stop
        if self.last:
            predicted = self.last[1] * tflops / self.last[0]
            if predicted > self.cap:
                self.stop = (f"predicted {predicted:.3g} s per step at n={n} (FLOP-scaled from the previous size) "
                             f"> --max-seconds-per-step {self.cap:g}")
                return self.stop
        return None

    def record(self, n: int, tflops: float, seconds: float) -> None:
        self.last = (tflops, seconds)
        if self.cap > 0 and seconds > self.cap:
            self.stop = f"a step at n={n} took {seconds:.3g} s > --max-seconds-per-step {self.cap:g}"


def step_section(models: list[str], sizes: list[int], repeats: int, method: str, bf16: bool, cap: float,
                 memory: bool) -> dict:
    for n in sizes:
        if n % 8:
            raise ValueError(f"seq_len {n} must be a multiple of 8 (G = n/4 must be even)")
    out = {}
    for preset in models:
        rows, skipped, guard = [], [], SizeGuard(cap)
        for n in sorted(sizes):  # every timing of this preset first, then its memory subprocesses
            cfg = step_config(preset, n, "full")
            flops = step_flops(cfg, n, method)
            reason = guard.reason_to_skip(n, flops["train_tflops_full"])
            if reason:
                skipped.append({"n": n, "reason": reason})
                print(f"# {preset} n={n}: skipped ({reason})", flush=True)
                continue
            built = {attn: build_step_model(preset, n, attn, method) for attn in ("full", "s2")}
            tokens = random_tokens(cfg.vocab_size, n)
            steps = {attn: (lambda m=m, o=o: train_step(m, o, tokens, bf16)) for attn, (m, o) in built.items()}
            times, warm, losses = time_interleaved(steps, repeats)
            del built, steps
            gc.collect()
            row = {"n": n, "group_size": cfg.group_size(n), "rope_factor": (cfg.rope_scaling or {}).get("factor", 1.0)}
            row.update({f"{a}_s": statistics.median(ts) for a, ts in times.items()})
            row.update({f"{a}_s_all": ts for a, ts in times.items()})
            row.update({f"{a}_warmup_s": t for a, t in warm.items()})
            row.update({f"{a}_loss": v for a, v in losses.items()})
            row["speedup"] = row["full_s"] / row["s2_s"]
            row.update(flops)
            row.update({f"{a}_tokens_per_s": n / row[f"{a}_s"] for a in ("full", "s2")})
            rows.append(row)
            guard.record(n, flops["train_tflops_full"], max(row["full_s"], row["s2_s"]))
            print(f"# {preset} timed n={n}: full {row['full_s']:.3f} s, s2 {row['s2_s']:.3f} s", flush=True)
        for row in rows if memory else []:
            for attn in ("full", "s2"):
                spec = {"preset": preset, "n": row["n"], "attention": attn, "method": method, "bf16": bf16,
                        "threads": torch.get_num_threads()}
                mem = run_memory_worker("--_step-memory-worker", spec)
                row.update({f"{attn}_mb": mem["peak_mb"], f"{attn}_base_mb": mem["base_mb"]})
        cfg = LlamaConfig.from_preset(preset)
        print(f"\n{preset}: dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads, ffn {cfg.ffn_dim}, vocab "
              f"{cfg.vocab_size}; {method}, {'bf16 autocast' if bf16 else 'fp32'}, median of {repeats} steps")
        print(STEP_HEADER)
        for row in rows:
            print(format_step_row(row))
        for skip in skipped:
            print(f"{skip['n']:>6}  skipped: {skip['reason']}")
        out[preset] = {"config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "extra"},
                       "rows": rows, "skipped": skipped}
    return {
        "what": "one training step (forward + backward + AdamW over the trainable parameters), batch 1: full causal "
                "attention vs S2-Attn split, G = n/4, same weights, RoPE linear interpolation ceil(n / context)",
        "settings": {"method": method, "dtype": "bf16 autocast (fp32 weights)" if bf16 else "float32",
                     "optimizer": f"AdamW lr {STEP_LR}, betas {STEP_BETAS}, weight decay 0", "batch": 1,
                     "repeats": repeats, "threads": torch.get_num_threads(), "max_seconds_per_step": cap,
                     "timing": "median of interleaved steps (alternating order), after one warm-up step each",
                     "memory": "peak RSS (VmHWM, reset) minus RSS before one step at n, in a fresh process after a "
                               f"{WARMUP_TOKENS}-token warm-up step (weights and AdamW moments in the baseline), MB",
                     "predicted_speedup_3xfwd": "flops_breakdown total_full / total_s2 (training = 3 x forward)",
                     "predicted_speedup_work": "causal query-key pairs; attention x3, other terms x2 (LoRA+: frozen "
                                               "weights get no weight gradient) or x3 (full fine-tuning)"},
        "models": out,
    }


STEP_HEADER = (f"{'n':>6} {'full s':>8} {'S2 s':>8} {'speed-up':>8} {'pred 3xfwd':>10} {'pred work':>9} "
               f"{'full tok/s':>10} {'S2 tok/s':>9} {'full MB':>8} {'S2 MB':>8}")


def format_step_row(r: dict) -> str:
    mb = lambda key: f"{r[key]:>8.0f}" if key in r else f"{'-':>8}"  # noqa: E731
    return (f"{r['n']:>6} {r['full_s']:>8.3f} {r['s2_s']:>8.3f} {r['speedup']:>7.2f}x "
            f"{r['predicted_speedup_3xfwd']:>9.2f}x {r['predicted_speedup_work']:>8.2f}x "
            f"{r['full_tokens_per_s']:>10.0f} {r['s2_tokens_per_s']:>9.0f} {mb('full_mb')} {mb('s2_mb')}")


def write_results(path: Path, sections: dict) -> None:
    """Update the named sections of the JSON file, keeping any other section already there."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_memory-worker":
        impl, b, h, n, d, backend, threads = sys.argv[2:9]
        return memory_worker(impl, int(b), int(h), int(n), int(d), backend, int(threads))
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_step-memory-worker":
        return step_memory_worker(json.loads(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", choices=("attention", "step"), default=["attention", "step"],
                   help="which sections to run (default: both)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--repeats", type=int, default=5, help="attention section: timed passes per implementation")
    p.add_argument("--batch", type=int, default=1, help="attention section")
    p.add_argument("--heads", type=int, default=8, help="attention section")
    p.add_argument("--head-dim", type=int, default=32, help="attention section")
    p.add_argument("--backend", choices=("default", "math"), default="default", help="attention section")
    p.add_argument("--models", nargs="+", choices=("tiny", "small"), default=["tiny", "small"],
                   help="step section: presets (default: tiny small)")
    p.add_argument("--step-repeats", type=int, default=3, help="step section: timed steps per attention (default 3)")
    p.add_argument("--method", choices=("lora_plus", "full"), default="lora_plus",
                   help="step section: LoRA+ (r=8, alpha=16, q/k/v/o + embedding + norms; default) or full fine-tuning")
    p.add_argument("--bf16", action="store_true", help="step section: CPU bf16 autocast (weights and AdamW in fp32)")
    p.add_argument("--max-seconds-per-step", type=float, default=180.0,
                   help="step section: skip larger sizes of a preset once a step takes, or is predicted from the "
                        "previous size's FLOP-scaled time to take, longer than this (default 180; 0 = no guard)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default 0: torch's own default)")
    p.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    p.add_argument("--quick", action="store_true",
                   help="check the script works in seconds: attention n <= 2048 and 3 repeats; steps at n = 256, 512 "
                        "with 2 repeats")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.threads:  # on a shared machine one thread per process can be steadier than the default
        torch.set_num_threads(args.threads)
    step_sizes, step_repeats = args.sizes, args.step_repeats
    if args.quick:
        args.sizes, args.repeats = [n for n in args.sizes if n <= 2048], min(args.repeats, 3)
        step_sizes, step_repeats = [256, 512], min(step_repeats, 2)
    machine = machine_info()
    print(f"# {machine['processor']}, {machine['cpus_usable']} usable CPUs, torch {machine['torch']} "
          f"({machine['torch_threads']} threads)")
    machine["busy_warning"] = warn_if_busy(machine["torch_threads"])
    run = {"command": machine["command"], "date": machine["date"], "threads": machine["torch_threads"],
           "torch": machine["torch"], "quick": args.quick, "loadavg_at_start": machine["loadavg_at_start"],
           "busy_warning": machine["busy_warning"]}
    sections = {"machine": machine}
    if "attention" in args.sections:
        print(f"# attention alone: b={args.batch} h={args.heads} d={args.head_dim} fp32, SDPA backend {args.backend}, "
              f"median of {args.repeats}")
        section = attention_section(args.sizes, args.repeats, args.batch, args.heads, args.head_dim, args.backend,
                                    memory=not args.no_memory)
        sections["attention"] = {**section, **run}
    if "step" in args.sections:
        print(f"\n# whole training step: {', '.join(args.models)} at n = {', '.join(map(str, sorted(step_sizes)))}")
        section = step_section(args.models, step_sizes, step_repeats, args.method, args.bf16,
                               args.max_seconds_per_step, memory=not args.no_memory)
        sections["step"] = {**section, **run}
    machine["loadavg_at_end"] = list(os.getloadavg())
    write_results(args.out, sections)
    print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()
