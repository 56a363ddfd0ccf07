"""`LlamaConfig`: the shape of a LLaMA, its RoPE setting, and the attention pattern it trains with.

One dataclass describes every model in this project, from the `tiny` byte-level model that trains on a laptop CPU to
Llama-2-70B. Field names are short; `from_hf_dict` / `to_hf_dict` translate to Hugging Face's `config.json` (both
the transformers-5 form with `rope_parameters` and the older one with top-level `rope_theta` and `rope_scaling`).

The attention fields (`attention`, `s2_variant`, `group_size_ratio`, `eval_attention`) are LongLoRA's: which pattern
the model *trains* with (§3.2, Tables 6 and 8) and which it evaluates with (full attention by default, as in the
paper; Table 6's first row evaluates with the training pattern); `n_sink` belongs to the sink patterns (patterns.py).
`config.json` (`to_hf_dict`) stores none of them: a loaded model has the defaults unless told otherwise
(`from_hf(path, attention="s2_sink", n_sink=4)`; a training run passes its TrainConfig's).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attention import S2_VARIANTS, group_size
from .errors import UserInputError, finite_float
from .patterns import N_SINK, pattern_variants
from .patterns import PATTERNS as ATTENTION_PATTERNS
from .rope import effective_context, normalize_rope_scaling


def check_attention_settings(owner: str, attention: str, s2_variant: str, group_size_ratio: float) -> None:
    """UserInputError naming `owner` (LlamaConfig, TrainConfig) unless the LongLoRA attention fields are valid."""
    if attention not in ATTENTION_PATTERNS:
        raise UserInputError(f"{owner}.attention must be one of {ATTENTION_PATTERNS}, got {attention!r}")
    if s2_variant not in S2_VARIANTS:
        raise UserInputError(f"{owner}.s2_variant must be one of {S2_VARIANTS}, got {s2_variant!r}")
    if s2_variant not in pattern_variants(attention):
        raise UserInputError(f"{owner}.attention {attention!r} is defined for s2_variant "
                             f"{pattern_variants(attention)} only, got {s2_variant!r}")
    if not 0 < group_size_ratio <= 1:
        raise UserInputError(f"{owner}.group_size_ratio must be in (0, 1], got {group_size_ratio!r}")


@dataclass
class LlamaConfig:
    vocab_size: int = 256  # 256 = byte-level tokens (the CPU-small models); 32000 for Llama-2
    dim: int = 256  # width of the residual stream (HF: hidden_size)
    n_layers: int = 4  # transformer blocks (HF: num_hidden_layers)
    n_heads: int = 8  # query heads (HF: num_attention_heads)
    n_kv_heads: int | None = None  # key/value heads for grouped-query attention; None = n_heads (MHA)
    ffn_dim: int = 688  # SwiGLU hidden width (HF: intermediate_size)
    norm_eps: float = 1e-5  # RMSNorm epsilon (HF: rms_norm_eps)
    rope_theta: float = 10000.0  # RoPE base
    max_seq_len: int = 256  # trained context (HF: max_position_embeddings)
    rope_scaling: dict | None = None  # e.g. {"rope_type": "linear", "factor": 4.0}: position interpolation
    tie_embeddings: bool = False  # share the embedding matrix with the LM head
    # LongLoRA: attention used while training (and while evaluating, for Table 6's first row)
    attention: str = "full"  # one of ATTENTION_PATTERNS; "s2" is S2-Attn
    s2_variant: str = "split"  # how the shifted heads are grouped (Table 8): split | roll | roll_up | swap
    group_size_ratio: float = 0.25  # group size as a fraction of the training sequence length (App. B.2: 1/4)
    n_sink: int = N_SINK  # short_sink / s2_sink: every query also reads the first n_sink tokens (StreamingLLM: 4)
    eval_attention: str = "full"  # pattern in eval mode / generation: "full" (the paper) or "train" (= attention)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # unknown HF config keys, kept for round trips

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len", "n_sink"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserInputError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        for name in ("norm_eps", "rope_theta", "group_size_ratio"):
            setattr(self, name, finite_float(getattr(self, name), f"LlamaConfig.{name}"))
        for name in ("norm_eps", "rope_theta"):
            if not getattr(self, name) > 0:
                raise UserInputError(f"LlamaConfig.{name} must be positive, got {getattr(self, name)!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise UserInputError(f"LlamaConfig.tie_embeddings must be true or false, got {self.tie_embeddings!r}")
        if self.dim % self.n_heads:
            raise UserInputError(f"LlamaConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise UserInputError(f"LlamaConfig.n_heads ({self.n_heads}) must be divisible by n_kv_heads "
                                 f"({self.n_kv_heads})")
        if self.head_dim % 2:
            raise UserInputError(f"LlamaConfig.head_dim (dim / n_heads = {self.head_dim}) must be even for RoPE")
        try:
            self.rope_scaling = normalize_rope_scaling(self.rope_scaling)
        except ValueError as e:
            raise UserInputError(f"LlamaConfig.rope_scaling: {e}") from None
        check_attention_settings("LlamaConfig", self.attention, self.s2_variant, self.group_size_ratio)
        if self.eval_attention not in ("full", "train"):
            raise UserInputError(f"LlamaConfig.eval_attention must be 'full' or 'train', got {self.eval_attention!r}")

    # derived sizes ------------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def context_length(self) -> int:
        """The longest context the model is meant for: max_seq_len, times the RoPE scaling factor where it applies."""
        return effective_context(self.max_seq_len, self.rope_scaling)

    def group_size(self, seq_len: int) -> int:
        """S2-Attn group size for a training sequence of `seq_len` tokens (`attention.group_size`). The attention
        raises if it does not divide seq_len."""
        return group_size(seq_len, self.group_size_ratio)

    # presets ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> LlamaConfig:
        """A named preset (see `PRESETS`), with field overrides: `LlamaConfig.from_preset("tiny", n_layers=2)`."""
        if name not in PRESETS:
            raise UserInputError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserInputError(f"{unknown} are not LlamaConfig fields (preset {name!r})")
        preset = PRESETS[name]
        if "n_heads" in overrides and "n_kv_heads" not in overrides and preset.n_kv_heads == preset.n_heads:
            overrides["n_kv_heads"] = overrides["n_heads"]  # a multi-head preset stays multi-head
        return dataclasses.replace(preset, **overrides)

    def replace(self, **changes) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

    # Hugging Face config.json ------------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> LlamaConfig:
        """From a Hugging Face Llama `config.json` dict, transformers-5 form or legacy form. Errors name `source` (the
        file) and the key."""
        if not isinstance(d, dict):
            raise UserInputError(f"{source} must hold a JSON object (a Llama config), got {type(d).__name__}")
        d = dict(d)
        for key, kind in _HF_TYPES.items():
            value = d.get(key)
            if value is None:  # null means unset, as in transformers
                continue
            if kind is float:
                finite_float(value, f"{source}: {key}")
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise UserInputError(f"{source}: {key} must be {_JSON_NAMES[kind]}, got {value!r}")
        if d.get("model_type", "llama") != "llama":
            raise UserInputError(f"{source}: model_type is {d['model_type']!r}; only 'llama' is supported")
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if d.get(key) is None:
                raise UserInputError(f"{source} has no {key!r}: not a Llama config")
        head_dim, heads = d.get("head_dim"), d["num_attention_heads"]
        if head_dim is not None and heads > 0 and head_dim != d["hidden_size"] // heads:
            raise UserInputError(f"{source}: head_dim {head_dim} != hidden_size / num_attention_heads; not supported")
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise UserInputError(f"{source} asks for attention_bias or mlp_bias; Llama without biases only")
        rope = d.get("rope_parameters") or {}
        theta = finite_float(rope.get("rope_theta", d.get("rope_theta", 10000.0)), f"{source}: rope_theta")
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"} or d.get("rope_scaling")
        known = {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                 "vocab_size", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
                 "max_position_embeddings", "tie_word_embeddings", "head_dim", "model_type", "architectures"}
        try:
            return cls(
                vocab_size=d["vocab_size"], dim=d["hidden_size"], n_layers=d["num_hidden_layers"],
                n_heads=d["num_attention_heads"], n_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
                ffn_dim=d["intermediate_size"], norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=theta,
                max_seq_len=d.get("max_position_embeddings", 2048), rope_scaling=scaling,
                tie_embeddings=d.get("tie_word_embeddings") or False,
                extra={k: v for k, v in d.items() if k not in known},
            )
        except UserInputError as e:
            raise UserInputError(f"{source}: {e}") from None

    @classmethod
    def from_hf(cls, path: str | Path) -> LlamaConfig:
        """From a Hugging Face `config.json` file, or a directory holding one."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no Hugging Face config at {path}")
        return cls.from_hf_dict(read_json(path), source=str(path))

    def to_hf_dict(self) -> dict:
        """A transformers-5 `config.json` dict (`rope_parameters` carries rope_theta and the scaling)."""
        rope = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if self.rope_scaling:
            rope.update(self.rope_scaling)
        d = {k: v for k, v in self.extra.items() if k not in ("dtype", "torch_dtype", "transformers_version")}
        d.update(
            architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=self.vocab_size, hidden_size=self.dim,
            num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads,
            intermediate_size=self.ffn_dim, rms_norm_eps=self.norm_eps, max_position_embeddings=self.max_seq_len,
            rope_parameters=rope, tie_word_embeddings=self.tie_embeddings, hidden_act="silu",
            attention_bias=False, mlp_bias=False, head_dim=self.head_dim, dtype="float32",
        )
        return d

    def num_params(self) -> int:
        """Parameter count from the shapes alone (no model needed)."""
        kv = self.n_kv_heads * self.head_dim
        attn = self.dim * (2 * self.dim + 2 * kv)
        block = attn + 3 * self.dim * self.ffn_dim + 2 * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return self.vocab_size * self.dim + self.n_layers * block + self.dim + head


# the config.json keys from_hf_dict reads, and the JSON type each must have
_HF_TYPES = {"vocab_size": int, "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
             "num_key_value_heads": int, "intermediate_size": int, "max_position_embeddings": int, "head_dim": int,
             "rms_norm_eps": float, "rope_theta": float, "tie_word_embeddings": bool, "rope_parameters": dict,
             "rope_scaling": dict, "model_type": str}
_JSON_NAMES = {int: "an integer", bool: "true or false", dict: "an object", str: "a string"}


def read_json(path: str | Path):
    """The JSON value in the file `path`; UserInputError naming the file if it is not JSON (a missing file raises
    FileNotFoundError)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserInputError(f"{path} is not valid JSON ({e})") from None


def _llama_ffn(dim: int, multiple_of: int = 256, multiplier: float = 1.0) -> int:
    """Meta's FFN width rule: 2/3 of 4·dim, times a multiplier, rounded up to `multiple_of` (Llama-2-7B: 11008)."""
    hidden = int(multiplier * int(2 * 4 * dim / 3))
    return multiple_of * math.ceil(hidden / multiple_of)


PRESETS: dict[str, LlamaConfig] = {
    # byte-level CPU models: `tiny` pretrains in minutes on 2 cores, `small` is the CPU benchmark's larger model
    "tiny": LlamaConfig(vocab_size=256, dim=256, n_layers=4, n_heads=8, ffn_dim=688, max_seq_len=256),
    "small": LlamaConfig(vocab_size=256, dim=512, n_layers=8, n_heads=8, ffn_dim=1376, max_seq_len=1024),
    # Llama-2 (Touvron et al. 2023); 70B uses grouped-query attention with 8 kv heads
    "llama2-7b": LlamaConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, ffn_dim=_llama_ffn(4096),
                             max_seq_len=4096, norm_eps=1e-5),
    "llama2-13b": LlamaConfig(vocab_size=32000, dim=5120, n_layers=40, n_heads=40, ffn_dim=_llama_ffn(5120),
                              max_seq_len=4096, norm_eps=1e-5),
    "llama2-70b": LlamaConfig(vocab_size=32000, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                              ffn_dim=_llama_ffn(8192, 4096, 1.3), max_seq_len=4096, norm_eps=1e-5),
}
