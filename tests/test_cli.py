"""The command line: --help of every command, `flops --json`, one `error:` line and exit code 2 for every kind of bad
input, and a tiny pretrain → export → extend → eval → merge chain end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("demo", "pretrain", "extend", "eval", "passkey", "merge", "export", "flops")
TINY = ["--model-overrides", "n_layers=1", "dim=64", "n_heads=4", "n_kv_heads=4", "ffn_dim=128"]
QUICK = ["--batch-size", "1", "--warmup-steps", "0", "--eval-every", "0", "--log-every", "100"]


run = run_cli


def assert_one_error_line(code, err, *fragments, exit_code=2):
    assert code == exit_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0 and "usage:" in out


def test_flops_json(capsys):
    code, out, _ = run(["flops", "--preset", "llama2-7b", "--context", "8192", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    assert set(row) == {"context", "attn_full", "attn_s2", "proj", "ffn", "others", "total_full", "total_s2"}
    assert row["context"] == 8192 and row["attn_s2"] == pytest.approx(row["attn_full"] / 4)
    code, out, _ = run(["flops", "--preset", "llama2-7b", "--context", "8192", "16384"], capsys)
    assert code == 0 and "8192" in out and "16384" in out  # the readable table


def test_missing_base_dir(tmp_path, capsys):
    code, _, err = run(["extend", "--base", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "run")], capsys)
    assert_one_error_line(code, err, "nope")
    code, _, err = run(["extend", "--recipe", "no-such-recipe"], capsys)
    assert_one_error_line(code, err, "unknown recipe", "cuda-7b-8k")
    code, _, err = run(["extend", "--recipe", "cuda-7b-8k", "--out-dir", str(tmp_path / "run")], capsys)
    assert_one_error_line(code, err, "--base")


def test_truncated_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["pretrain", "--out-dir", out, "--seq-len", "64", "--steps", "2", *QUICK, *TINY]
    assert run(args, capsys)[0] == 0
    weights = tmp_path / "run" / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run([*args, "--steps", "4", "--resume"], capsys)
    assert_one_error_line(code, err, "model.safetensors")
    assert weights.stat().st_size == 1000  # nothing deleted or rewritten
    code, _, err = run(["pretrain", "--out-dir", str(tmp_path / "empty"), "--resume", *TINY], capsys)
    assert_one_error_line(code, err, "nothing to resume")


def test_context_beyond_the_model_without_scaling(tmp_path, base_dir, capsys):
    code, _, err = run(["eval", str(base_dir), "--lengths", "256"], capsys)
    assert_one_error_line(code, err, "256", "64")
    code, _, err = run(["extend", "--base", str(base_dir), "--seq-len", "256", "--rope-factor", "1",
                        "--out-dir", str(tmp_path / "run")], capsys)
    assert_one_error_line(code, err, "exceeds")


def test_seq_len_not_divisible_by_the_group_size(tmp_path, base_dir, capsys):
    code, _, err = run(["extend", "--base", str(base_dir), "--seq-len", "100", "--out-dir", str(tmp_path)], capsys)
    assert_one_error_line(code, err, "divisible")


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "minilongllora", "export", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "hf")], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_diverged_training_exits_1(tmp_path, capsys):
    code, _, err = run(["pretrain", "--out-dir", str(tmp_path / "run"), "--seq-len", "64", "--steps", "5",
                        "--lr", "1e30", "--save-every", "1", *QUICK, *TINY], capsys)
    assert_one_error_line(code, err, "diverged at step", exit_code=1)


def test_pretrain_export_extend_eval_merge_chain(tmp_path, capsys):
    pre, ext = tmp_path / "pre", tmp_path / "ext"
    code, out, err = run(["pretrain", "--out-dir", str(pre), "--seq-len", "64", "--steps", "3", *QUICK, *TINY],
                         capsys)
    assert code == 0, err
    code, out, err = run(["export", str(pre), "--out", str(tmp_path / "base")], capsys)
    assert code == 0, err
    assert torch.equal(load_file(str(tmp_path / "base" / "model.safetensors"))["lm_head.weight"],
                       load_file(str(pre / "final" / "model.safetensors"))["lm_head.weight"])

    # the README main job in miniature: the base (context 256) extended 4x to 1024 with S2-Attn + LoRA+ + PI x4
    code, out, err = run(["extend", "--base", str(tmp_path / "base"), "--out-dir", str(ext), "--seq-len", "1024",
                          "--steps", "2", *QUICK], capsys)
    assert code == 0, err
    assert "adapter" in out
    config = json.loads((ext / "final" / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 4.0

    code, out, err = run(["eval", str(ext), "--lengths", "256", "1024", "--max-windows", "2", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert [r["seq_len"] for r in rows] == [256, 1024] and all(r["ppl"] > 1 for r in rows)

    code, out, err = run(["merge", "--base", str(tmp_path / "base"), "--adapter", str(ext / "adapter"),
                          "--out", str(tmp_path / "merged")], capsys)
    assert code == 0, err
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    final = load_file(str(ext / "final" / "model.safetensors"))
    assert merged.keys() == final.keys()
    for k in merged:
        torch.testing.assert_close(merged[k], final[k], rtol=0, atol=1e-6)
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["rope_parameters"]["factor"] == 4.0  # kept (the official merge script drops it)
