"""The record of a reproduction: one JSON per table (`notebooks/results/NAME.json`), written and read back.

Top-level keys: name, quick, description, command, argv, git_commit, started, seconds, machine, settings (base,
budget, evaluation, train_configs, runs: each run's validation curve), paper (the paper's numbers), rows, summary
(mean and std over seeds per row identity), and table1's starting_point. Every row of a fine-tuned model also says
which run it comes from (run, train_loss, train_seconds, reused).

Metric names. `ppl` is the strided sliding-window perplexity (`evaluate.perplexity`); `ppl_last_quarter` the exp of
the mean loss at the last quarter of window positions; `val_window_ppl` the trainer's whole-window validation
perplexity (records written before its rename call it `val_ppl`: `window_ppl` reads both).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import torch

RESULTS_DIR = "notebooks/results"
METRICS = ("ppl", "ppl_last_quarter", "accuracy", "val_window_ppl", "val_ppl", "ppl_own_pattern",
           "ppl_last_quarter_own_pattern", "ppl_test", "ppl_last_quarter_test")


def window_ppl(record: dict) -> float | None:
    """The trainer's whole-window validation perplexity of a metrics line or a curve point, by its name now
    (`val_window_ppl`) or before the rename (`val_ppl`); None where the step was not evaluated."""
    return record.get("val_window_ppl", record.get("val_ppl"))


def jsonable(x):
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


def summarize(id_fields: tuple[str, ...], rows: list[dict]) -> list[dict]:
    """Mean and sample std over seeds of every metric, per row identity (`id_fields`)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(f) for f in id_fields), []).append(r)
    out = []
    for ident, members in groups.items():
        s = dict(zip(id_fields, ident))
        s["seeds"] = [m.get("seed") for m in members]
        for metric in METRICS:
            values = [m[metric] for m in members if isinstance(m.get(metric), (int, float))]
            if values:
                s[f"{metric}_mean"] = float(np.mean(values))
                s[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out.append(s)
    return out


def per_context(runs: dict) -> dict:
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


def load(name: str, directory: str | Path = RESULTS_DIR, quick: bool = False) -> dict:
    """The results file of table `name` (NAME.json, or NAME.quick.json with quick=True) in `directory`."""
    path = result_path(directory, name, quick)
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path}: make them with `python -m minilongllora reproduce {name}"
                                f"{' --quick' if quick else ''} --out {directory}`")
    return json.loads(path.read_text())


def describe(result: dict) -> str:
    """What was run: the command, the budget (runs, steps, tokens), the wall time, the commit and the machine."""
    s, m = result["settings"], result["machine"]
    b = s.get("budget", {})
    lines = [f"{result['name']}{' (quick)' if result.get('quick') else ''}: {result['description']}",
             f"command: {result['command']}",
             f"ran {result['started'][:16].replace('T', ' ')} at commit {(result.get('git_commit') or '?')[:10]}, "
             f"{result['seconds'] / 60:.1f} min wall on {m['cpu_count']} CPU cores ({m['torch']}, "
             f"{m['torch_threads']} threads)"]
    if b.get("runs"):
        per = ", ".join(f"{c}: {v['batch_size']} x {c} tokens" for c, v in b["per_context"].items())
        steps = " or ".join(str(x) for x in s.get("regime", {}).get("steps_of_runs", [b["steps"]]))
        lines.append(f"budget: {b['runs']} runs of {steps} steps ({per}; {b['tokens_all_runs'] / 1e6:.1f}M "
                     f"tokens in all), lr {b['lr']}, {b['schedule']}, {b['precision']}; base {s['base']} "
                     f"(context {s['base_context']}); seeds {s['seeds']}")
        lines.append(f"training time: {b['train_seconds_all_runs'] / 60:.1f} min for the table's runs "
                     f"({b['train_seconds_new_runs'] / 60:.1f} min new in this command, the rest reused from the "
                     "cache)")
    return "\n".join(textwrap.fill(line, 118, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False)
                     for line in lines)


def format_rows(rows: list[dict], digits: int = 3) -> str:
    """A fixed-width text table of `compare`'s rows (relative columns in %)."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])

    def cell(key, value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{100 * value:+.1f}%" if "rel" in key else f"{value:.{digits}f}"
        return str(value)

    table = [[cell(k, r.get(k)) for k in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths)))]
    lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(t, widths))) for t in table]
    return "\n".join(lines)
