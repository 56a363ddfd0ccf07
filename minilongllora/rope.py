"""Rotary position embeddings (RoPE) and the scalings that stretch them to longer contexts.

RoPE (Su et al. 2021, "RoFormer", arXiv 2104.09864) encodes the position m of a query or key by rotating it. The head
dimension d is split into d/2 pairs, each with its own frequency θ_i = base^(-2i/d) (base = `rope_theta`, 10000 for
LLaMA 2); the pair is rotated by the angle m·θ_i. A dot product between a query rotated by m·θ and a key rotated by
n·θ sees only the difference (m − n)·θ, so attention scores depend on relative position only.

Which dimensions form a pair is a convention. We use Hugging Face's "rotate half" layout: dimension i is paired with
dimension i + d/2 (the original LLaMA code pairs 2i with 2i+1; HF permutes q_proj / k_proj weights once, at
conversion, so that this layout holds). With emb = cat(m·θ, m·θ) of length d,

    rope(x) = x · cos(emb) + rotate_half(x) · sin(emb),   rotate_half([x1, x2]) = [−x2, x1],

which is the 2×2 rotation [[cos, −sin], [sin, cos]] applied to every pair (x1_i, x2_i). Keeping HF's layout means HF
checkpoints load without touching a weight.

Scalings (`rope_scaling`, keys named as in HF's `rope_parameters`), all expressed as changes to the θ_i:

  linear   Position Interpolation (Chen et al. 2023, arXiv 2306.15595): positions are squeezed, m -> m / factor, so a
           context `factor` times longer maps onto the angles seen in pre-training. This is LongLoRA's choice
           (Chen et al. 2023, arXiv 2309.12307, §4: "we use position interpolation"); equivalently θ_i -> θ_i / factor.
  dynamic  NTK-aware scaling (bloc97, reddit r/LocalLLaMA 2023), made "dynamic" (emozilla): instead of squeezing
           positions, enlarge the base so low frequencies stretch while high ones barely move; the new base grows
           with the current sequence length and is used only once that length exceeds the trained one.
  yarn     YaRN (Peng et al. 2023, arXiv 2309.00071): "NTK-by-parts" — pairs that turn many times over the original
           context keep their frequency (extrapolate), pairs that turn less than once are interpolated (θ / factor),
           and a linear ramp blends the ones between; cos and sin are also multiplied by 0.1·ln(factor) + 1.
  llama3   Meta Llama 3.1 (Dubey et al. 2024, "The Llama 3 Herd of Models"): the same by-parts idea with the
           boundaries set by wavelength: wavelengths shorter than original/high_freq_factor keep θ, longer than
           original/low_freq_factor use θ / factor, and in between θ is interpolated smoothly.

Everything is computed in float32 with the same operations in the same order as `transformers`, so cos and sin agree
with `LlamaRotaryEmbedding` to the last bit (tests/test_rope.py). This matters more than it looks: at position 4000
the fastest pair has turned ~4000 rad, so one float32 ulp of difference in a frequency near 1 already moves cos by
~5e-4.

einops axes: b batch, h heads, n sequence, d head dim, f frequencies (d/2).
"""

from __future__ import annotations

import math
import numbers

import torch
from einops import rearrange, repeat

from .errors import UserInputError

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")

# The keys each scaling type reads (besides "rope_type"); those in _REQUIRED must be present.
_KEYS = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "mscale",
             "mscale_all_dim", "truncate"),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
}
_REQUIRED = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
}
_ALL_KEYS = {key for keys in _KEYS.values() for key in keys}


# ---------------------------------------------------------------------------------------------------------------------
# the rope_scaling dict
# ---------------------------------------------------------------------------------------------------------------------


def normalize_rope_scaling(scaling: dict | None) -> dict | None:
    """Canonical form of a RoPE-scaling dict, keys named as Hugging Face names them: 'rope_type' (accepts the legacy
    'type' key too), 'factor', and per type 'original_max_position_embeddings', 'low_freq_factor', 'high_freq_factor',
    'beta_fast', 'beta_slow', 'attention_factor', 'mscale', 'mscale_all_dim', 'truncate'. Drops 'rope_theta' if
    present. None or rope_type 'default' -> None. Raises ValueError naming the field for: an unknown rope_type (list the
    known ones), a missing factor where the type needs one, factor < 1, non-numeric values.

    Keys of another type (say 'low_freq_factor' in a 'linear' dict) are dropped, as transformers ignores them too;
    keys no type knows raise, so a typo ('factr') cannot silently turn the scaling off. A 'partial_rotary_factor' of
    1.0 is dropped; any other value raises (partial rotary embeddings are not LLaMA's)."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a dict or None, got {type(scaling).__name__}")
    scaling = dict(scaling)
    scaling.pop("rope_theta", None)  # HF's rope_parameters carries the base too; ours lives in LlamaConfig.rope_theta
    legacy_type = scaling.pop("type", None)
    rope_type = scaling.pop("rope_type", legacy_type)
    if rope_type is None:
        rope_type = "default"
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_type must be one of {ROPE_TYPES}, got {rope_type!r}")
    if scaling.pop("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor other than 1.0 is not supported (LLaMA rotates the whole head)")
    unknown = sorted(set(scaling) - _ALL_KEYS)
    if unknown:
        raise ValueError(f"unknown rope_scaling key(s) {unknown}; known: {['rope_type', *sorted(_ALL_KEYS)]}")
    if rope_type == "default":
        return None

    out = {"rope_type": rope_type}
    for key in _REQUIRED[rope_type]:
        if scaling.get(key) is None:
            raise ValueError(f"rope_type {rope_type!r} needs a numeric '{key}', got none")
    for key in _KEYS[rope_type]:
        value = scaling.get(key)
        if value is None:
            continue
        if key == "truncate":
            if not isinstance(value, bool):
                raise ValueError(f"truncate must be a bool, got {value!r}")
            out[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        if key == "original_max_position_embeddings":
            if value != int(value) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
            out[key] = int(value)
        else:
            out[key] = float(value)
    if out["factor"] < 1:
        raise ValueError(f"factor must be >= 1 (it stretches the context), got {out['factor']!r}")
    if rope_type == "llama3" and not out["high_freq_factor"] > out["low_freq_factor"]:
        raise ValueError(f"high_freq_factor ({out['high_freq_factor']}) must exceed low_freq_factor "
                         f"({out['low_freq_factor']})")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# inverse frequencies θ_i, one small function per scaling
# ---------------------------------------------------------------------------------------------------------------------


def _default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """θ_i = theta^(-2i/d) for i = 0 .. d/2 − 1: (f,) float32. The exponents come from an integer arange, as in HF."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim  # (f,) 0, 2/d, 4/d, ...
    return 1.0 / (theta ** exponents)


def _linear_inv_freq(head_dim: int, theta: float, factor: float) -> torch.Tensor:
    """Position Interpolation: m·θ/factor = (m/factor)·θ, so dividing θ squeezes every position by `factor`."""
    return _default_inv_freq(head_dim, theta) / factor


def _dynamic_inv_freq(head_dim: int, theta: float, factor: float, max_seq_len: int, seq_len: int) -> torch.Tensor:
    """Dynamic NTK: base' = base · (factor·L/L_train − (factor − 1))^(d/(d−2)) for a sequence of L > L_train tokens.

    The exponent d/(d−2) makes the lowest frequency θ_{d/2−1} shrink by about factor·L/L_train − factor + 1 (like
    interpolation) while θ_0 = 1 stays put (like extrapolation). Transformers computes base' from a position tensor,
    i.e. in float32, so we do the same to get the same bits."""
    if seq_len <= max_seq_len:  # within the trained context RoPE is left alone
        return _default_inv_freq(head_dim, theta)
    length = torch.tensor(seq_len, dtype=torch.int64)
    base = theta * ((factor * length / max_seq_len) - (factor - 1)) ** (head_dim / (head_dim - 2))  # () float32
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (base ** exponents)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's temperature: 0.1·mscale·ln(factor) + 1 (1 when nothing is stretched)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_inv_freq(head_dim: int, theta: float, scaling: dict, max_seq_len: int) -> tuple[torch.Tensor, float]:
    """YaRN, "NTK-by-parts" plus a temperature. Returns (θ (f,), attention factor for cos and sin).

    Pair i turns r_i = L_orig·θ_i / 2π times over the original context L_orig. Pairs with r > beta_fast keep θ,
    pairs with r < beta_slow get θ/factor, and in between a linear ramp over the pair index blends the two."""
    factor = scaling["factor"]
    original = scaling.get("original_max_position_embeddings", max_seq_len)  # HF: defaults to max_position_embeddings
    beta_fast = scaling.get("beta_fast") or 32.0  # `or`, as HF: a 0 means "use the default"
    beta_slow = scaling.get("beta_slow") or 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:  # DeepSeek's variant: a ratio of two temperatures
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)

    def pair_index(rotations: float) -> float:
        """The (fractional) pair index i at which θ_i turns `rotations` times over the original context."""
        return (head_dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = pair_index(beta_fast), pair_index(beta_slow)  # fast-turning pairs have small indices: low < high
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # keep the ramp finite

    powers = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)  # (f,) 1/θ_i
    extrapolated = 1.0 / powers  # θ_i, as trained
    interpolated = 1.0 / (factor * powers)  # θ_i / factor, Position Interpolation
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)  # (f,) 0 -> 1
    keep = 1 - ramp  # 1 for the fast pairs (extrapolate), 0 for the slow ones (interpolate)
    inv_freq = interpolated * (1 - keep) + extrapolated * keep
    return inv_freq, float(attention_factor)


def _llama3_inv_freq(head_dim: int, theta: float, scaling: dict, max_seq_len: int) -> torch.Tensor:
    """Llama 3.1: by wavelength λ_i = 2π/θ_i against the original context L_orig (8192 for Llama 3.1).

    λ < L_orig/high_freq_factor: θ kept; λ > L_orig/low_freq_factor: θ/factor; in between a smooth blend with
    s = (L_orig/λ − low) / (high − low): θ' = (1 − s)·θ/factor + s·θ."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling.get("original_max_position_embeddings", max_seq_len)  # HF: defaults to max_position_embeddings
    inv_freq = _default_inv_freq(head_dim, theta)  # (f,)
    wavelength = 2 * math.pi / inv_freq  # (f,)
    long_wavelength, short_wavelength = original / low, original / high
    scaled = torch.where(wavelength > long_wavelength, inv_freq / factor, inv_freq)
    smooth = (original / wavelength - low) / (high - low)  # (f,) 0 at the long end, 1 at the short end
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    in_between = (wavelength >= short_wavelength) & (wavelength <= long_wavelength)
    return torch.where(in_between, blended, scaled)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None, max_seq_len: int,
                  seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (head_dim // 2,) in float32 and the attention scaling applied to cos and sin (YaRN's; 1.0
    for the others). max_seq_len is the config's max_position_embeddings; seq_len (the longest position + 1 being
    computed) matters only for 'dynamic' NTK, which rescales the base only when seq_len > max_seq_len (as
    transformers does)."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even integer, got {head_dim!r}")
    theta = float(theta)
    scaling = normalize_rope_scaling(scaling)
    rope_type = scaling["rope_type"] if scaling else "default"
    if rope_type == "default":
        return _default_inv_freq(head_dim, theta), 1.0
    if rope_type == "linear":
        return _linear_inv_freq(head_dim, theta, scaling["factor"]), 1.0
    if rope_type == "dynamic":
        seq_len = max_seq_len if seq_len is None else int(seq_len)
        return _dynamic_inv_freq(head_dim, theta, scaling["factor"], max_seq_len, seq_len), 1.0
    if rope_type == "yarn":
        return _yarn_inv_freq(head_dim, theta, scaling, max_seq_len)
    return _llama3_inv_freq(head_dim, theta, scaling, max_seq_len), 1.0


# ---------------------------------------------------------------------------------------------------------------------
# cos / sin tables and the rotation
# ---------------------------------------------------------------------------------------------------------------------


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, scaling: dict | None, max_seq_len: int,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for integer positions shaped (n,) or (b, n) -> (n, head_dim) or (b, n, head_dim), computed in
    float32 then cast to dtype. For 'dynamic', seq_len = positions.max() + 1."""
    seq_len = int(positions.max()) + 1 if positions.numel() else 0
    inv_freq, attention_factor = rope_inv_freq(head_dim, theta, scaling, max_seq_len, seq_len)
    inv_freq = inv_freq.to(positions.device)
    angles = rearrange(positions, "... n -> ... n 1").float() * inv_freq  # (..., n, f): m·θ_i
    emb = repeat(angles, "... n f -> ... n (two f)", two=2)  # (..., n, d) = cat(m·θ, m·θ): pair i is (i, i + d/2)
    cos, sin = emb.cos() * attention_factor, emb.sin() * attention_factor
    return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [−x2, x1] over the last axis: the sin part of rotating every pair (x1_i, x2_i) by 90°."""
    x1, x2 = x.chunk(2, dim=-1)  # (..., d/2) each
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (b, h, n, d); cos/sin (n, d) or (b, n, d) -> rotated x, same shape and dtype.

    cos and sin are cast to x's dtype first, as transformers' rotary embedding returns them, so a bfloat16 model
    rounds exactly where HF's does."""
    if cos.ndim == 3:  # per-sequence positions: broadcast over heads
        cos, sin = rearrange(cos, "b n d -> b 1 n d"), rearrange(sin, "b n d -> b 1 n d")
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


# ---------------------------------------------------------------------------------------------------------------------
# context lengths
# ---------------------------------------------------------------------------------------------------------------------


def interpolation_factor(target_context: int, original_context: int) -> int:
    """The paper's position-interpolation factor, ceil(target / original) (LongLoRA fine-tune.py); ValueError on
    non-positive input. E.g. Llama-2 (4096) to 100k tokens: 25."""
    for name, value in (("target_context", target_context), ("original_context", original_context)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return -(-int(target_context) // int(original_context))  # ceil in integer arithmetic, exact for any size


def effective_context(max_seq_len: int, scaling: dict | None) -> int:
    """The longest context the RoPE setting is meant for: max_seq_len with no scaling; max_seq_len * factor for
    'linear' and 'dynamic' (HF treats max_position_embeddings as the original length there) and for 'yarn' without
    'original_max_position_embeddings'; max_seq_len for 'llama3' and for 'yarn' with an explicit original length."""
    scaling = normalize_rope_scaling(scaling)
    if scaling is None or scaling["rope_type"] == "llama3":
        return max_seq_len
    if scaling["rope_type"] == "yarn" and "original_max_position_embeddings" in scaling:
        return max_seq_len
    return int(max_seq_len * scaling["factor"])


def linear_scaling(factor: float) -> dict | None:
    """Position interpolation by `factor` as a rope_scaling dict, {"rope_type": "linear", "factor": float}; None for
    factor 1 (nothing to interpolate). UserInputError below 1 (a factor < 1 would squeeze the trained context)."""
    if not factor >= 1:
        raise UserInputError(f"the position-interpolation factor must be >= 1 (1 = no interpolation), got {factor!r}")
    return {"rope_type": "linear", "factor": float(factor)} if factor > 1 else None
