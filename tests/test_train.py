"""The trainer: exact resume after kill -9, atomic checkpoints, divergence, the optimizer's parameters, the LR
schedule, gradient accumulation, and FSDP2 (2 processes, gloo) against one process. Tiny models, a few steps each."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import minilongllora.train as T
from minilongllora import Llama, LlamaConfig, to_hf
from minilongllora.errors import UserInputError
import minilongllora.checkpoint as C
from minilongllora.checkpoint import find_checkpoint, read_checkpoint
from minilongllora.train import TrainConfig, TrainingDiverged, build_model, lr_lambda, make_optimizer, train

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(n_layers=1, dim=64, n_heads=4, n_kv_heads=4, ffn_dim=128)
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random HF base with a 64-token context (what a LoRA run reads its frozen weights from)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("base") / "tiny-base"
    to_hf(Llama(LlamaConfig.from_preset("tiny", **TINY, max_seq_len=64)), path)
    return path


def full_cfg(out, **kw):
    """Full training from the tiny preset at 64 tokens."""
    kw = {"steps": 6, "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, **kw}
    return TrainConfig(base="tiny", model_overrides=TINY, out_dir=str(out), seq_len=64, log_every=100, **kw)


def lora_cfg(out, base, **kw):
    """LongLoRA: S2-Attn + LoRA+ at 128 tokens on the 64-token base (position interpolation x2)."""
    kw = {"steps": 6, "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, **kw}
    return TrainConfig(base=str(base), out_dir=str(out), seq_len=128, method="lora_plus", attention="s2",
                       log_every=100, **kw)


def tensors(run: Path) -> dict[str, torch.Tensor]:
    """Everything a run leaves: checkpoint weights, optimizer state, and the exported HF weights."""
    out = {}
    for name in ("checkpoint/model.safetensors", "checkpoint/optimizer.safetensors", "final/model.safetensors"):
        out.update({f"{name}:{k}": v for k, v in load_file(str(run / name)).items()})
    return out


def assert_bit_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ exact resume
KILLED_RUN = """
import json, sys, time
import minilongllora.train as T
loss = T.lm_loss
def slow_loss(*args):  # slow enough for the parent to kill mid-run
    time.sleep(0.15)
    return loss(*args)
T.lm_loss = slow_loss
T.train(T.TrainConfig.from_dict(json.loads(sys.argv[1])))
"""


@pytest.mark.parametrize("method", ["full", "lora_plus_s2"])
def test_kill_9_then_resume_is_bit_identical(tmp_path, base_dir, method):
    make = (lambda out, **kw: full_cfg(out, **kw)) if method == "full" else \
        (lambda out, **kw: lora_cfg(out, base_dir, **kw))
    reference = tmp_path / "reference"
    train(make(reference, steps=8, save_every=3))

    run = tmp_path / "killed"
    cfg = make(run, steps=8, save_every=3)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, json.dumps(cfg.to_dict())], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # kill after the checkpoint of step 3, in the middle of step 5
            state = run / "checkpoint" / "state.json"
            if state.is_file() and (run / "metrics.jsonl").is_file() and len(metrics(run)) >= 4:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 3
    assert len(metrics(run)) >= 4  # lines past the checkpoint, which resume must drop

    result = train(cfg, resume=True)
    assert result["step"] == 8
    assert_bit_identical(tensors(run), tensors(reference))
    got, want = metrics(run), metrics(reference)
    assert [m["step"] for m in got] == list(range(1, 9))
    assert [(m["loss"], m["grad_norm"], m["lr"]) for m in got] == [(m["loss"], m["grad_norm"], m["lr"]) for m in want]


def test_resume_without_checkpoint_or_with_another_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(full_cfg(tmp_path / "none", steps=1), resume=True)
    train(full_cfg(tmp_path / "run", steps=2))
    with pytest.raises(ValueError, match="lr"):
        train(full_cfg(tmp_path / "run", steps=4, lr=5e-4), resume=True)
    result = train(full_cfg(tmp_path / "run", steps=4), resume=True)  # more steps: allowed
    assert [m["step"] for m in result["metrics"]] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------- atomic checkpoints
def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    train(full_cfg(reference, steps=4, save_every=2))

    run = tmp_path / "run"
    calls = []
    save = C._save_safetensors

    def crash_on_third_file(*args):  # files 1-2: checkpoint of step 2; file 3: the model file of step 4
        calls.append(args)
        if len(calls) == 3:
            raise OSError("injected crash: disk full")
        return save(*args)

    monkeypatch.setattr(C, "_save_safetensors", crash_on_third_file)
    with pytest.raises(OSError, match="injected"):
        train(full_cfg(run, steps=4, save_every=2))
    monkeypatch.undo()
    assert find_checkpoint(run) == run / "checkpoint"
    assert read_checkpoint(run / "checkpoint")[2]["step"] == 2  # complete and loadable
    train(full_cfg(run, steps=4, save_every=2), resume=True)
    assert_bit_identical(tensors(run), tensors(reference))
    assert not list(run.glob(".checkpoint.tmp-*"))  # the next save cleared the half-written directory


def test_crash_between_the_two_renames_leaves_checkpoint_old(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    train(full_cfg(reference, steps=4, save_every=2))

    run = tmp_path / "run"
    rename = os.rename

    def crash_on_swap_in(src, dst):  # checkpoint -> checkpoint.old succeeded; tmp -> checkpoint "never happens"
        if Path(src).name.startswith(".checkpoint.tmp-") and (run / "checkpoint.old").exists():
            raise OSError("injected crash between renames")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", crash_on_swap_in)
    with pytest.raises(OSError, match="injected"):
        train(full_cfg(run, steps=4, save_every=2))
    monkeypatch.undo()
    assert not (run / "checkpoint").exists()
    assert find_checkpoint(run) == run / "checkpoint.old"
    assert read_checkpoint(run / "checkpoint.old")[2]["step"] == 2
    train(full_cfg(run, steps=4, save_every=2), resume=True)
    assert_bit_identical(tensors(run), tensors(reference))
    assert not (run / "checkpoint.old").exists()


@pytest.mark.parametrize("victim, damage", [("model.safetensors", "truncate"), ("optimizer.safetensors", "truncate"),
                                            ("state.json", "truncate"), ("optimizer.safetensors", "delete")])
def test_corrupted_checkpoint_is_one_clear_error_and_nothing_is_deleted(tmp_path, victim, damage):
    run = tmp_path / "run"
    train(full_cfg(run, steps=2))
    path = run / "checkpoint" / victim
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()
    listing = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(ValueError, match=victim) as e:
        train(full_cfg(run, steps=4), resume=True)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in run.rglob("*")) == listing


# ------------------------------------------------------------------------------------------------- divergence
def test_injected_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    calls = []
    loss = T.lm_loss

    def nan_at_step_5(logits, tokens):
        calls.append(1)
        out = loss(logits, tokens)
        return out * float("nan") if len(calls) == 5 else out

    monkeypatch.setattr(T, "lm_loss", nan_at_step_5)
    with pytest.raises(TrainingDiverged, match="step 5") as e:
        train(full_cfg(run, steps=8, save_every=2))
    assert "step 4" in str(e.value)  # names the checkpoint it kept
    model, _, state = read_checkpoint(run / "checkpoint")
    assert state["step"] == 4 and all(torch.isfinite(t).all() for t in model.values())
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]


def test_huge_learning_rate_diverges(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+") as e:
        train(full_cfg(run, steps=6, lr=1e30, warmup_steps=0, save_every=1))
    diverged = int(str(e.value).split("at step ")[1].split(":")[0])
    assert read_checkpoint(run / "checkpoint")[2]["step"] == diverged - 1


# ----------------------------------------------------------------------------------- optimizer and LR schedule
def test_only_trainable_parameters_reach_the_optimizer(tmp_path, base_dir):
    cfg = lora_cfg(tmp_path / "run", base_dir, steps=2)
    model = build_model(cfg)
    optimizer = make_optimizer(model, cfg)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert in_optimizer == {id(p) for name, p in model.named_parameters() if name in trainable}
    assert any("lora_A" in n for n in trainable) and "embed_tokens.weight" in trainable
    assert "layers.0.self_attn.q_proj.weight" not in trainable and "lm_head.weight" not in trainable
    assert model.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}  # ceil(128 / 64)

    train(cfg)
    saved_model, saved_optim, _ = read_checkpoint(Path(cfg.out_dir) / "checkpoint")
    assert set(saved_model) == trainable  # the frozen base is not in the checkpoint
    assert set(saved_optim) == {f"{n}.{k}" for n in trainable for k in ("step", "exp_avg", "exp_avg_sq")}
    base = load_file(str(base_dir / "model.safetensors"))
    final = load_file(str(Path(cfg.out_dir) / "final" / "model.safetensors"))
    assert torch.equal(final["lm_head.weight"], base["lm_head.weight"])  # frozen: untouched
    assert not torch.equal(final["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])  # LoRA merged in
    config = json.loads((Path(cfg.out_dir) / "final" / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 2.0
    assert (Path(cfg.out_dir) / "adapter" / "adapter_model.safetensors").is_file()


def test_lr_schedule_is_linear_warmup_then_constant(tmp_path):
    assert [lr_lambda(s, 4) for s in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [lr_lambda(s, 0) for s in range(3)] == [1.0, 1.0, 1.0]
    from transformers import get_constant_schedule_with_warmup  # the official run's scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_constant_schedule_with_warmup(opt, num_warmup_steps=4)
    assert [hf.lr_lambdas[0](s) for s in range(7)] == [lr_lambda(s, 4) for s in range(7)]
    result = train(full_cfg(tmp_path / "run", steps=6, warmup_steps=4, lr=1e-3))
    assert [m["lr"] for m in result["metrics"]] == [1e-3 * lr_lambda(s, 4) for s in range(6)]


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    one = train(full_cfg(tmp_path / "b4", steps=2, batch_size=4, grad_accum=1, warmup_steps=0))
    two = train(full_cfg(tmp_path / "b2x2", steps=2, batch_size=2, grad_accum=2, warmup_steps=0))
    for a, b in zip(one["metrics"], two["metrics"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    wa = load_file(str(tmp_path / "b4" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b2x2" / "final" / "model.safetensors"))
    # Adam divides each gradient element by its own root mean square, so for an element whose gradient is near zero
    # the fp32 rounding of the two summation orders (a mean over 4 rows; two means over 2, then halved) becomes a
    # visible share of its update, which is at most lr = 1e-3 per step: the weights agree to 1% of one step (1e-5).
    # Seen on an Intel Xeon with AMX: 1 element of 16,384 off by 2.1e-6; every other within 1e-6.
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-5)
        assert (wa[k] - wb[k]).abs().gt(1e-6).float().mean() < 1e-3  # and all but a few elements to 1e-6


def test_validation_errors():
    with pytest.raises(ValueError, match="divisible"):
        TrainConfig(base="tiny", seq_len=100, attention="s2")  # groups of 25 tokens: odd
    with pytest.raises(ValueError, match="method"):
        TrainConfig(base="tiny", method="qlora")
    with pytest.raises(ValueError, match="rope_factor"):
        TrainConfig(base="tiny", rope_factor=0.5)
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        build_model(TrainConfig(base="/no/such/model"))


def test_context_beyond_the_base_without_interpolation_is_refused(base_dir):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        build_model(TrainConfig(base=str(base_dir), seq_len=256, rope_factor=1))
    model = build_model(TrainConfig(base=str(base_dir), seq_len=256))  # default: ceil(256 / 64) = 4
    assert model.config.rope_scaling == {"rope_type": "linear", "factor": 4.0}


# ------------------------------------------------------------------------------------------------------- FSDP2
@pytest.mark.parametrize("method", ["full", "lora_plus_s2"])
def test_fsdp2_two_processes_match_one(tmp_path, base_dir, method):
    """FSDP2 `fully_shard` on CPU with gloo (torch 2.13 supports its reduce-scatter): 2 ranks x batch 2 (2 steps,
    then resumed to 4) give the loss curve and the weights of 1 process x batch 4, to float tolerance."""
    if method == "full":
        args = ["pretrain", "--base", "tiny", "--model-overrides", *[f"{k}={v}" for k, v in TINY.items()],
                "--seq-len", "64", "--lr-schedule", "constant", "--weight-decay", "0", "--passkey-share", "0",
                "--passkey-placement", "packed"]
        cfg = full_cfg(tmp_path / "one", steps=4, batch_size=4, save_every=2)
    else:
        args = ["extend", "--base", str(base_dir), "--seq-len", "128", "--method", "lora_plus", "--attention", "s2"]
        cfg = lora_cfg(tmp_path / "one", base_dir, steps=4, batch_size=4, save_every=2)
    args += ["--batch-size", "2", "--lr", "1e-3", "--warmup-steps", "2", "--save-every", "2", "--eval-every", "0",
             "--eval-windows", "8", "--log-every", "100", "--rope-factor", "none", "--precision", "none",
             "--gradient-checkpointing", "--out-dir", str(tmp_path / "two")]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "minilongllora", *args]
    for leg in (["--steps", "2"], ["--steps", "4", "--resume"]):  # the second leg resumes under FSDP too
        proc = subprocess.run(torchrun + leg, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["world_size"] == 2 and run["global_batch"] == 4
    differ = {k for k, v in cfg.to_dict().items() if run["train_config"][k] != (list(v) if k == "betas" else v)}
    assert differ == {"out_dir", "batch_size", "gradient_checkpointing"}  # the same run, but sharded and checkpointed
    train(cfg)
    two, one = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert len(two) == len(one) == 4
    for a, b in zip(two, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    ta, tb = tensors(tmp_path / "two"), tensors(tmp_path / "one")
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- one home per rule
def test_a_base_with_another_rope_scaling_is_not_silently_replaced(tmp_path):
    """Position interpolation replaces a linear scaling (the same original context); a YaRN base is refused."""
    config = LlamaConfig.from_preset("tiny", n_layers=1, dim=64, n_heads=4, ffn_dim=128, max_seq_len=64,
                                     rope_scaling={"rope_type": "yarn", "factor": 2.0})
    to_hf(Llama(config), tmp_path / "yarn")
    with pytest.raises(ValueError, match="yarn"):
        build_model(TrainConfig(base=str(tmp_path / "yarn"), seq_len=256))  # past its 128 tokens
    with pytest.raises(ValueError, match="yarn"):
        build_model(TrainConfig(base=str(tmp_path / "yarn"), seq_len=128, rope_factor=4))
    model = build_model(TrainConfig(base=str(tmp_path / "yarn"), seq_len=128))  # within its context: kept as it is
    assert model.config.rope_scaling == {"rope_type": "yarn", "factor": 2.0}
    to_hf(Llama(config.replace(rope_scaling={"rope_type": "linear", "factor": 2.0})), tmp_path / "linear")
    model = build_model(TrainConfig(base=str(tmp_path / "linear"), seq_len=256))  # ceil(256 / 64) from the original
    assert model.config.rope_scaling == {"rope_type": "linear", "factor": 4.0}


def test_only_patterns_that_split_the_heads_need_a_divisible_head_count():
    overrides = dict(n_layers=1, dim=96, n_heads=3, n_kv_heads=3, ffn_dim=128)
    for attention in ("short", "local", "shift_all"):
        build_model(TrainConfig(base="tiny", seq_len=64, attention=attention, model_overrides=overrides))
    with pytest.raises(ValueError, match="divisible by 2"):
        build_model(TrainConfig(base="tiny", seq_len=64, attention="s2", model_overrides=overrides))
    with pytest.raises(ValueError, match="divisible by 4"):
        build_model(TrainConfig(base="tiny", seq_len=64, attention="block_sparse",
                                model_overrides=dict(overrides, n_heads=6, n_kv_heads=6)))


def test_cosine_schedule_equals_transformers_and_resumes_only_with_the_same_steps(tmp_path):
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=20, min_lr_rate=0.1)
    ours = [lr_lambda(s, 3, "cosine", 20, 0.1) for s in range(20)]
    assert ours == pytest.approx([hf.lr_lambdas[0](s) for s in range(20)], abs=1e-12)
    assert ours[:4] == [0.0, 1 / 3, 2 / 3, 1.0] and ours[-1] > 0.1 and lr_lambda(20, 3, "cosine", 20, 0.1) == 0.1
    assert all(a >= b for a, b in zip(ours[3:], ours[4:]))  # decays monotonically after the warmup
    result = train(full_cfg(tmp_path / "run", steps=6, warmup_steps=2, lr=1e-3, lr_schedule="cosine",
                            min_lr_ratio=0.2, save_every=3))
    assert [m["lr"] for m in result["metrics"]] == [1e-3 * lr_lambda(s, 2, "cosine", 6, 0.2) for s in range(6)]
    with pytest.raises(UserInputError, match="cosine schedule decays over steps = 6"):
        train(full_cfg(tmp_path / "run", steps=8, warmup_steps=2, lr=1e-3, lr_schedule="cosine", min_lr_ratio=0.2,
                       save_every=3), resume=True)
