"""Benchmark: full causal attention vs S2-Attn (variant "split", G = n/4) alone, forward + backward, on this machine.

    python benchmarks/bench_attention.py                 # n = 1024 … 16384, b=1, h=8, d=32, fp32 (minutes)
    python benchmarks/bench_attention.py --quick         # n = 1024, 2048, 3 repeats (seconds)
    python benchmarks/bench_attention.py --backend math  # force SDPA's math kernel (writes the n × n matrix out)
    python benchmarks/bench_attention.py --threads 1     # steadier on a shared machine (default: torch's default)

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

The results go to benchmarks/results/attention_cpu.json, one key per section (`machine`, `attention`); other sections
already in the file (e.g. a later whole-model training step) are kept.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
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
    }


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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--backend", choices=("default", "math"), default="default")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default 0: torch's own default)")
    p.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    p.add_argument("--quick", action="store_true", help="n = 1024, 2048 and 3 repeats, to check the script works")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.threads:  # on a shared machine one thread per process can be steadier than the default
        torch.set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.repeats = [n for n in args.sizes if n <= 2048], min(args.repeats, 3)
    machine = machine_info()
    print(f"# {machine['processor']}, {machine['cpus_usable']} usable CPUs, torch {machine['torch']} "
          f"({machine['torch_threads']} threads), b={args.batch} h={args.heads} d={args.head_dim} fp32, "
          f"SDPA backend {args.backend}, median of {args.repeats}")
    section = attention_section(args.sizes, args.repeats, args.batch, args.heads, args.head_dim, args.backend,
                                memory=not args.no_memory)
    section["quick"] = args.quick
    write_results(args.out, {"machine": machine, "attention": section})
    print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()
