"""Bad input as a new user makes it: one line `error: ...` naming the problem, exit code 2, no traceback, and nothing
already on disk touched. A fresh run never overwrites an existing one. Genuine bugs keep their traceback."""

import json
import lzma
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_cli
from minilongllora import Llama, LlamaConfig
from minilongllora.attention import attention_mask
from minilongllora.data import write_token_bin

QUICK = ["--seq-len", "64", "--steps", "2", "--batch-size", "1", "--warmup-steps", "0", "--eval-every", "0",
         "--log-every", "100"]
TINY = ["--model-overrides", "n_layers=1", "dim=64", "n_heads=4", "n_kv_heads=4", "ffn_dim=128"]


def assert_one_error_line(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path`, by relative name: to show that a refused command left it byte for byte as it was."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    """Token files: ids inside the tiny base's vocabulary of 256, and ids past it (another tokenizer's)."""
    folder = tmp_path_factory.mktemp("bins")
    rng = np.random.default_rng(0)
    return {"good": write_token_bin(folder / "good.bin", rng.integers(0, 256, 4096)),
            "bad": write_token_bin(folder / "bad.bin", rng.integers(0, 300, 4096))}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, base_dir, bins):
    """A finished LongLoRA run (S2-Attn + LoRA+, PI x4, 2 steps on good.bin), written under umask 022."""
    out = tmp_path_factory.mktemp("runs") / "run"
    umask = os.umask(0o022)
    try:
        from minilongllora.cli import main

        main(["extend", "--base", str(base_dir), "--data", str(bins["good"]), "--out-dir", str(out), *QUICK])
    finally:
        os.umask(umask)
    return out


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


# --------------------------------------------------------------------------------------------- config files on disk
@pytest.mark.parametrize("text, fragment", [("[1, 2]", "JSON object"), ("null", "JSON object"),
                                            ("{not json", "not valid JSON")])
def test_config_json_that_is_no_object(tmp_path, base_dir, capsys, text, fragment):
    model = Path(shutil.copytree(base_dir, tmp_path / "model"))
    (model / "config.json").write_text(text)
    code, _, err = run_cli(["eval", str(model), "--lengths", "32"], capsys)
    assert_one_error_line(code, err, str(model / "config.json"), fragment)


def test_config_json_field_of_the_wrong_type(tmp_path, base_dir, capsys):
    model = Path(shutil.copytree(base_dir, tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    for key, value in [("hidden_size", "256"), ("rms_norm_eps", "1e-5"), ("tie_word_embeddings", "false"),
                       ("rope_parameters", [1])]:
        (model / "config.json").write_text(json.dumps({**config, key: value}))
        code, _, err = run_cli(["eval", str(model), "--lengths", "32"], capsys)
        assert_one_error_line(code, err, str(model / "config.json"), key)


def test_garbage_safetensors_index(tmp_path, base_dir, capsys):
    model = Path(shutil.copytree(base_dir, tmp_path / "model"))
    (model / "model.safetensors").unlink()
    index = model / "model.safetensors.index.json"
    for text in ("{garbage", '{"weight_map": [1]}'):
        index.write_text(text)
        code, _, err = run_cli(["eval", str(model), "--lengths", "32"], capsys)
        assert_one_error_line(code, err, str(index))


# ---------------------------------------------------------------------------------- an existing run is never touched
def test_fresh_run_into_an_existing_run_is_refused_and_writes_nothing(tmp_path, base_dir, bins, run_dir, capsys):
    run = copy_run(run_dir, tmp_path)
    before = snapshot(run)
    extend = ["extend", "--base", str(base_dir), "--data", str(bins["bad"]), "--out-dir", str(run), *QUICK]
    code, _, err = run_cli(extend, capsys)
    assert_one_error_line(code, err, str(run), "holds a run", "--resume", "--overwrite")
    assert snapshot(run) == before
    code, _, err = run_cli([*extend, "--overwrite"], capsys)  # allowed to start again, but the data is bad
    assert_one_error_line(code, err, str(bins["bad"]), "vocabulary")
    assert snapshot(run) == before  # every check ran before the first write


def test_overwrite_starts_again(tmp_path, base_dir, bins, run_dir, capsys):
    run = copy_run(run_dir, tmp_path)
    (run / "notes.txt").write_text("mine")
    code, _, err = run_cli(["extend", "--base", str(base_dir), "--data", str(bins["good"]), "--out-dir", str(run),
                            *QUICK, "--steps", "1", "--overwrite"], capsys)
    assert code == 0, err
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files were replaced


def test_longlora_refuses_an_existing_run_and_a_pretraining_recipe(base_dir, run_dir, capsys):
    before = snapshot(run_dir)
    code, _, err = run_cli(["longlora", "--base", str(base_dir), "--out-dir", str(run_dir)], capsys)
    assert_one_error_line(code, err, "holds a run")
    assert snapshot(run_dir) == before
    code, _, err = run_cli(["longlora", "--recipe", "pretrain-tiny"], capsys)
    assert_one_error_line(code, err, "not an extension recipe", "extend-tiny-4x")


# ------------------------------------------------------------------------------------------------------ token files
def test_eval_checks_the_vocabulary(base_dir, bins, capsys):
    code, _, err = run_cli(["eval", str(base_dir), "--data", str(bins["bad"]), "--lengths", "32"], capsys)
    assert_one_error_line(code, err, str(bins["bad"]), "vocabulary")


def test_eval_every_without_validation_data(tmp_path, base_dir, bins, capsys):
    code, _, err = run_cli(["extend", "--base", str(base_dir), "--data", str(bins["good"]), "--out-dir",
                            str(tmp_path / "run"), *QUICK, "--eval-every", "2"], capsys)
    assert_one_error_line(code, err, "eval_every", "eval_data")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "no text", "not json", "no documents"])
def test_broken_corpus_names_its_file(tmp_path, monkeypatch, capsys, damage):
    import minilongllora.data as data

    good = lzma.compress(b'{"text": "def f():\\n    return 1\\n"}\n' * 50)
    payload = {"empty": b"", "truncated": good[:len(good) // 2], "no text": lzma.compress(b'{"txt": "x"}\n'),
               "not json": lzma.compress(b'{"text": \n'), "no documents": lzma.compress(b"")}[damage]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.jsonl.xz").write_bytes(payload)
    monkeypatch.setattr(data, "CORPUS_ROOT", corpus)
    code, _, err = run_cli(["pretrain", "--out-dir", str(tmp_path / "run"), *QUICK, *TINY], capsys)
    assert_one_error_line(code, err, str(corpus / "train.jsonl.xz"))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------- float options
def test_nan_rope_factor_is_refused_by_eval_and_merge(tmp_path, base_dir, run_dir, capsys):
    code, _, err = run_cli(["eval", str(base_dir), "--rope-factor", "nan"], capsys)
    assert_one_error_line(code, err, "--rope-factor", "finite")
    code, _, err = run_cli(["merge", "--base", str(base_dir), "--adapter", str(run_dir / "adapter"),
                            "--rope-factor", "nan", "--out", str(tmp_path / "merged")], capsys)
    assert_one_error_line(code, err, "--rope-factor", "finite")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("flag, value, fragment", [("--lr", "1e39", "lr"), ("--lr", "inf", "--lr"),
                                                    ("--clip", "nan", "--clip"), ("--betas", "nan", "--betas")])
def test_float_options_reject_nan_infinity_and_overflow(tmp_path, capsys, flag, value, fragment):
    args = [flag, value, value] if flag == "--betas" else [flag, value]
    code, _, err = run_cli(["pretrain", "--out-dir", str(tmp_path / "run"), *QUICK, *TINY, *args], capsys)
    assert_one_error_line(code, err, fragment)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- other run settings
def test_sequence_length_1_is_an_input_error_not_a_divergence(tmp_path, capsys):
    code, _, err = run_cli(["pretrain", "--out-dir", str(tmp_path / "run"), *QUICK, *TINY, "--seq-len", "1"], capsys)
    assert_one_error_line(code, err, "seq_len must be >= 2")


@pytest.mark.parametrize("device", ["tpu9", "cuda:7" if torch.cuda.is_available() else "cuda"])
def test_device_is_checked_against_the_machine(tmp_path, base_dir, bins, capsys, device):
    code, _, err = run_cli(["extend", "--base", str(base_dir), "--data", str(bins["good"]), "--out-dir",
                            str(tmp_path / "run"), *QUICK, "--device", device], capsys)
    assert_one_error_line(code, err, repr(device))
    assert not (tmp_path / "run").exists()


def test_unknown_model_override_field(tmp_path, capsys):
    code, _, err = run_cli(["pretrain", "--out-dir", str(tmp_path / "run"), *QUICK, "--model-overrides", "layers=2"],
                           capsys)
    assert_one_error_line(code, err, "layers", "LlamaConfig")


# ------------------------------------------------------------------------------------------------------ checkpoints
def test_state_json_without_its_config(tmp_path, base_dir, bins, run_dir, capsys):
    run = copy_run(run_dir, tmp_path)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    del state["config"]
    (run / "checkpoint" / "state.json").write_text(json.dumps(state))
    before = snapshot(run)
    code, _, err = run_cli(["extend", "--base", str(base_dir), "--data", str(bins["good"]), "--out-dir", str(run),
                            *QUICK, "--steps", "3", "--resume"], capsys)
    assert_one_error_line(code, err, str(run / "checkpoint" / "state.json"), "'config'")
    assert snapshot(run) == before


def test_checkpoint_tensor_of_the_wrong_shape(tmp_path, base_dir, bins, run_dir, capsys):
    run = copy_run(run_dir, tmp_path)
    weights = run / "checkpoint" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["embed_tokens.weight"] = tensors["embed_tokens.weight"].reshape(64, 256)
    save_file(tensors, str(weights))
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    state["files"]["model.safetensors"] = weights.stat().st_size  # consistent sizes: only the shape is wrong
    (run / "checkpoint" / "state.json").write_text(json.dumps(state))
    shutil.rmtree(run / "final")  # so that eval reads the checkpoint
    before = snapshot(run)
    for argv in (["extend", "--base", str(base_dir), "--data", str(bins["good"]), "--out-dir", str(run), *QUICK,
                  "--steps", "3", "--resume"],
                 ["export", str(run), "--out", str(tmp_path / "hf")],
                 ["eval", str(run), "--lengths", "32"]):
        code, _, err = run_cli(argv, capsys)
        assert_one_error_line(code, err, str(weights), "embed_tokens.weight", "(64, 256)")
        assert snapshot(run) == before
    assert not (tmp_path / "hf").exists()


def test_written_files_have_the_normal_mode(run_dir):
    """Weights, configs and logs alike: 0o666 minus the umask (022 when the run was written), like a plain open()."""
    modes = {str(p.relative_to(run_dir)): p.stat().st_mode & 0o777 for p in run_dir.rglob("*")}
    assert {"final/model.safetensors", "adapter/adapter_model.safetensors", "checkpoint/model.safetensors",
            "checkpoint/optimizer.safetensors", "run.json"} <= modes.keys()
    assert {name: mode for name, mode in modes.items() if mode != (0o755 if (run_dir / name).is_dir() else 0o644)} \
        == {}


# ------------------------------------------------------------------------------------------------------- Python API
@pytest.mark.parametrize("kw", [dict(seq_len=0), dict(n_heads=0), dict(seq_len=-4), dict(n_heads=-2)])
def test_attention_mask_sizes(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        attention_mask("s2", **{"seq_len": 16, "group_size": 4, "n_heads": 4, **kw})


def test_llama_config_and_forward_validate_their_input():
    with pytest.raises(ValueError, match="rope_theta"):
        LlamaConfig(rope_theta=math.inf)
    with pytest.raises(ValueError, match="norm_eps"):
        LlamaConfig(norm_eps="1e-5")
    with pytest.raises(ValueError, match="layers"):
        LlamaConfig.from_preset("tiny", layers=2)
    model = Llama(LlamaConfig.from_preset("tiny", n_layers=1, dim=64, n_heads=4, ffn_dim=128))
    for bad in (256, -1):
        with pytest.raises(ValueError, match="vocabulary"):
            model(torch.tensor([[1, 2, bad]]))


# ------------------------------------------------------------------------------------------------------------- bugs
def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only bad input becomes one line: a ValueError from inside the code is a bug and propagates."""
    import minilongllora.flops as flops
    from minilongllora.cli import main

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(flops, "format_flops_table", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["flops", "--preset", "tiny", "--context", "256"])
