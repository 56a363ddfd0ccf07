"""`TrainConfig`: everything one training run depends on, and the model it starts from.

One dataclass covers every run of the project: the byte-level `tiny` model pretrained from scratch on a 2-core CPU,
its 4x context extension with S2-Attn + LoRA+, and Llama-2-7B extended to 8k…100k tokens. Every field carries its
`--help` text in its metadata (the command line builds its flags from them). `build_model` turns a config into the
model before its first step: the base (a preset's seeded random init, or a Hugging Face directory), the RoPE setting
of the run (position interpolation past the base's context), and the method (LoRA / LoRA+ freeze the base).
`attention_at_step` is the attention of each optimizer step: the training pattern, or what the two remedies for
grouped training make of it (full-attention steps, groups that grow to the whole window; issue 16).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .attention import group_size
from .config import PRESETS, LlamaConfig, check_attention_settings
from .errors import UserInputError, finite_float
from .hf import from_hf
from .lora import apply_lora, apply_lora_plus
from .model import Llama
from .patterns import N_SINK, block_of, group_sizes, head_chunks
from .rope import interpolation_factor, linear_scaling

METHODS = ("full", "lora", "lora_plus")
PRECISIONS = ("fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")
PASSKEY_PLACEMENTS = ("packed", "row")
GROUP_SCHEDULES = ("none", "grow")
FLOAT_FIELDS = ("lr", "min_lr_ratio", "passkey_share", "weight_decay", "clip", "lora_alpha", "lora_dropout",
                "group_size_ratio", "rope_factor", "group_schedule_start")


def _opt(default, help: str, **kw):
    """A field with its --help text in the metadata."""
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    base: str = field(metadata={"help": "a preset name (random init: pretraining) or a Hugging Face directory "
                                        "(fine-tuning)"})
    out_dir: str = _opt("runs/run", "metrics.jsonl, checkpoint/, adapter/ (LoRA methods), final/ (HF directory)")
    seq_len: int = _opt(256, "training context in tokens (the target context when extending)")
    steps: int = _opt(100, "optimizer steps")
    batch_size: int = _opt(1, "micro-batch per process")
    grad_accum: int = _opt(1, "micro-batches per optimizer step; global batch = batch_size · grad_accum · world size")
    lr: float = _opt(2e-5, "peak learning rate (paper: 2e-5 for 7B/13B)")
    weight_decay: float = _opt(0.0, "AdamW decoupled weight decay, on every trainable parameter (paper: 0)")
    warmup_steps: int = _opt(20, "linear warmup, then constant (paper: 20) or cosine (lr_schedule)")
    lr_schedule: str = _opt("constant", "constant (the paper's fine-tuning) | cosine (decay to min_lr_ratio · lr: "
                                        "pretraining)")
    min_lr_ratio: float = _opt(0.1, "cosine: the last step's lr / peak lr (Llama 2 pretraining: 0.1)")
    betas: tuple[float, float] = _opt((0.9, 0.95), "AdamW (paper: 0.9, 0.95; the official code runs HF's 0.999)")
    clip: float = _opt(1.0, "max global gradient norm; 0 = no clipping (the norm is still logged)")
    seed: int = _opt(0, "model init, LoRA init, data order")
    method: str = _opt("full", "full | lora | lora_plus (LoRA + trainable embedding and norms, §3.3)")
    lora_r: int = _opt(8, "LoRA rank")
    lora_alpha: float = _opt(16.0, "LoRA scale alpha (the update is alpha / r · B A x)")
    lora_dropout: float = _opt(0.0, "dropout on the LoRA branch's input")
    train_embed: bool = _opt(True, "lora_plus: train the token embedding")
    train_norm: bool = _opt(True, "lora_plus: train every RMSNorm")
    attention: str = _opt("full", "training attention: full, s2 (S2-Attn), or any pattern of patterns.PATTERNS")
    s2_variant: str = _opt("split", "how the shifted half of the heads is grouped (Table 8)")
    group_size_ratio: float = _opt(0.25, "S2-Attn group size / seq_len (App. B.2: 1/4)")
    n_sink: int = _opt(N_SINK, "short_sink / s2_sink: every query also reads the first n_sink tokens (StreamingLLM)")
    full_attention_every: int = _opt(0, "remedy: every k-th optimizer step (k, 2k, ...) attends fully; 0 = never")
    group_schedule: str = _opt("none", "remedy: none | grow (after group_schedule_start of the steps the groups grow "
                                       "linearly, in valid sizes, to the whole window: full attention at the last "
                                       "step)")
    group_schedule_start: float = _opt(0.5, "grow: the fraction of the steps trained with the configured groups")
    rope_factor: float | None = _opt(None, "linear position interpolation; None = ceil(seq_len / base context) past it")
    gradient_checkpointing: bool | None = _opt(None, "None = on with CUDA, off on the CPU")
    precision: str | None = _opt(None, "fp32 | bf16 (autocast); None = bf16 on CUDA, fp32 on the CPU")
    data: str = _opt("pystdlib", "\"pystdlib\" (the shipped corpus, byte tokens) or a token .bin file (uint16)")
    passkey_share: float = _opt(0.0, "pystdlib only: this fraction of the training tokens are code-passkey "
                                         "documents")
    passkey_placement: str = _opt("packed", "packed: passkey documents packed end to end with the corpus (a long "
                                            "one is often cut by a row boundary); row: each whole inside one row")
    eval_data: str | None = _opt(None, "validation tokens (.bin); None = pystdlib's validation split if data is "
                                       "pystdlib")
    save_every: int = _opt(0, "checkpoint every N steps (0 = only at the end)")
    eval_every: int = _opt(0, "validation loss every N steps, logged as val_window_ppl (0 = never)")
    eval_windows: int = _opt(8, "validation windows of seq_len tokens (the first ones of the split)")
    log_every: int = _opt(10, "print a metrics line every N steps (metrics.jsonl gets every step)")
    model_overrides: dict = field(default_factory=dict, metadata={
        "help": "LlamaConfig fields for a preset base: n_layers=2 dim=128"})
    device: str | None = _opt(None, "None = cuda if available, else cpu")

    def __post_init__(self):
        self.betas = tuple(finite_float(b, "TrainConfig.betas") for b in self.betas)
        for name in FLOAT_FIELDS:  # NaN and infinity pass comparisons such as `lr > 0`: refused first
            if getattr(self, name) is not None:
                finite_float(getattr(self, name), f"TrainConfig.{name}")
        self._check_counts()
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
        self._check_schedule_and_data()
        if not self.clip >= 0:
            raise UserInputError(f"TrainConfig.clip must be >= 0 (0 = no clipping), got {self.clip!r}")
        if self.method not in METHODS:
            raise UserInputError(f"TrainConfig.method must be one of {METHODS}, got {self.method!r}")
        if not self.lora_alpha > 0 or not 0 <= self.lora_dropout < 1:
            raise UserInputError(f"TrainConfig: need lora_alpha > 0 and 0 <= lora_dropout < 1, got "
                                 f"{self.lora_alpha!r}, {self.lora_dropout!r}")
        check_attention_settings("TrainConfig", self.attention, self.s2_variant, self.group_size_ratio)
        self._check_groups()
        self._check_remedies()
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

    def _check_counts(self) -> None:
        positive = ("seq_len", "steps", "batch_size", "grad_accum", "lora_r", "eval_windows", "log_every", "n_sink")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserInputError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if self.seq_len < 2:
            raise UserInputError(f"TrainConfig.seq_len must be >= 2 (a token is learned from the tokens before it), "
                                 f"got {self.seq_len}")
        for name in ("warmup_steps", "save_every", "eval_every", "seed", "full_attention_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserInputError(f"TrainConfig.{name} must be a non-negative integer, got {value!r}")

    def _check_schedule_and_data(self) -> None:
        if self.passkey_placement not in PASSKEY_PLACEMENTS:
            raise UserInputError(f"TrainConfig.passkey_placement must be one of {PASSKEY_PLACEMENTS}, got "
                                 f"{self.passkey_placement!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserInputError(f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserInputError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not 0 <= self.passkey_share < 1:
            raise UserInputError(f"TrainConfig.passkey_share must be in [0, 1), got {self.passkey_share!r}")
        if self.passkey_share and self.data != "pystdlib":
            raise UserInputError("TrainConfig.passkey_share mixes code-passkey documents into the pystdlib corpus; "
                                 f"it cannot apply to data = {self.data!r}")

    def _check_groups(self) -> None:
        """The groups of the training pattern must tile seq_len (the official code raises on a remainder too,
        llama_attn_replace.py L237-241)."""
        if self.attention == "full":
            return
        group = group_size(self.seq_len, self.group_size_ratio)
        block = block_of(self.attention, group)
        if self.seq_len % block:
            raise UserInputError(f"seq_len {self.seq_len} is not divisible into S2-Attn groups: group_size_ratio "
                                 f"{self.group_size_ratio} gives groups of {group} tokens (even, at least 2), which "
                                 f"must divide seq_len{' twice' if block != group else ''}")

    def _check_remedies(self) -> None:
        if self.group_schedule not in GROUP_SCHEDULES:
            raise UserInputError(f"TrainConfig.group_schedule must be one of {GROUP_SCHEDULES}, got "
                                 f"{self.group_schedule!r}")
        if not 0 <= self.group_schedule_start < 1:
            raise UserInputError(f"TrainConfig.group_schedule_start must be in [0, 1), got "
                                 f"{self.group_schedule_start!r}")
        if self.attention == "full" and (self.full_attention_every or self.group_schedule != "none"):
            raise UserInputError("TrainConfig: full_attention_every and group_schedule are remedies for a sparse "
                                 "training pattern; with attention = 'full' every step already attends fully")

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ------------------------------------------------------------------------------------------- attention per step
def attention_at_step(cfg: TrainConfig, step: int) -> tuple[str, int]:
    """(pattern, group size in tokens) of optimizer step `step` (0-based); ("full", seq_len) for a full step.

    The training pattern in groups of group_size(seq_len, group_size_ratio), except for the two remedies (issue 16):
    with full_attention_every = k, steps k − 1, 2k − 1, … (every k-th) attend fully; with group_schedule = "grow",
    once the fraction of training done after the step, (step + 1) / steps, passes group_schedule_start, the group
    follows a line from the configured size to seq_len at the last step, each step taking the largest size the
    pattern can tile seq_len with (`patterns.group_sizes`) that is not above the line, and the whole window is full
    attention. A pure function of (cfg, step): a resumed run attends exactly as an uninterrupted one."""
    n = cfg.seq_len
    if cfg.attention == "full" or (cfg.full_attention_every and (step + 1) % cfg.full_attention_every == 0):
        return "full", n
    base = group_size(n, cfg.group_size_ratio)
    if cfg.group_schedule == "none":
        return cfg.attention, base
    done = (step + 1) / cfg.steps
    line = base + max(0.0, done - cfg.group_schedule_start) / (1 - cfg.group_schedule_start) * (n - base)
    if line >= n - 1e-9:  # the last step: the whole window
        return "full", n
    return cfg.attention, max(G for G in group_sizes(cfg.attention, n) if base <= G <= line + 1e-9)


# ------------------------------------------------------------------------------------------------------ the model
def _base_config(cfg: TrainConfig) -> tuple[LlamaConfig, bool]:
    """The base's LlamaConfig, and whether it is a preset (random init) rather than a directory."""
    if cfg.base in PRESETS:
        return LlamaConfig.from_preset(cfg.base, **cfg.model_overrides), True
    if not cfg.base:
        raise UserInputError("no base model: pass a preset name or a Hugging Face directory (--base PATH)")
    if not Path(cfg.base).is_dir():
        raise FileNotFoundError(f"base {cfg.base!r} is neither a preset ({', '.join(PRESETS)}) nor a directory "
                                f"(make a base with `python -m minilongllora pretrain`, then `python -m "
                                f"minilongllora export runs/pretrain-tiny --out {cfg.base}`)")
    if cfg.model_overrides:
        raise UserInputError("model_overrides apply to a preset base only; a directory's config.json fixes the shape")
    return LlamaConfig.from_hf(cfg.base), False


def _interpolated(base: LlamaConfig, scaling: dict | None) -> dict | None:
    """`scaling` (linear position interpolation) in place of the base's own RoPE scaling: a linear one is replaced
    (its factor counts from the same original context, max_seq_len), any other type is refused, not overwritten."""
    if base.rope_scaling is not None and base.rope_scaling["rope_type"] != "linear":
        raise UserInputError(f"the base already has RoPE scaling {base.rope_scaling}; linear position interpolation "
                             f"{scaling} would silently replace it. Extend it with rope_factor = 1 (keep its "
                             f"scaling, within its context of {base.context_length} tokens) or from a base without "
                             "scaling")
    return scaling


def resolve_model_config(cfg: TrainConfig) -> tuple[LlamaConfig, bool]:
    """The LlamaConfig this run trains, and whether the base is a preset (random init) rather than a directory.

    RoPE (the official fine-tune.py L115-131): past the base's context, linear position interpolation by
    ceil(seq_len / max_seq_len) unless `rope_factor` says otherwise (1 = none). A preset trains from scratch, so there
    is nothing to interpolate: its context simply becomes seq_len."""
    base, from_scratch = _base_config(cfg)
    max_seq_len, scaling = base.max_seq_len, base.rope_scaling
    if cfg.rope_factor is not None and cfg.rope_factor > 1:
        scaling = _interpolated(base, linear_scaling(cfg.rope_factor))
    elif cfg.seq_len > base.context_length:
        if from_scratch:
            max_seq_len = cfg.seq_len
        elif cfg.rope_factor is None:
            scaling = _interpolated(base, linear_scaling(interpolation_factor(cfg.seq_len, base.max_seq_len)))
    config = base.replace(max_seq_len=max_seq_len, rope_scaling=scaling, attention=cfg.attention,
                          s2_variant=cfg.s2_variant, group_size_ratio=cfg.group_size_ratio, n_sink=cfg.n_sink)
    if cfg.seq_len > config.context_length:
        raise UserInputError(f"seq_len {cfg.seq_len} exceeds the model's context of {config.context_length} tokens "
                             f"(max_seq_len {config.max_seq_len}, RoPE scaling {config.rope_scaling}); leave "
                             f"rope_factor unset for position interpolation by ceil(seq_len / context), or raise it")
    chunks = head_chunks(cfg.attention)
    if config.n_heads % chunks:
        raise UserInputError(f"attention {cfg.attention!r} splits the heads into {chunks} equal chunks: n_heads must "
                             f"be divisible by {chunks}, got {config.n_heads}")
    return config, from_scratch


def apply_method(model: Llama, cfg: TrainConfig) -> Llama:
    """The run's method on `model`: LoRA / LoRA+ wrap the projections and freeze the rest; full trains everything."""
    if cfg.method == "lora":
        apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    elif cfg.method == "lora_plus":
        apply_lora_plus(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                        train_embed=cfg.train_embed, train_norm=cfg.train_norm)
    else:
        model.requires_grad_(True)
    return model


def meta_model(cfg: TrainConfig) -> Llama:
    """The run's model structure (method applied, trainable flags set) on the meta device: no memory, no weights."""
    config, _ = resolve_model_config(cfg)
    with torch.device("meta"):
        return apply_method(Llama(config), cfg)


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
            k: getattr(config, k) for k in ("rope_scaling", "attention", "s2_variant", "group_size_ratio", "n_sink")})
    apply_method(model, cfg)
    if frozen_bf16:  # frozen weights in bf16, everything that trains in fp32 (see train.py's docstring)
        for p in model.parameters():
            p.data = p.data.to(torch.float32 if p.requires_grad else torch.bfloat16)
    return model.to(device)
