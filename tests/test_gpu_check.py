"""benchmarks/gpu_check.py --dry-run: the GPU check's code, run on the CPU with tiny shapes, writes every section."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["dry_run"] is True and r["parity"]["passed"] is True
    assert r["parity"]["fp32_relative_error"] == 0  # the same code on the same device: bit-equal
    assert 0 < r["parity"]["bf16_relative_error"] <= r["parity"]["tolerances"]["bf16"]
    for name in ("full", "s2"):
        assert r["backends"][name]["ops"], name  # the profiler saw the attention kernels
        assert isinstance(r["backends"][name]["flash_only_runs"], bool)
    assert r["matmul_peak_tflops"] > 0
    for model in ("small", "llama2-7b-4layers"):
        rows = r["throughput"][model]["rows"]
        assert [(row["tokens"], row["attention"]) for row in rows] == [(256, "full"), (256, "s2"), (512, "full"),
                                                                        (512, "s2")]
        for row in rows:
            assert row["tok_per_s"] > 0 and row["mfu"] > 0 and math.isfinite(row["loss"])
