"""The trainer: pretraining and LongLoRA context extension in one flat loop, resumable bit for bit.

One `train(TrainConfig)` covers every run of the project (trainconfig.py): the byte-level `tiny` model pretrained from
scratch on a 2-core CPU, its 4x context extension with S2-Attn + LoRA+, and Llama-2-7B extended to 8k…100k tokens in
bf16 with FSDP2 on GPUs. The recipe of the paper (§4.1, App. B; the official fine-tune.py and its README command):

    AdamW(β1=0.9, β2=0.95, weight decay 0), lr 2e-5, 20 linear warmup steps then constant, gradient clipping 1.0,
    batch 1 x 8 accumulation steps per GPU, 1000 steps, S2-Attn with groups of n/4, LoRA r=8 α=16 on q/k/v/o with
    the embedding and norms trainable (LoRA+), linear position interpolation by ceil(target / original context).

The loop, per optimizer step s = 0, 1, …:  the step's attention (`set_step_attention`: the training pattern, or
under the remedies of `trainconfig.attention_at_step` full attention or grown groups) → batch s of the global batch
(every rank takes its own slice) → forward (bf16 autocast where asked) → loss / grad_accum → backward, grad_accum
times → clip_grad_norm_ → NaN check → AdamW step → LR step → log (→ validation, → checkpoint). Checkpoints and exact
resume: checkpoint.py; torchrun and FSDP2: distributed.py (rank r takes rows [(r·accum + j)·b, (r·accum + j + 1)·b)
of the global batch at micro-step j).

Validation. Every `eval_every` steps the loop logs `val_window_loss` and `val_window_ppl`: the mean next-token loss
over the first `eval_windows` whole, non-overlapping windows of seq_len validation tokens (in eval mode: full
attention), and its exp. It is NOT `evaluate.perplexity`'s strided sliding-window perplexity, which scores every
token with at least seq_len − stride tokens of context and is lower; hence its own name. (Runs written before the
rename log it as `val_ppl`; the readers of metrics accept both.)

Precision. `precision="bf16"` is autocast with fp32 master weights for everything that trains: the default on CUDA,
and what the CPU-small recipes use on a CPU with native bf16 (AVX-512 BF16 / AMX: about 2x the tokens/s of fp32,
benchmarks/bench_speed.py); `None` means fp32 on the CPU. On CUDA with a LoRA method the FROZEN base weights are
stored in bf16 (half the memory of a 7B base; for the linear layers the same numbers, since autocast casts their
weights to bf16 anyway), while LoRA A/B and, with LoRA+, the embedding and the norms stay fp32, and the final HF model
is written in bf16. On the CPU every weight stays fp32 and so does the final model.

References: Chen et al., LongLoRA (ICLR 2024, arXiv 2309.12307) §3-4 and App. B; dvlab-research/LongLoRA fine-tune.py;
nanoGPT train.py; torchtitan (FSDP2 + distributed state dicts).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoint, distributed
from .checkpoint import CHECKPOINT, CHECKPOINT_OLD, STATE_FILE, TMP_PREFIX, find_checkpoint
from .data import training_rows, validation_windows
from .errors import UserInputError
from .files import write_json, write_text
from .lora import format_parameter_report
from .model import lm_loss
from .trainconfig import TrainConfig, attention_at_step, build_model

RUN_FILES = ("run.json", "metrics.jsonl", CHECKPOINT, CHECKPOINT_OLD, "adapter", "final")  # what a run writes


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the last good checkpoint is kept as it was."""


# ---------------------------------------------------------------------------------------------------- small helpers
def lr_lambda(step: int, warmup_steps: int, schedule: str = "constant", total_steps: int | None = None,
              min_ratio: float = 0.1) -> float:
    """LR multiplier at optimizer step `step` (0-based): step / warmup during warmup, then 1 ("constant": transformers'
    `get_constant_schedule_with_warmup`, the official `constant_with_warmup`) or a half cosine from 1 down to
    `min_ratio` at step `total_steps` ("cosine": transformers' `get_cosine_with_min_lr_schedule_with_warmup` with
    min_lr_rate = min_ratio; Llama 2's pretraining decays to 10%). Step 0 runs at lr 0 (it only fills AdamW's moments)
    and step `warmup_steps` is the first at the full rate."""
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_step_attention(model, cfg: TrainConfig, step: int) -> tuple[str, int]:
    """Give the model the attention of optimizer step `step` (`attention_at_step`) and return it. Every layer reads the
    model's one LlamaConfig, so two assignments switch them all; G / seq_len gives G back (`attention.group_size`)."""
    pattern, group = attention_at_step(cfg, step)
    model.config.attention = pattern
    if pattern != "full":
        model.config.group_size_ratio = group / cfg.seq_len
    return pattern, group


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device


def _device_of(cfg: TrainConfig) -> torch.device:
    """The run's device, checked against what this machine has."""
    name = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or not available.get(device.type):
        raise UserInputError(f"device {name!r} is not available here; available: "
                             f"{', '.join(t for t, ok in available.items() if ok)}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserInputError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    precision = cfg.precision or ("bf16" if device.type == "cuda" else "fp32")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if precision == "bf16" and device.type == "cpu" and not native:
        print("warning: this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 autocast may be slower than fp32; "
              "pass --precision fp32", file=sys.stderr)
    return precision


def make_optimizer(model, cfg: TrainConfig, device: torch.device | str = "cpu") -> torch.optim.AdamW:
    """AdamW over the trainable parameters ONLY (frozen LoRA bases get no moments: the memory LoRA saves). On one
    CPU process the fused kernel (one pass over each parameter, deterministic); otherwise torch's default."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = torch.device(device).type == "cpu" and distributed.world() == 1
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=1e-8,
                             fused=fused or None)


def load_dataset(cfg: TrainConfig, vocab_size: int | None = None):
    """The training rows of `cfg` (with its share of code-passkey documents); with `vocab_size`, every token id of the
    data is checked against it first."""
    return training_rows(cfg.data, cfg.seq_len, cfg.seed, vocab_size, passkey_share=cfg.passkey_share,
                         passkey_placement=cfg.passkey_placement)


def validation_rows(cfg: TrainConfig, vocab_size: int | None = None) -> torch.Tensor | None:
    """The first `eval_windows` windows of seq_len tokens of the validation data, or None with eval_every = 0."""
    if cfg.eval_every == 0:
        return None
    return validation_windows(cfg.eval_data, cfg.seq_len, cfg.eval_windows, vocab_size, source=cfg.data)


@torch.no_grad()
def validation_loss(model, rows: torch.Tensor, batch_size: int, device, autocast) -> float:
    """Mean next-token loss over `rows`, whole windows, in eval mode (full attention, as the paper tests)."""
    model.eval()
    losses = []
    for i in range(0, len(rows), batch_size):
        tokens = rows[i:i + batch_size].to(device)
        with autocast():
            logits = model(tokens)
        losses.append(lm_loss(logits, tokens).item() * len(tokens))
    model.train()
    return sum(losses) / len(rows)


def check_out_dir(out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """A fresh run never touches a directory that holds a run (RUN_FILES): UserInputError unless `resume` or
    `overwrite` says what to do with it."""
    if resume and overwrite:
        raise UserInputError("resume and overwrite exclude each other: continue the run, or start it again")
    held = [name for name in RUN_FILES if (Path(out_dir) / name).exists()]
    if held and not (resume or overwrite):
        raise UserInputError(f"{out_dir} already holds a run ({', '.join(held)}); pass --resume to continue it or "
                             f"--overwrite to start again")


def _remove_run(out_dir: Path) -> None:
    """Delete what a run wrote into out_dir (RUN_FILES and half-written checkpoints), nothing else: overwrite=True."""
    for path in [out_dir / name for name in RUN_FILES] + list(out_dir.glob(TMP_PREFIX + "*")):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _log_line(record: dict) -> str:
    parts = [f"step {record['step']}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.3g}",
             f"grad_norm {record['grad_norm']:.3f}", f"{record['tok_per_s']:.0f} tok/s"]
    if "val_window_ppl" in record:
        parts.append(f"val_window_ppl {record['val_window_ppl']:.3f}")
    return " | ".join(parts)


# ------------------------------------------------------------------------------------------------------ the loop
def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `cfg` (or continue it from out_dir/checkpoint with resume=True; overwrite=True starts again in a directory
    that holds a run). Returns {"step", "loss", "metrics", "out_dir", "checkpoint", "final", "adapter"}. Raises
    UserInputError / FileNotFoundError on bad input, before anything is written, and TrainingDiverged on a NaN or
    infinite loss or gradient norm."""
    if distributed.launched_rank() == 0:  # rank 0 alone writes: a rank looking later could see its new files
        check_out_dir(cfg.out_dir, resume, overwrite)
    device, created_group = distributed.start(_device_of(cfg))
    deterministic = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # the official command's --tf32
            torch.backends.cudnn.allow_tf32 = True
        else:  # bit-exact resume on the CPU; warn_only: an op without a deterministic kernel warns, never fails
            torch.use_deterministic_algorithms(True, warn_only=True)
            # not the NaN-filling of every new tensor that comes with it: a debugging aid, ~20% of a bf16 step
            torch.utils.deterministic.fill_uninitialized_memory = False
        return _train(cfg, resume, overwrite, device)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        distributed.stop(created_group)


def _train(cfg: TrainConfig, resume: bool, overwrite: bool, device: torch.device) -> dict:
    rank, world, out_dir = distributed.rank(), distributed.world(), Path(cfg.out_dir)
    precision = _precision(cfg, device)
    saved = checkpoint.read_resume_state(cfg) if resume else None  # before anything is written
    # the frozen weights (and the exported model) in bf16 on CUDA only, where the memory matters; on the CPU they stay
    # fp32 (autocast casts them per forward: the same numbers) and final/ keeps the base's exact weights
    weights = precision if device.type == "cuda" else "fp32"
    model, optimizer, scheduler = _model_and_optimizer(cfg, device, weights)
    dataset = load_dataset(cfg, model.config.vocab_size)
    val_rows = validation_rows(cfg, model.config.vocab_size)
    global_batch = cfg.batch_size * cfg.grad_accum * world
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" \
        else contextlib.nullcontext
    start, metrics, seconds = 0, [], 0.0
    if saved is not None:  # restore weights, AdamW, LR step and RNG: everything the next step depends on
        state = checkpoint.restore(saved, model, optimizer, scheduler, device)
        start, metrics, seconds = state["step"], state["metrics"], state["seconds"]
    if rank == 0:  # every check passed: the first write
        _start_run(cfg, model, overwrite, metrics, start, saved, dataset, precision, device, global_batch)

    model.train()
    # the bar only on a terminal (disable=None); logs always get a line every log_every steps (bar.write → stdout)
    bar = tqdm(total=cfg.steps, initial=start, disable=None if rank == 0 else True, desc="train", dynamic_ncols=True)
    metrics_file = open(out_dir / "metrics.jsonl", "a") if rank == 0 else None
    try:
        for step in range(start, cfg.steps):
            t0, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
            attention, group = set_step_attention(model, cfg, step)
            loss, grad_norm = _forward_backward(model, optimizer, dataset.batch(step, global_batch), cfg, device,
                                                autocast)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise TrainingDiverged(_diverged(out_dir, step, loss, grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            dt = time.perf_counter() - t0
            seconds += dt
            record = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens": (step + 1) * global_batch * cfg.seq_len, "seconds": round(seconds, 3),
                      "tok_per_s": global_batch * cfg.seq_len / dt, "attention": attention, "group_size": group}
            if val_rows is not None and (step + 1) % cfg.eval_every == 0:
                val = validation_loss(model, val_rows, cfg.batch_size, device, autocast)
                record.update(val_window_loss=val, val_window_ppl=math.exp(val))
            metrics.append(record)
            if rank == 0:
                _log(record, metrics_file, bar, cfg)
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
                checkpoint.save(out_dir, model, optimizer, {
                    "step": step + 1, "config": cfg.to_dict(), "scheduler": scheduler.state_dict(),
                    "rng": checkpoint.rng_state(device), "global_batch": global_batch, "world_size": world,
                    "data": {"next_batch": step + 1, "samples_seen": (step + 1) * global_batch},
                    "seconds": seconds, "metrics": metrics})
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    return _finish(cfg, model, metrics, weights)


def _model_and_optimizer(cfg: TrainConfig, device: torch.device, weights: str):
    """The run's model (sharded under torchrun), AdamW over its trainable parameters, and the LR schedule."""
    seed_everything(cfg.seed)
    model = build_model(cfg, device="cpu" if distributed.world() > 1 else device, precision=weights)
    model.gradient_checkpointing = (device.type == "cuda") if cfg.gradient_checkpointing is None \
        else cfg.gradient_checkpointing
    if distributed.world() > 1:
        model = distributed.shard(model, device)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.lr_schedule, cfg.steps, cfg.min_lr_ratio))
    return model, optimizer, scheduler


def _forward_backward(model, optimizer, rows: torch.Tensor, cfg: TrainConfig, device, autocast) -> tuple:
    """This rank's micro-batches of the global batch `rows`, forward and backward, gradients added up; then the
    gradient norm, clipped. Returns (mean loss over the global batch, gradient norm before clipping)."""
    loss_sum = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum):
        first = (distributed.rank() * cfg.grad_accum + micro) * cfg.batch_size
        tokens = rows[first:first + cfg.batch_size].to(device)
        with autocast():
            logits = model(tokens)
        loss = lm_loss(logits, tokens)
        (loss / cfg.grad_accum).backward()  # gradients add up over micro-batches: their mean, in the end
        loss_sum += loss.detach()
    loss_value = distributed.all_reduce_sum(loss_sum).item() / (cfg.grad_accum * distributed.world())
    params = optimizer.param_groups[0]["params"]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip if cfg.clip > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor, already reduced over the shards
        grad_norm = grad_norm.full_tensor()
    return loss_value, grad_norm.item()


def _diverged(out_dir: Path, step: int, loss: float, grad_norm: float) -> str:
    last, last_step = find_checkpoint(out_dir), None
    with contextlib.suppress(OSError, ValueError, KeyError):
        last_step = json.loads((last / STATE_FILE).read_text())["step"] if last is not None else None
    kept = f"the last good checkpoint ({last}, step {last_step}) is kept" if last is not None \
        else "no checkpoint was written"
    return f"training diverged at step {step + 1}: loss {loss}, grad norm {grad_norm}; this step was not applied " \
           f"and {kept}"


def _start_run(cfg, model, overwrite, metrics, start, saved, dataset, precision, device, global_batch) -> None:
    """Rank 0, once every check has passed: run.json, metrics.jsonl cut back to the checkpoint's history, a summary."""
    out_dir, config, world = Path(cfg.out_dir), model.config, distributed.world()
    if overwrite:
        _remove_run(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "run.json", {
        "train_config": cfg.to_dict(), "rope_scaling": config.rope_scaling, "max_seq_len": config.max_seq_len,
        "world_size": world, "global_batch": global_batch, "precision": precision, "device": str(device)})
    # metrics.jsonl holds exactly the checkpoint's history: lines a killed run wrote after it are dropped
    write_text(out_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
    what = f"resuming at step {start} from {saved[0]}" if saved is not None else "starting"
    print(f"{what}: {cfg.base} -> {out_dir}, {cfg.method}, attention {cfg.attention}, seq_len {cfg.seq_len}, "
          f"RoPE scaling {config.rope_scaling}, {precision} on {device} x {world}, global batch {global_batch} "
          f"({global_batch * cfg.seq_len} tokens/step), {len(dataset)} training sequences")
    if world == 1:
        print(format_parameter_report(model))


def _log(record: dict, metrics_file, bar, cfg: TrainConfig) -> None:
    metrics_file.write(json.dumps(record) + "\n")
    metrics_file.flush()
    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tok_per_s']:.0f}")
    bar.update(1)
    if record["step"] % cfg.log_every == 0 or record["step"] == cfg.steps:
        bar.write(_log_line(record))
        sys.stdout.flush()


def _finish(cfg: TrainConfig, model, metrics: list, weights: str) -> dict:
    """Every weight gathered to rank 0, which exports adapter/ and final/; the run's summary."""
    out_dir = Path(cfg.out_dir)
    result = {"step": cfg.steps, "loss": metrics[-1]["loss"] if metrics else None, "metrics": metrics,
              "out_dir": str(out_dir), "checkpoint": str(out_dir / CHECKPOINT), "final": None, "adapter": None}
    full = distributed.full_state(model)  # a collective: every rank takes part
    if distributed.rank() == 0:
        result.update(checkpoint.export_outputs(cfg, full, out_dir, weights))
    distributed.barrier()
    return result
