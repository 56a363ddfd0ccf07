"""Checkpoints of a training run: what exact resume needs, written so that a kill at any instant leaves one complete.

Exact resume. A run killed at any instant (kill -9 included) and resumed ends with weights bit-identical to an
uninterrupted run on the CPU. That needs four things and nothing else: the trainable weights, the AdamW moments and
step counts, the LR scheduler's step, and the torch RNG state, all in the checkpoint; batches come from
`PackedDataset.batch(step, ...)`, a pure function of (seed, step, batch size), so the data needs no state.

Layout (out_dir/checkpoint/): `model.safetensors` (the trainable parameters: all of them for full fine-tuning, LoRA
A/B + embedding + norms for LoRA+; the frozen base is re-read from `base`), `optimizer.safetensors` (AdamW's
exp_avg, exp_avg_sq and step of every parameter, keyed `<parameter name>.<state>`), `state.json` (step, config,
metrics, RNG, data position, file sizes). Only safetensors and JSON, never pickle. Each checkpoint is written into a
temporary sibling directory, fsynced, then swapped in by two renames (checkpoint → checkpoint.old, tmp →
checkpoint); a crash between them leaves checkpoint.old, which `find_checkpoint` then uses.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import distributed
from .adapter import save_peft_adapter
from .errors import UserInputError
from .files import file_mode, fsync_dir, fsync_file
from .hf import to_hf
from .lora import merge_lora
from .model import Llama
from .trainconfig import TrainConfig, build_model, meta_model

CHECKPOINT, CHECKPOINT_OLD, TMP_PREFIX = "checkpoint", "checkpoint.old", ".checkpoint.tmp-"
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
# fields that may change between a run and its resume; batch_size / grad_accum may too, if the global batch stays
RESUMABLE_CHANGES = {"out_dir", "steps", "save_every", "eval_every", "eval_windows", "eval_data", "log_every",
                     "device", "gradient_checkpointing", "batch_size", "grad_accum"}
STATE_TYPES = {"step": int, "config": dict, "files": dict, "scheduler": dict, "rng": dict, "metrics": list,
               "seconds": (int, float), "global_batch": int}  # what resuming reads from state.json


# ------------------------------------------------------------------------------------------------------------ RNG
def rng_state(device: torch.device) -> dict:
    """The torch (and CUDA) RNG state as base64 text for state.json."""
    return {"torch": _b64(torch.get_rng_state()),
            "cuda": _b64(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None}


def set_rng_state(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(_unb64(rng["torch"]))
    if device.type == "cuda" and rng.get("cuda"):
        torch.cuda.set_rng_state(_unb64(rng["cuda"]), device)


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


# -------------------------------------------------------------------------------------------------- write, read
def find_checkpoint(out_dir: str | Path) -> Path | None:
    """out_dir/checkpoint, or checkpoint.old if a save was cut between its two renames, or None. (A directory only
    ever gets the name `checkpoint` complete; `read_checkpoint` still checks every file.)"""
    for name in (CHECKPOINT, CHECKPOINT_OLD):
        path = Path(out_dir) / name
        if path.is_dir():
            return path
    return None


def _save_safetensors(tensors: dict, path: Path, step: int) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt", "step": str(step)})
    path.chmod(file_mode())  # safetensors writes a private temporary file and renames it
    fsync_file(path)


def write_checkpoint(out_dir: Path, model_state: dict, optim_state: dict, state: dict) -> Path:
    """Write the three files into a fresh temporary sibling directory, fsync them, and swap it in (module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(TMP_PREFIX + "*"):  # left by an earlier crash mid-write: never a valid checkpoint
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out_dir))
    tmp.chmod(file_mode(directory=True))  # mkdtemp makes it private
    step = state["step"]
    _save_safetensors(model_state, tmp / MODEL_FILE, step)
    _save_safetensors(optim_state, tmp / OPTIMIZER_FILE, step)
    state = {**state, "files": {name: (tmp / name).stat().st_size for name in (MODEL_FILE, OPTIMIZER_FILE)}}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")  # written last: marks a complete directory
    fsync_file(tmp / STATE_FILE)
    fsync_dir(tmp)
    final, old = out_dir / CHECKPOINT, out_dir / CHECKPOINT_OLD
    if final.exists():
        if old.exists():  # a stale leftover: `final` is complete
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def save(out_dir: Path, model, optimizer, state: dict) -> None:
    """Gather the full trainable weights and AdamW state (a collective: every rank calls it) and let rank 0 write them
    with `state` (step, config, scheduler, RNG, metrics, ...) as a checkpoint."""
    model_state = distributed.full_state(model, trainable_only=True)
    optim_state = distributed.full_optimizer_state(model, optimizer)
    if distributed.rank() == 0:
        write_checkpoint(out_dir, model_state, flatten_optimizer_state(optim_state), state)
    distributed.barrier()


def read_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    """(model tensors, optimizer tensors, state) of a checkpoint directory; ValueError naming the bad file."""
    state_path = path / STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as e:
        raise UserInputError(f"corrupted checkpoint file {state_path}: {e}") from None
    for key, kind in STATE_TYPES.items():
        if not isinstance(state, dict) or not isinstance(state.get(key), kind):
            raise UserInputError(f"corrupted checkpoint file {state_path}: {key!r} is missing or of the wrong type")
    try:
        TrainConfig.from_dict(state["config"])
    except (ValueError, TypeError) as e:
        raise UserInputError(f"corrupted checkpoint file {state_path}: config: {e}") from None
    tensors = []
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        file = path / name
        if not file.is_file():
            raise UserInputError(f"incomplete checkpoint {path}: {name} is missing")
        if file.stat().st_size != state["files"].get(name):
            raise UserInputError(f"corrupted checkpoint file {file}: {file.stat().st_size} bytes, state.json recorded "
                                 f"{state['files'].get(name)} (truncated or overwritten)")
        try:
            tensors.append(load_file(str(file)))
        except (SafetensorError, OSError) as e:
            raise UserInputError(f"corrupted checkpoint file {file}: {e}") from None
    return tensors[0], tensors[1], state


def check_tensors(tensors: dict[str, torch.Tensor], shapes: dict[str, torch.Size], file: Path) -> None:
    """UserInputError naming `file` unless `tensors` has exactly the names of `shapes`, each with its shape."""
    missing, extra = sorted(shapes.keys() - tensors.keys()), sorted(tensors.keys() - shapes.keys())
    if missing or extra:
        raise UserInputError(f"checkpoint {file} does not hold this run's trainable parameters: missing "
                             f"{missing[:3]}, unexpected {extra[:3]}")
    for name, shape in shapes.items():
        if tensors[name].shape != shape:
            raise UserInputError(f"checkpoint {file}: {name} has shape {tuple(tensors[name].shape)}, the run's model "
                                 f"needs {tuple(shape)}")


def flatten_optimizer_state(optim_state: dict) -> dict[str, torch.Tensor]:
    """DCP's full optimizer state dict {"state": {name: {"step", "exp_avg", "exp_avg_sq"}}} → {"name.exp_avg": t}."""
    return {f"{name}.{key}": torch.as_tensor(value) for name, entry in optim_state["state"].items()
            for key, value in entry.items()}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, dict]:
    state: dict[str, dict] = {}
    for key, value in tensors.items():
        name, _, part = key.rpartition(".")
        state.setdefault(name, {})[part] = value
    if set(state) != set(names):
        missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
        raise UserInputError(f"optimizer state does not match the trainable parameters: missing {missing[:3]}, "
                             f"unexpected {extra[:3]}")
    return state


# --------------------------------------------------------------------------------------------------------- resume
def check_resumable(saved: dict, cfg: TrainConfig, world: int) -> None:
    old = TrainConfig.from_dict(saved["config"])
    diff = [f"{f.name}: {getattr(old, f.name)!r} -> {getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)
            if f.name not in RESUMABLE_CHANGES and getattr(old, f.name) != getattr(cfg, f.name)]
    if diff:
        raise UserInputError(f"cannot resume: the checkpoint was trained with another configuration "
                             f"({'; '.join(diff)})")
    if saved["step"] > cfg.steps:
        raise UserInputError(f"cannot resume: the checkpoint is at step {saved['step']}, past steps = {cfg.steps}")
    if cfg.lr_schedule == "cosine" and old.steps != cfg.steps:  # the decay is spread over `steps`
        raise UserInputError(f"cannot resume: a cosine schedule decays over steps = {old.steps}; this run asks for "
                             f"{cfg.steps}")
    if cfg.group_schedule != "none" and old.steps != cfg.steps:  # so is the growth of the groups
        raise UserInputError(f"cannot resume: group_schedule {cfg.group_schedule!r} grows the groups over steps = "
                             f"{old.steps}; this run asks for {cfg.steps}")
    global_batch = cfg.batch_size * cfg.grad_accum * world
    if saved["global_batch"] != global_batch:
        raise UserInputError(f"cannot resume: the checkpoint's global batch is {saved['global_batch']}, this run's "
                             f"is {global_batch} (batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x world "
                             f"{world})")


def _read_checked(cfg: TrainConfig, world: int) -> tuple[Path, dict, dict, dict]:
    """The checkpoint to resume `cfg` from, read and checked against the run: (path, model tensors, optimizer state
    by parameter name, state.json)."""
    found = find_checkpoint(cfg.out_dir)
    if found is None:
        raise FileNotFoundError(f"nothing to resume: no checkpoint in {Path(cfg.out_dir) / CHECKPOINT} "
                                f"(start the run again with --overwrite)")
    model_tensors, optim_tensors, state = read_checkpoint(found)
    check_resumable(state, cfg, world)
    trainable = {name: p.shape for name, p in meta_model(cfg).named_parameters() if p.requires_grad}
    check_tensors(model_tensors, trainable, found / MODEL_FILE)
    adamw = {f"{name}.{key}": shape for name, shape in trainable.items() for key in ("exp_avg", "exp_avg_sq")}
    adamw.update({f"{name}.step": torch.Size() for name in trainable})
    check_tensors(optim_tensors, adamw, found / OPTIMIZER_FILE)
    return found, model_tensors, unflatten_optimizer_state(optim_tensors, list(trainable)), state


def read_resume_state(cfg: TrainConfig) -> tuple[Path, dict, dict, dict]:
    """(path, model tensors, optimizer state by parameter name, state.json) of the checkpoint to resume from. Rank 0
    reads and checks it; other ranks get its path and state.json and empty tensor dicts (rank 0 broadcasts the
    tensors while loading them). An error on rank 0 is raised on every rank, so that no rank is left waiting."""
    found, error, model_tensors, optim_state, state = None, None, {}, {}, None
    if distributed.rank() == 0:
        try:
            found, model_tensors, optim_state, state = _read_checked(cfg, distributed.world())
        except (ValueError, OSError) as e:
            error = e
    found, error, state = distributed.broadcast_objects([found, error, state])
    if error is not None:
        raise error
    return found, model_tensors, optim_state, state


def restore(saved: tuple, model, optimizer, scheduler, device: torch.device) -> dict:
    """Weights, AdamW, LR step and RNG from `read_resume_state`'s answer: everything the next step depends on.
    Returns state.json."""
    _, model_tensors, optim_tensors, state = saved
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    distributed.load_states(model, optimizer, model_tensors,
                            {"state": optim_tensors, "param_groups": [{**group, "params": names}]})
    scheduler.load_state_dict(state["scheduler"])
    for g, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
        g["lr"] = lr
    set_rng_state(state["rng"], device)
    return state


# -------------------------------------------------------------------------------------------------------- outputs
def _plain_model(cfg: TrainConfig, state: dict[str, torch.Tensor]) -> Llama:
    """A non-distributed CPU model holding `state` (every weight of the trained model, LoRA A/B included)."""
    model = meta_model(cfg)
    model.load_state_dict({k: v.detach().to("cpu").clone() for k, v in state.items()}, strict=True, assign=True)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model


def export_outputs(cfg: TrainConfig, state: dict[str, torch.Tensor], out_dir: Path, precision: str) -> dict:
    """out_dir/adapter (LoRA methods: a peft adapter) and out_dir/final (a HF directory, LoRA merged, whose config.json
    carries the RoPE scaling: the official merge script drops it). Returns their paths."""
    model = _plain_model(cfg, state)
    out = {"adapter": None}
    if cfg.method != "full":
        out["adapter"] = str(save_peft_adapter(model, out_dir / "adapter", base_model_name_or_path=cfg.base))
        merge_lora(model)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    out["final"] = str(to_hf(model.eval(), out_dir / "final", dtype=dtype))
    return out


def load_run(run_dir: str | Path) -> tuple[Llama, TrainConfig, dict]:
    """A run's latest checkpoint as a plain fp32 CPU model (frozen base re-read, trainable weights from the
    checkpoint, LoRA not merged), with its TrainConfig and state.json."""
    run_dir = Path(run_dir)
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir / CHECKPOINT}")
    model_tensors, _, state = read_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    model = build_model(cfg)
    check_tensors(model_tensors, {name: p.shape for name, p in model.named_parameters() if p.requires_grad},
                  checkpoint / MODEL_FILE)
    model.load_state_dict(model_tensors, strict=False)
    return model, cfg, state
