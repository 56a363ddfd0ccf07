"""The training-side remedies of issue 16: every k-th step with full attention, groups that grow to the whole window.
Which steps attend how (`attention_at_step`, by hand), that the loop really switches the model, exact resume across
the switches, the checks, the command-line flags, and the FLOPs of a run."""

import json

import pytest

import minilongllora.model as M
import minilongllora.train as T
from minilongllora.checkpoint import read_checkpoint
from minilongllora.errors import UserInputError
from minilongllora.patterns import group_sizes
from minilongllora.train import train
from minilongllora.trainconfig import TrainConfig, attention_at_step

from conftest import run_cli
from test_train import assert_bit_identical, full_cfg, metrics, tensors


def plan(cfg: TrainConfig) -> list[tuple[str, int]]:
    return [attention_at_step(cfg, step) for step in range(cfg.steps)]


def cfg_of(**kw) -> TrainConfig:
    return TrainConfig(base="tiny", **{"seq_len": 64, "attention": "s2", **kw})


# ----------------------------------------------------------------------------------------- which steps, which groups
def test_without_remedies_every_step_is_the_training_pattern():
    assert plan(cfg_of(steps=4)) == [("s2", 16)] * 4
    assert plan(cfg_of(steps=3, attention="full")) == [("full", 64)] * 3
    assert plan(cfg_of(steps=2, attention="dilated", group_size_ratio=0.125)) == [("dilated", 8)] * 2


def test_every_kth_step_attends_fully():
    assert [p for p, _ in plan(cfg_of(steps=7, full_attention_every=3))] == ["s2", "s2", "full"] * 2 + ["s2"]
    assert plan(cfg_of(steps=3, full_attention_every=1)) == [("full", 64)] * 3
    assert [p for p, _ in plan(cfg_of(steps=5, full_attention_every=9))] == ["s2"] * 5


def test_valid_group_sizes_by_hand():
    assert group_sizes("s2", 96) == [2, 4, 6, 8, 12, 16, 24, 32, 48, 96]  # the even divisors of 96
    assert group_sizes("dilated", 96) == [2, 4, 6, 8, 12, 16, 24, 48]  # 2G must divide 96 too


def test_grow_schedule_by_hand():
    """seq_len 64, groups of 16, 10 steps, growth after half of them: step s is done at (s + 1) / 10; the line is
    16 + 48 · ((s + 1) / 10 − 0.5) / 0.5, i.e. 16 up to step 4, then 25.6, 35.2, 44.8, 54.4, 64; the valid sizes
    (even divisors of 64) not above it: 16, 32, 32, 32, and the whole window, full attention, at the last step."""
    cfg = cfg_of(steps=10, group_schedule="grow", group_schedule_start=0.5)
    assert plan(cfg) == [("s2", 16)] * 6 + [("s2", 32)] * 3 + [("full", 64)]


@pytest.mark.parametrize("attention, expected", [
    ("s2", [16, 16, 24, 32, 48, 48, 48]),  # even divisors of 96
    ("dilated", [16, 16, 24, 24, 48, 48, 48]),  # even divisors of 48 (segments of 2G)
])
def test_grow_schedule_in_the_sizes_each_pattern_allows(attention, expected):
    """seq_len 96, groups of 16, 8 steps, growth after a quarter: the line is 16 + 80 · ((s + 1) / 8 − 1/4) / (3/4) =
    16, 16, 29.3, 42.7, 56, 69.3, 82.7, 96."""
    cfg = cfg_of(seq_len=96, group_size_ratio=1 / 6, steps=8, group_schedule="grow", group_schedule_start=0.25,
                 attention=attention)
    assert plan(cfg) == [(attention, g) for g in expected] + [("full", 96)]


def test_both_remedies_together():
    cfg = cfg_of(steps=6, full_attention_every=2, group_schedule="grow", group_schedule_start=0.5)
    assert plan(cfg) == [("s2", 16), ("full", 64), ("s2", 16), ("full", 64), ("s2", 32), ("full", 64)]


def test_bad_remedy_settings_are_refused():
    for kw, message in [({"full_attention_every": -1}, "full_attention_every"),
                        ({"group_schedule": "shrink"}, "group_schedule"),
                        ({"group_schedule": "grow", "group_schedule_start": 1.0}, "group_schedule_start"),
                        ({"group_schedule_start": float("nan")}, "group_schedule_start"),
                        ({"attention": "full", "full_attention_every": 2}, "remedies for a sparse"),
                        ({"attention": "full", "group_schedule": "grow"}, "remedies for a sparse")]:
        with pytest.raises(UserInputError, match=message):
            cfg_of(**kw)


def test_command_line_flags(capsys):
    code, out, _ = run_cli(["extend", "--show-config", "--attention", "s2_sink", "--n-sink", "2",
                            "--full-attention-every", "4", "--group-schedule", "grow", "--group-schedule-start",
                            "0.75"], capsys)
    shown = json.loads(out)
    assert code == 0 and (shown["attention"], shown["n_sink"], shown["full_attention_every"]) == ("s2_sink", 2, 4)
    assert (shown["group_schedule"], shown["group_schedule_start"]) == ("grow", 0.75)


# ------------------------------------------------------------------------------------------------------ the loop
REMEDIES = dict(attention="s2", full_attention_every=2, group_schedule="grow", group_schedule_start=0.5)


def test_the_loop_switches_the_model_every_step(tmp_path, monkeypatch):
    """What the model's attention layer is called with, step by step, is `attention_at_step`'s plan; the metrics
    record it. (1 layer, 1 micro-batch: one attention call per step.)"""
    calls = []
    sparse, causal = M.sparse_attention, M.causal_attention

    def spy_sparse(q, k, v, pattern, group_size, **kw):
        calls.append((pattern, group_size))
        return sparse(q, k, v, pattern, group_size, **kw)

    def spy_causal(q, k, v):
        calls.append(("full", q.shape[2]))
        return causal(q, k, v)

    monkeypatch.setattr(M, "sparse_attention", spy_sparse)
    monkeypatch.setattr(M, "causal_attention", spy_causal)
    cfg = full_cfg(tmp_path / "run", **REMEDIES)
    result = train(cfg)
    expected = [("s2", 16), ("full", 64), ("s2", 16), ("full", 64), ("s2", 32), ("full", 64)]
    assert plan(cfg) == expected and calls == expected
    assert [(m["attention"], m["group_size"]) for m in result["metrics"]] == expected


def test_resume_across_the_switches_is_bit_identical(tmp_path, monkeypatch):
    """A run that crashes in step 5 (after the checkpoint of step 3) and is resumed attends fully in step 4, in
    groups of 32 in step 5 and fully in step 6, as the uninterrupted run did: bit-identical weights, optimizer state
    and metrics."""
    reference = tmp_path / "reference"
    train(full_cfg(reference, save_every=3, **REMEDIES))

    run, calls, loss = tmp_path / "run", [], T.lm_loss

    def crash_in_step_5(*args):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("injected crash")
        return loss(*args)

    monkeypatch.setattr(T, "lm_loss", crash_in_step_5)
    with pytest.raises(RuntimeError, match="injected"):
        train(full_cfg(run, save_every=3, **REMEDIES))
    monkeypatch.undo()
    assert read_checkpoint(run / "checkpoint")[2]["step"] == 3 and len(metrics(run)) == 4
    train(full_cfg(run, save_every=3, **REMEDIES), resume=True)
    assert_bit_identical(tensors(run), tensors(reference))
    keys = ("step", "loss", "grad_norm", "lr", "attention", "group_size")
    assert [[m[k] for k in keys] for m in metrics(run)] == [[m[k] for k in keys] for m in metrics(reference)]
    with pytest.raises(UserInputError, match="grows the groups over steps = 6"):
        train(full_cfg(run, save_every=3, **{**REMEDIES, "steps": 8}), resume=True)


def test_a_full_step_trains_like_full_attention(tmp_path):
    """full_attention_every = 1 is full-attention training, to the bit."""
    a = train(full_cfg(tmp_path / "every", steps=2, attention="s2", full_attention_every=1))
    b = train(full_cfg(tmp_path / "full", steps=2))
    assert [m["loss"] for m in a["metrics"]] == [m["loss"] for m in b["metrics"]]
    assert_bit_identical(tensors(tmp_path / "every"), tensors(tmp_path / "full"))
