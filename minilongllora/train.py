"""The trainer: pretraining and LongLoRA context extension in one readable loop, resumable bit for bit.

One `train(TrainConfig)` covers every run of the project: the byte-level `tiny` model pretrained from scratch on a
2-core CPU, its 4x context extension with S2-Attn + LoRA+, and Llama-2-7B extended to 8k…100k tokens in bf16 with
FSDP2 on GPUs. The recipe of the paper (§4.1, App. B; the official fine-tune.py and its README command):

    AdamW(β1=0.9, β2=0.95, weight decay 0), lr 2e-5, 20 linear warmup steps then constant, gradient clipping 1.0,
    batch 1 x 8 accumulation steps per GPU, 1000 steps, S2-Attn with groups of n/4, LoRA r=8 α=16 on q/k/v/o with
    the embedding and norms trainable (LoRA+), linear position interpolation by ceil(target / original context).

The loop, per optimizer step s = 0, 1, …:  batch s of the global batch (every rank takes its own slice) → forward
(bf16 autocast on CUDA) → loss / grad_accum → backward, grad_accum times → clip_grad_norm_ → NaN check →
AdamW step → LR step.

Exact resume. A run killed at any instant (kill -9 included) and resumed with `resume=True` ends with weights
bit-identical to an uninterrupted run on the CPU. That needs four things and nothing else: the trainable weights, the
AdamW moments and step counts, the LR scheduler's step, and the torch RNG state, all in the checkpoint; batches come
from `PackedDataset.batch(step, ...)`, a pure function of (seed, step, batch size), so the data needs no state.

Checkpoints (out_dir/checkpoint/): `model.safetensors` (the trainable parameters: all of them for full fine-tuning,
LoRA A/B + embedding + norms for LoRA+; the frozen base is re-read from `base`), `optimizer.safetensors` (AdamW's
exp_avg, exp_avg_sq and step of every parameter, keyed `<parameter name>.<state>`), `state.json` (step, config,
metrics, RNG, data position, file sizes). Only safetensors and JSON, never pickle. Each checkpoint is written into a
temporary sibling directory, fsynced, then swapped in by two renames (checkpoint → checkpoint.old, tmp →
checkpoint); a crash between them leaves checkpoint.old, which `find_checkpoint` then uses. So a kill at any instant
leaves the old or the new checkpoint complete.

Precision. `precision="bf16"` is autocast with fp32 master weights for everything that trains: the default on CUDA,
and what the CPU-small recipes use on a CPU with native bf16 (AVX-512 BF16 / AMX: about 2x the tokens/s of fp32,
benchmarks/bench_speed.py); `None` means fp32 on the CPU. On CUDA with a LoRA method the FROZEN base weights are
stored in bf16 (half the memory of a 7B base; for the linear layers the same numbers, since autocast casts their
weights to bf16 anyway), while LoRA A/B and, with LoRA+, the embedding and the norms stay fp32, and the final HF model
is written in bf16. On the CPU every weight stays fp32 and so does the final model.

Distributed. Under `torchrun` (WORLD_SIZE > 1) the process group is nccl on CUDA and gloo on CPU; every block and
the root are sharded with FSDP2 `fully_shard`; rank r takes rows [(r·accum + j)·b, (r·accum + j + 1)·b) of the global
batch (b · accum · world rows) at micro-step j; full state dicts are gathered to rank 0, which alone writes logs and
checkpoints; on resume rank 0 reads the checkpoint and broadcasts it (`broadcast_from_rank0`). Every rank reads the
base model itself. FSDP2 runs on CPU with gloo in torch 2.13 (gloo has reduce-scatter), which the tests use: 2 ranks
give the losses and weights of 1 process with the same global batch to ~1e-7.

References: Chen et al., LongLoRA (ICLR 2024, arXiv 2309.12307) §3-4 and App. B; dvlab-research/LongLoRA fine-tune.py;
nanoGPT train.py; torchtitan (FSDP2 + distributed state dicts).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import ATTENTION_PATTERNS, PRESETS, S2_VARIANTS, LlamaConfig
from . import passkey
from .data import PackedDataset, corpus_tokens, load_corpus, load_token_bin, pack
from .errors import UserInputError, check_token_ids, finite_float
from .hf import atomic_write, file_mode, from_hf, to_hf
from .lora import apply_lora, apply_lora_plus, format_parameter_report, merge_lora, save_peft_adapter
from .model import Llama, lm_loss
from .rope import interpolation_factor

METHODS = ("full", "lora", "lora_plus")
PRECISIONS = ("fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")
CHECKPOINT, CHECKPOINT_OLD, TMP_PREFIX = "checkpoint", "checkpoint.old", ".checkpoint.tmp-"
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
# fields that may change between a run and its resume; batch_size / grad_accum may too, if the global batch stays
RESUMABLE_CHANGES = {"out_dir", "steps", "save_every", "eval_every", "eval_windows", "eval_data", "log_every",
                     "device", "gradient_checkpointing", "batch_size", "grad_accum"}
STATE_TYPES = {"step": int, "config": dict, "files": dict, "scheduler": dict, "rng": dict, "metrics": list,
               "seconds": (int, float), "global_batch": int}  # what resuming reads from state.json
RUN_FILES = ("run.json", "metrics.jsonl", CHECKPOINT, CHECKPOINT_OLD, "adapter", "final")  # what a run writes
FLOAT_FIELDS = ("lr", "min_lr_ratio", "passkey_share", "weight_decay", "clip", "lora_alpha", "lora_dropout", "group_size_ratio", "rope_factor")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the last good checkpoint is kept as it was."""


@dataclass
class TrainConfig:
    base: str  # a preset name (random init: pretraining) or a Hugging Face directory (fine-tuning)
    out_dir: str = "runs/run"  # metrics.jsonl, checkpoint/, adapter/ (LoRA methods), final/ (HF directory)
    seq_len: int = 256  # training context in tokens (the target context when extending)
    steps: int = 100  # optimizer steps
    batch_size: int = 1  # micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = batch_size · grad_accum · world size
    lr: float = 2e-5  # peak learning rate (paper: 2e-5 for 7B/13B)
    weight_decay: float = 0.0  # AdamW decoupled weight decay, on every trainable parameter (paper: 0)
    warmup_steps: int = 20  # linear warmup, then constant (paper: 20) or cosine (lr_schedule)
    lr_schedule: str = "constant"  # constant (the paper's fine-tuning) | cosine (decay to min_lr_ratio · lr: pretraining)
    min_lr_ratio: float = 0.1  # cosine: the last step's lr / peak lr (Llama 2 pretraining: 0.1)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW (paper: 0.9, 0.95; the official code runs HF's 0.999)
    clip: float = 1.0  # max global gradient norm; 0 = no clipping (the norm is still logged)
    seed: int = 0  # model init, LoRA init, data order
    method: str = "full"  # full | lora | lora_plus (LoRA + trainable embedding and norms, §3.3)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    train_embed: bool = True  # lora_plus: train the token embedding
    train_norm: bool = True  # lora_plus: train every RMSNorm
    attention: str = "full"  # training attention: full, s2 (S2-Attn), or any pattern of attention.PATTERNS
    s2_variant: str = "split"  # how the shifted half of the heads is grouped (Table 8)
    group_size_ratio: float = 0.25  # S2-Attn group size / seq_len (App. B.2: 1/4)
    rope_factor: float | None = None  # linear position interpolation; None = ceil(seq_len / base context) past it
    gradient_checkpointing: bool | None = None  # None = on with CUDA, off on the CPU
    precision: str | None = None  # fp32 | bf16 (autocast); None = bf16 on CUDA, fp32 on the CPU
    data: str = "pystdlib"  # "pystdlib" (the shipped corpus, byte tokens) or a token .bin file (uint16)
    passkey_share: float = 0.0  # pystdlib only: this fraction of the training tokens are code-passkey documents
    eval_data: str | None = None  # validation tokens (.bin); None = pystdlib's validation split if data is pystdlib
    save_every: int = 0  # checkpoint every N steps (0 = only at the end)
    eval_every: int = 0  # validation perplexity every N steps (0 = never)
    eval_windows: int = 8  # validation windows of seq_len tokens (the first ones of the split)
    log_every: int = 10  # print a metrics line every N steps (metrics.jsonl gets every step)
    model_overrides: dict = field(default_factory=dict)  # LlamaConfig fields for a preset base: {"n_layers": 2}
    device: str | None = None  # None = cuda if available, else cpu

    def __post_init__(self):
        self.betas = tuple(finite_float(b, "TrainConfig.betas") for b in self.betas)
        for name in FLOAT_FIELDS:  # NaN and infinity pass comparisons such as `lr > 0`: refused first
            if getattr(self, name) is not None:
                finite_float(getattr(self, name), f"TrainConfig.{name}")
        positive = ("seq_len", "steps", "batch_size", "grad_accum", "lora_r", "eval_windows", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserInputError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if self.seq_len < 2:
            raise UserInputError(f"TrainConfig.seq_len must be >= 2 (a token is learned from the tokens before it), "
                                 f"got {self.seq_len}")
        for name in ("warmup_steps", "save_every", "eval_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserInputError(f"TrainConfig.{name} must be a non-negative integer, got {value!r}")
        if not self.lr > 0:
            raise UserInputError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise UserInputError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserInputError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        # AdamW's first step multiplies by lr / (1 - beta1), its weight decay by lr · weight_decay: both in float32
        if max(self.lr / (1 - self.betas[0]), self.lr * self.weight_decay) > torch.finfo(torch.float32).max:
            raise UserInputError(f"TrainConfig.lr {self.lr:g} is too large: AdamW's step lr / (1 - beta1) or "
                                 f"lr * weight_decay overflows float32")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserInputError(f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserInputError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not 0 <= self.passkey_share < 1:
            raise UserInputError(f"TrainConfig.passkey_share must be in [0, 1), got {self.passkey_share!r}")
        if self.passkey_share and self.data != "pystdlib":
            raise UserInputError("TrainConfig.passkey_share mixes code-passkey documents into the pystdlib corpus; "
                                 f"it cannot apply to data = {self.data!r}")
        if not self.clip >= 0:
            raise UserInputError(f"TrainConfig.clip must be >= 0 (0 = no clipping), got {self.clip!r}")
        if self.method not in METHODS:
            raise UserInputError(f"TrainConfig.method must be one of {METHODS}, got {self.method!r}")
        if not self.lora_alpha > 0 or not 0 <= self.lora_dropout < 1:
            raise UserInputError(f"TrainConfig: need lora_alpha > 0 and 0 <= lora_dropout < 1, got "
                                 f"{self.lora_alpha!r}, {self.lora_dropout!r}")
        if self.attention not in ATTENTION_PATTERNS:
            raise UserInputError(f"TrainConfig.attention must be one of {ATTENTION_PATTERNS}, got {self.attention!r}")
        if self.s2_variant not in S2_VARIANTS:
            raise UserInputError(f"TrainConfig.s2_variant must be one of {S2_VARIANTS}, got {self.s2_variant!r}")
        if not 0 < self.group_size_ratio <= 1:
            raise UserInputError(f"TrainConfig.group_size_ratio must be in (0, 1], got {self.group_size_ratio!r}")
        if self.attention != "full":  # the official code raises on a remainder too (llama_attn_replace.py L237-241)
            group = max(2, int(self.seq_len * self.group_size_ratio))  # LlamaConfig.group_size
            block = 2 * group if self.attention == "dilated" else group
            if group % 2 or self.seq_len % block:
                raise UserInputError(f"seq_len {self.seq_len} is not divisible into S2-Attn groups: group_size_ratio "
                                     f"{self.group_size_ratio} gives groups of {group} tokens, which must be even and "
                                     f"divide seq_len{' twice' if block != group else ''}")
        if self.rope_factor is not None and not self.rope_factor >= 1:
            raise UserInputError(f"TrainConfig.rope_factor must be >= 1 (1 = no interpolation) or None, got "
                                 f"{self.rope_factor!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserInputError(f"TrainConfig.precision must be one of {PRECISIONS} or None, got {self.precision!r}")
        if not isinstance(self.model_overrides, dict):
            raise UserInputError(f"TrainConfig.model_overrides must be a dict, got {self.model_overrides!r}")
        if self.eval_every and self.data != "pystdlib" and self.eval_data is None:
            raise UserInputError(f"TrainConfig.eval_every = {self.eval_every} needs validation data: with data = "
                                 f"{self.data!r}, set eval_data (--eval-data FILE.bin), or eval_every = 0")

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


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
    if precision == "bf16" and device.type == "cpu" and not _native_cpu_bf16():
        print("warning: this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 autocast may be slower than fp32; "
              "pass --precision fp32", file=sys.stderr)
    return precision


def _native_cpu_bf16() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------------ the model
def resolve_model_config(cfg: TrainConfig) -> tuple[LlamaConfig, bool]:
    """The LlamaConfig this run trains, and whether the base is a preset (random init) rather than a directory.

    RoPE (the official fine-tune.py L115-131): past the base's context, linear position interpolation by
    ceil(seq_len / max_seq_len) unless `rope_factor` says otherwise (1 = none). A preset trains from scratch, so there
    is nothing to interpolate: its context simply becomes seq_len."""
    if cfg.base in PRESETS:
        base = LlamaConfig.from_preset(cfg.base, **cfg.model_overrides)
        from_scratch = True
    else:
        if not cfg.base:
            raise UserInputError("no base model: pass a preset name or a Hugging Face directory (--base PATH)")
        path = Path(cfg.base)
        if not path.is_dir():
            raise FileNotFoundError(f"base {cfg.base!r} is neither a preset ({', '.join(PRESETS)}) nor a directory "
                                    f"(make a base with `python -m minilongllora pretrain`, then `python -m "
                                    f"minilongllora export runs/pretrain-tiny --out {cfg.base}`)")
        if cfg.model_overrides:
            raise UserInputError("model_overrides apply to a preset base only; a directory's config.json fixes the "
                                 "shape")
        base = LlamaConfig.from_hf(path)
        from_scratch = False
    max_seq_len, scaling = base.max_seq_len, base.rope_scaling
    if cfg.rope_factor is not None and cfg.rope_factor > 1:
        scaling = {"rope_type": "linear", "factor": float(cfg.rope_factor)}
    elif cfg.seq_len > base.context_length:
        if from_scratch:
            max_seq_len = cfg.seq_len
        elif cfg.rope_factor is None:
            scaling = {"rope_type": "linear", "factor": float(interpolation_factor(cfg.seq_len, base.max_seq_len))}
    config = base.replace(max_seq_len=max_seq_len, rope_scaling=scaling, attention=cfg.attention,
                          s2_variant=cfg.s2_variant, group_size_ratio=cfg.group_size_ratio)
    if cfg.seq_len > config.context_length:
        raise UserInputError(f"seq_len {cfg.seq_len} exceeds the model's context of {config.context_length} tokens "
                             f"(max_seq_len {config.max_seq_len}, RoPE scaling {config.rope_scaling}); leave "
                             f"rope_factor unset for position interpolation by ceil(seq_len / context), or raise it")
    if cfg.attention != "full" and config.n_heads % 2:
        raise UserInputError(f"attention {cfg.attention!r} shifts half of the heads: n_heads must be even, got "
                             f"{config.n_heads}")
    return config, from_scratch


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu", precision: str = "fp32") -> Llama:
    """The model of a run before any training: base (seeded random init for a preset, weights from a directory),
    then the method (LoRA / LoRA+ freeze the base). Seeds torch first, so a preset's random base is the same
    function of `cfg.seed` every time (the checkpoint of a LoRA run does not hold the frozen base)."""
    config, from_scratch = resolve_model_config(cfg)
    torch.manual_seed(cfg.seed)
    frozen_bf16 = precision == "bf16" and cfg.method != "full"
    if from_scratch:
        model = Llama(config)
    else:
        model = from_hf(cfg.base, dtype=torch.bfloat16 if frozen_bf16 else torch.float32, **{
            k: getattr(config, k) for k in ("rope_scaling", "attention", "s2_variant", "group_size_ratio")})
    if cfg.method == "lora":
        apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    elif cfg.method == "lora_plus":
        apply_lora_plus(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                        train_embed=cfg.train_embed, train_norm=cfg.train_norm)
    else:
        model.requires_grad_(True)
    if frozen_bf16:  # frozen weights in bf16, everything that trains in fp32 (see the module docstring)
        for p in model.parameters():
            p.data = p.data.to(torch.float32 if p.requires_grad else torch.bfloat16)
    return model.to(device)


def _shard(model: Llama, device: torch.device) -> Llama:
    """FSDP2: each transformer block is one unit (its parameters all-gathered just before its forward and freed
    after), then the root (embedding, final norm, LM head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (_world(),))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _state_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Full (unsharded) trainable weights by name, on CPU; under FSDP only rank 0 receives them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_state_options(ignore_frozen_params=True))


def make_optimizer(model, cfg: TrainConfig, device: torch.device | str = "cpu") -> torch.optim.AdamW:
    """AdamW over the trainable parameters ONLY (frozen LoRA bases get no moments: the memory LoRA saves). On one
    CPU process the fused kernel (one pass over each parameter, deterministic); otherwise torch's default."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = torch.device(device).type == "cpu" and not dist.is_initialized()
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=1e-8,
                             fused=fused or None)


# ----------------------------------------------------------------------------------------------------------- data
class _TokenFileRows(PackedDataset):
    """PackedDataset's batches (same permutations, same `batch(step, batch_size)`) read lazily from a memory-mapped
    token file, so a billion-token RedPajama .bin is never copied into RAM (PackedDataset holds a tensor)."""

    def __init__(self, path: str, seq_len: int, seed: int):
        self.file, self._seq_len, self.seed, self._perms = load_token_bin(path), seq_len, int(seed), {}
        self.rows = len(self.file) // seq_len
        if self.rows == 0:
            raise UserInputError(f"{path} holds {len(self.file)} tokens, fewer than one sequence of {seq_len}")

    def __len__(self) -> int:
        return self.rows

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        n = self._seq_len
        rows = [np.asarray(self.file.tokens[i * n:(i + 1) * n], dtype=np.int64) for i in self.indices(step, batch_size)]
        return torch.from_numpy(np.stack(rows))


def load_dataset(cfg: TrainConfig, vocab_size: int | None = None) -> PackedDataset:
    """The training rows; with `vocab_size`, every token id of the data is checked against it first."""
    if cfg.data == "pystdlib" and cfg.passkey_share:  # + code-passkey documents (passkey.py), a share of all tokens
        docs = load_corpus("train")
        n_real = sum(len(d.encode()) for d in docs)
        extra = passkey.training_documents(docs, round(n_real * cfg.passkey_share / (1 - cfg.passkey_share)),
                                           cfg.seq_len, seed=cfg.seed)
        dataset = PackedDataset(pack(docs + extra, cfg.seq_len), seed=cfg.seed)
        tokens = dataset.tokens
    elif cfg.data == "pystdlib":
        dataset = PackedDataset(corpus_tokens("train", cfg.seq_len), seed=cfg.seed)
        tokens = dataset.tokens
    elif not Path(cfg.data).is_file():
        raise FileNotFoundError(f"data {cfg.data!r} is neither 'pystdlib' nor a token .bin file")
    else:
        dataset = _TokenFileRows(cfg.data, cfg.seq_len, cfg.seed)
        tokens = dataset.file.tokens
    if vocab_size is not None:
        check_token_ids(tokens, vocab_size, f"data {cfg.data}")
    return dataset


def validation_rows(cfg: TrainConfig, vocab_size: int | None = None) -> torch.Tensor | None:
    """The first `eval_windows` windows of seq_len tokens of the validation data, or None with eval_every = 0; with
    `vocab_size`, their token ids are checked against it."""
    if cfg.eval_every == 0:
        return None
    if cfg.eval_data is not None:
        tokens = load_token_bin(cfg.eval_data).tokens
        n = min(cfg.eval_windows, len(tokens) // cfg.seq_len)
        if n == 0:
            raise UserInputError(f"eval_data {cfg.eval_data} holds fewer than seq_len = {cfg.seq_len} tokens")
        rows = torch.from_numpy(np.asarray(tokens[:n * cfg.seq_len], dtype=np.int64)).view(n, cfg.seq_len)
    else:  # pystdlib's validation split (TrainConfig asks for eval_data with any other data)
        rows = corpus_tokens("validation", cfg.seq_len)[:cfg.eval_windows]
    if vocab_size is not None:
        check_token_ids(rows, vocab_size, f"validation data {cfg.eval_data or cfg.data}")
    return rows


# ---------------------------------------------------------------------------------------------------- checkpoints
def find_checkpoint(out_dir: str | Path) -> Path | None:
    """out_dir/checkpoint, or checkpoint.old if a save was cut between its two renames, or None. (A directory only
    ever gets the name `checkpoint` complete; `read_checkpoint` still checks every file.)"""
    for name in (CHECKPOINT, CHECKPOINT_OLD):
        path = Path(out_dir) / name
        if path.is_dir():
            return path
    return None


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _save_safetensors(tensors: dict, path: Path, step: int) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt", "step": str(step)})
    path.chmod(file_mode())  # safetensors writes a private temporary file and renames it
    with open(path, "rb") as f:
        os.fsync(f.fileno())


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
    _write_json(tmp / STATE_FILE, state)  # written last: its presence marks a complete directory
    _fsync_dir(tmp)
    final, old = out_dir / CHECKPOINT, out_dir / CHECKPOINT_OLD
    if final.exists():
        if old.exists():  # a stale leftover: `final` is complete
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


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
    sizes = state["files"]
    tensors = []
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        file = path / name
        if not file.is_file():
            raise UserInputError(f"incomplete checkpoint {path}: {name} is missing")
        if file.stat().st_size != sizes.get(name):
            raise UserInputError(f"corrupted checkpoint file {file}: {file.stat().st_size} bytes, state.json recorded "
                                 f"{sizes.get(name)} (truncated or overwritten)")
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
    global_batch = cfg.batch_size * cfg.grad_accum * world
    if saved["global_batch"] != global_batch:
        raise UserInputError(f"cannot resume: the checkpoint's global batch is {saved['global_batch']}, this run's "
                             f"is {global_batch} (batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x world "
                             f"{world})")


# ------------------------------------------------------------------------------------------------------ the loop
def _log_line(record: dict) -> str:
    parts = [f"step {record['step']}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.3g}",
             f"grad_norm {record['grad_norm']:.3f}", f"{record['tok_per_s']:.0f} tok/s"]
    if "val_ppl" in record:
        parts.append(f"val_ppl {record['val_ppl']:.3f}")
    return " | ".join(parts)


@torch.no_grad()
def validation_loss(model, rows: torch.Tensor, batch_size: int, device, autocast) -> float:
    """Mean next-token loss over `rows` in eval mode (full attention, as the paper tests)."""
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


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run `cfg` (or continue it from out_dir/checkpoint with resume=True; overwrite=True starts again in a directory
    that holds a run). Returns {"step", "loss", "metrics", "out_dir", "checkpoint", "final", "adapter"}. Raises
    UserInputError / FileNotFoundError on bad input, before anything is written, and TrainingDiverged on a NaN or
    infinite loss or gradient norm."""
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 alone writes: a rank looking later could see its new files
        check_out_dir(cfg.out_dir, resume, overwrite)
    device = _device_of(cfg)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", device.index or 0)))
        torch.cuda.set_device(device)  # before NCCL starts
    created_group = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created_group = True
    deterministic = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        return _train(cfg, resume, overwrite, device)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        if created_group:
            dist.destroy_process_group()


def _read_resume_state(cfg: TrainConfig, world: int) -> tuple[Path, dict, dict, dict] | None:
    """(path, model tensors, optimizer state by parameter name, state.json) of the checkpoint to resume from. Rank 0
    reads and checks it; other ranks get its path and state.json and empty tensor dicts (rank 0 broadcasts the
    tensors while loading them). An error on rank 0 is raised on every rank, so that no rank is left waiting."""
    found, error, tensors = None, None, ({}, {}, None)
    if _rank() == 0:
        try:
            found = find_checkpoint(cfg.out_dir)
            if found is None:
                raise FileNotFoundError(f"nothing to resume: no checkpoint in {Path(cfg.out_dir) / CHECKPOINT} "
                                        f"(start the run again with --overwrite)")
            model_tensors, optim_tensors, state = read_checkpoint(found)
            check_resumable(state, cfg, world)
            trainable = {name: p.shape for name, p in _meta_model(cfg).named_parameters() if p.requires_grad}
            check_tensors(model_tensors, trainable, found / MODEL_FILE)
            adamw = {f"{name}.{key}": shape for name, shape in trainable.items() for key in ("exp_avg", "exp_avg_sq")}
            adamw.update({f"{name}.step": torch.Size() for name in trainable})
            check_tensors(optim_tensors, adamw, found / OPTIMIZER_FILE)
            tensors = (model_tensors, unflatten_optimizer_state(optim_tensors, list(trainable)), state)
        except (ValueError, OSError) as e:
            error = e
    if world > 1:
        shared = [found, error, tensors[2]]
        dist.broadcast_object_list(shared, src=0)  # torch's own message between our processes, not a file
        found, error, state = shared
        tensors = (*tensors[:2], state)
    if error is not None:
        raise error
    return (found, *tensors)


def _train(cfg: TrainConfig, resume: bool, overwrite: bool, device: torch.device) -> dict:
    rank, world = _rank(), _world()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the official command's --tf32
        torch.backends.cudnn.allow_tf32 = True
    else:  # bit-exact resume on the CPU; warn_only: an op without a deterministic kernel warns, never fails
        torch.use_deterministic_algorithms(True, warn_only=True)
        # not the NaN-filling of every new tensor that comes with it: a debugging aid that costs ~20% of a bf16 step
        torch.utils.deterministic.fill_uninitialized_memory = False
    precision = _precision(cfg, device)
    out_dir = Path(cfg.out_dir)
    saved = _read_resume_state(cfg, world) if resume else None  # before anything is written
    checkpoint = saved[0] if saved is not None else None

    seed_everything(cfg.seed)
    # the frozen weights (and the exported model) in bf16 on CUDA only, where the memory matters; on the CPU they stay
    # fp32 (autocast casts them per forward: the same numbers) and final/ keeps the base's exact weights
    weights = precision if device.type == "cuda" else "fp32"
    model = build_model(cfg, device="cpu" if world > 1 else device, precision=weights)
    model.gradient_checkpointing = (device.type == "cuda") if cfg.gradient_checkpointing is None \
        else cfg.gradient_checkpointing
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if world > 1:
        model = _shard(model, device)
    optimizer = make_optimizer(model, cfg, device)
    params = optimizer.param_groups[0]["params"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.lr_schedule,
                                                                                cfg.steps, cfg.min_lr_ratio))
    dataset = load_dataset(cfg, model.config.vocab_size)
    val_rows = validation_rows(cfg, model.config.vocab_size)
    global_batch = cfg.batch_size * cfg.grad_accum * world
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" \
        else contextlib.nullcontext

    start, metrics, seconds = 0, [], 0.0
    if saved is not None:  # restore weights, AdamW, LR step and RNG: everything the next step depends on
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        _, model_tensors, optim_tensors, state = saved
        load = _state_options(strict=False, broadcast_from_rank0=world > 1)
        set_model_state_dict(model, model_tensors, options=load)
        group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        optim_state = {"state": optim_tensors, "param_groups": [{**group, "params": names}]}
        set_optimizer_state_dict(model, optimizer, optim_state, options=load)
        scheduler.load_state_dict(state["scheduler"])
        for g, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            g["lr"] = lr
        torch.set_rng_state(_unb64(state["rng"]["torch"]))
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state(_unb64(state["rng"]["cuda"]), device)
        start, metrics, seconds = state["step"], state["metrics"], state["seconds"]

    if rank == 0:  # every check passed: the first write
        if overwrite:
            _remove_run(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config = model.config
        run = {"train_config": cfg.to_dict(), "rope_scaling": config.rope_scaling, "max_seq_len": config.max_seq_len,
               "world_size": world, "global_batch": global_batch, "precision": precision, "device": str(device)}
        atomic_write(out_dir / "run.json", lambda tmp: tmp.write_text(json.dumps(run, indent=1) + "\n"))
        # metrics.jsonl holds exactly the checkpoint's history: lines a killed run wrote after it are dropped
        atomic_write(out_dir / "metrics.jsonl", lambda tmp: tmp.write_text("".join(json.dumps(m) + "\n"
                                                                                   for m in metrics)))
        what = f"resuming at step {start} from {checkpoint}" if saved is not None else "starting"
        print(f"{what}: {cfg.base} -> {out_dir}, {cfg.method}, attention {cfg.attention}, seq_len {cfg.seq_len}, "
              f"RoPE scaling {config.rope_scaling}, {precision} on {device} x {world}, global batch {global_batch} "
              f"({global_batch * cfg.seq_len} tokens/step), {len(dataset)} training sequences")
        if world == 1:
            print(format_parameter_report(model))

    def save(step: int) -> None:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        model_state = trainable_state(model)  # collectives: every rank takes part
        optim_state = get_optimizer_state_dict(model, optimizer, options=_state_options())
        if rank == 0:
            rng = {"torch": _b64(torch.get_rng_state()),
                   "cuda": _b64(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None}
            write_checkpoint(out_dir, model_state, flatten_optimizer_state(optim_state), {
                "step": step, "config": cfg.to_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
                "data": {"next_batch": step, "samples_seen": step * global_batch}, "global_batch": global_batch,
                "world_size": world, "seconds": seconds, "metrics": metrics})
        if world > 1:
            dist.barrier()

    model.train()
    # the bar only on a terminal (disable=None); logs always get a line every log_every steps (bar.write → stdout)
    bar = tqdm(total=cfg.steps, initial=start, disable=None if rank == 0 else True, desc="train", dynamic_ncols=True)
    metrics_file = open(out_dir / "metrics.jsonl", "a") if rank == 0 else None
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            rows = dataset.batch(step, global_batch)  # (global batch, seq_len): a function of (seed, step) alone
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                first = (rank * cfg.grad_accum + micro) * cfg.batch_size
                tokens = rows[first:first + cfg.batch_size].to(device)
                with autocast():
                    logits = model(tokens)
                loss = lm_loss(logits, tokens)
                (loss / cfg.grad_accum).backward()  # gradients add up over micro-batches: their mean, in the end
                loss_sum += loss.detach()
            if world > 1:  # the logged loss is the mean over the whole global batch
                dist.all_reduce(loss_sum)
            loss_value = loss_sum.item() / (cfg.grad_accum * world)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip if cfg.clip > 0 else float("inf"))
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor, already reduced over the shards
                grad_norm = grad_norm.full_tensor()
            grad_norm = grad_norm.item()
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                last, last_step = find_checkpoint(out_dir), None
                with contextlib.suppress(OSError, ValueError, KeyError):
                    last_step = json.loads((last / STATE_FILE).read_text())["step"] if last is not None else None
                kept = f"the last good checkpoint ({last}, step {last_step}) is kept" if last is not None \
                    else "no checkpoint was written"
                raise TrainingDiverged(f"training diverged at step {step + 1}: loss {loss_value}, grad norm "
                                       f"{grad_norm}; this step was not applied and {kept}")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            dt = time.perf_counter() - t0
            seconds += dt
            record = {"step": step + 1, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                      "tokens": (step + 1) * global_batch * cfg.seq_len, "seconds": round(seconds, 3),
                      "tok_per_s": global_batch * cfg.seq_len / dt}
            if val_rows is not None and (step + 1) % cfg.eval_every == 0:
                val = validation_loss(model, val_rows, cfg.batch_size, device, autocast)
                record.update(val_loss=val, val_ppl=math.exp(val))
            metrics.append(record)
            if rank == 0:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tok_per_s']:.0f}")
                bar.update(1)
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    bar.write(_log_line(record))
                    sys.stdout.flush()
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
                save(step + 1)
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()

    result = {"step": cfg.steps, "loss": metrics[-1]["loss"] if metrics else None, "metrics": metrics,
              "out_dir": str(out_dir), "checkpoint": str(out_dir / CHECKPOINT), "final": None, "adapter": None}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_state_options())  # every weight, gathered to rank 0
    if rank == 0:
        result.update(export_outputs(cfg, full, out_dir, weights))
    if world > 1:
        dist.barrier()
    return result


# -------------------------------------------------------------------------------------------------------- outputs
def _meta_model(cfg: TrainConfig) -> Llama:
    """The run's model structure (method applied, trainable flags set) on the meta device: no memory, no weights."""
    config, _ = resolve_model_config(cfg)
    with torch.device("meta"):
        model = Llama(config)
        if cfg.method == "lora":
            apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
        elif cfg.method == "lora_plus":
            apply_lora_plus(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            train_embed=cfg.train_embed, train_norm=cfg.train_norm)
    return model


def _plain_model(cfg: TrainConfig, state: dict[str, torch.Tensor]) -> Llama:
    """A non-distributed CPU model holding `state` (every weight of the trained model, LoRA A/B included)."""
    model = _meta_model(cfg)
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
