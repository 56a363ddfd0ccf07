"""A minimal LLaMA, readable top to bottom: RMSNorm → SwiGLU MLP → attention (RoPE, GQA, KV cache) → block → model.

It gives the same logits as `transformers.LlamaForCausalLM` on the same weights (tests/test_model.py), and its
parameter names are Hugging Face's without the leading `model.` (`layers.0.self_attn.q_proj.weight`), so `hf.py`
loads checkpoints without permuting anything: rotary embeddings use HF's rotate-half convention (rope.py).

LongLoRA enters in one place, `Attention.forward`: while training, the attention pattern of the config (S2-Attn by
default for context extension, §3.2) replaces full attention; in eval mode and in `generate` the model attends fully,
as the paper does at inference (§3.2, "full attention testing").

einops axes: b batch, n sequence, h query heads, k kv heads, d head dim, v vocabulary.
References: Touvron et al. 2023 (LLaMA 2); Chen et al. 2023 (LongLoRA, arXiv 2309.12307); nanoGPT; meta-llama/llama.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import causal_attention
from .config import LlamaConfig
from .errors import UserInputError, check_token_ids
from .patterns import sparse_attention
from .reference import attention_mask, attention_probs
from .rope import apply_rope, rope_cos_sin


class RMSNorm(nn.Module):
    """x / rms(x) · w, computed in float32 and cast back (Zhang & Sennrich 2019; as LLaMA and transformers do)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) · up(x)) (Shazeer 2020)."""

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, ffn_dim, bias=False)
        self.up_proj = nn.Linear(dim, ffn_dim, bias=False)
        self.down_proj = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class KVCache:
    """Keys and values of every layer for generation, preallocated: (layers, b, k, max_len, d). RoPE is applied
    before caching, so cached keys never need rotating again."""

    def __init__(self, config: LlamaConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (config.n_layers, batch, config.n_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0  # tokens already cached

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (b, k, n, d) at the current position; return all keys and values so far, (b, k, pos + n, d)."""
        end = self.pos + k.shape[2]
        if end > self.k.shape[3]:
            raise ValueError(f"KV cache holds {self.k.shape[3]} positions; {end} were asked for")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
    """Causal attention of n new queries at positions start.. against all start + n cached keys (generation)."""
    n, total = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]  # query head j reads kv head j // r, without repeating the cache
    if n == 1:  # one new token reads every cached key
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    allowed = torch.ones(n, total, dtype=torch.bool, device=q.device).tril(diagonal=start)  # query i reads j ≤ start+i
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=gqa)


class Attention(nn.Module):
    """Multi-head attention with grouped-query heads (Ainslie et al. 2023), RoPE, and LongLoRA's training patterns."""

    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        d, hd = config.dim, config.head_dim
        self.q_proj = nn.Linear(d, config.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(config.n_heads * hd, d, bias=False)

    def qkv(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project (b, n, dim) to queries (b, h, n, d) and keys, values (b, k, n, d); rotate q and k by position."""
        cfg = self.config
        q = rearrange(self.q_proj(x), "b n (h d) -> b h n d", h=cfg.n_heads)
        k = rearrange(self.k_proj(x), "b n (k d) -> b k n d", k=cfg.n_kv_heads)
        v = rearrange(self.v_proj(x), "b n (k d) -> b k n d", k=cfg.n_kv_heads)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v  # rotate at the original positions, then group

    def forward(self, x, cos, sin, pattern: str = "full", cache: KVCache | None = None) -> torch.Tensor:
        cfg = self.config
        q, k, v = self.qkv(x, cos, sin)
        if cache is not None:
            start = cache.pos
            k, v = cache.update(self.layer_idx, k, v)
            out = cached_attention(q, k, v, start)
        elif pattern == "full":
            out = causal_attention(q, k, v)
        else:  # LongLoRA training attention: groups of G = ratio · n tokens, half the heads shifted (§3.2)
            out = sparse_attention(q, k, v, pattern, cfg.group_size(x.shape[1]), variant=cfg.s2_variant,
                                   layer_idx=self.layer_idx, n_sink=cfg.n_sink)
        return self.o_proj(rearrange(out, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config.dim, config.ffn_dim)

    def forward(self, x, cos, sin, pattern: str = "full", cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, pattern, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """The decoder: tokens (b, n) → logits (b, n, v)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.gradient_checkpointing = False  # recompute each block in backward: memory ∝ layers, not activations
        self._rope_tables: dict = {}  # cos, sin per (RoPE settings, dtype, device): see `rope`
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)  # transformers' initializer_range

    def attention_pattern(self) -> str:
        """The pattern this forward pass uses: the training one while training, full attention otherwise (§3.2)."""
        if self.training or self.config.eval_attention == "train":
            return self.config.attention
        return "full"

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None, check_context: bool = True) -> torch.Tensor:
        cfg = self.config
        b, n = tokens.shape
        start = cache.pos if cache is not None else 0
        if check_context and cfg.rope_scaling is None and start + n > cfg.max_seq_len:
            raise UserInputError(
                f"{start + n} positions exceed the model's context of {cfg.max_seq_len} and no RoPE scaling is set; "
                f"extend it with position interpolation, e.g. rope_scaling={{'rope_type': 'linear', 'factor': "
                f"{math.ceil((start + n) / cfg.max_seq_len)}}}, or pass check_context=False to extrapolate")
        if tokens.device.type == "cpu":  # on CUDA it would wait for the GPU at every call; the trainer checks its data
            check_token_ids(tokens, cfg.vocab_size, "tokens")
        x = self.embed_tokens(tokens)  # (b, n, dim)
        cos, sin = self.rope(start, n, x)  # (n, d)
        pattern = "full" if cache is not None else self.attention_pattern()
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, pattern, use_reentrant=False)
            else:
                x = layer(x, cos, sin, pattern, cache)
        if cache is not None:
            cache.pos += n
        return self.lm_head(self.norm(x))  # (b, n, v)

    def rope(self, start: int, n: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (n, d) for positions start .. start + n − 1, in x's dtype and on its device. Computed once per
        table and sliced: a position's angles do not depend on the length, except under 'dynamic' scaling, whose
        frequencies depend on start + n, so its tables are keyed by it."""
        cfg = self.config
        end = start + n
        dynamic = (cfg.rope_scaling or {}).get("rope_type") == "dynamic"
        key = (cfg.head_dim, cfg.rope_theta, repr(cfg.rope_scaling), cfg.max_seq_len, end if dynamic else None,
               x.dtype, x.device)
        cos, sin = self._rope_tables.get(key, (None, None))
        if cos is None or cos.shape[0] < end:
            length = end if dynamic else max(end, cfg.context_length)
            positions = torch.arange(length, device=x.device)
            cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_seq_len)
            if len(self._rope_tables) >= 8:  # dynamic scaling makes one per length: keep a few
                self._rope_tables.clear()
            self._rope_tables[key] = cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return cos[start:end], sin[start:end]

    @torch.no_grad()
    def attention_maps(self, tokens: torch.Tensor, pattern: str = "full") -> list[torch.Tensor]:
        """Attention probabilities of every layer, [(b, h, n, n)] × layers, for looking only: explicit softmax under
        the pattern's mask (reference.attention_probs), since SDPA returns no weights. probs @ v equals the SDPA
        output of the same pattern (tests/test_model.py)."""
        cfg = self.config
        n = tokens.shape[1]
        mask = None
        x = self.embed_tokens(tokens)
        cos, sin = self.rope(0, n, x)
        maps = []
        for layer in self.layers:
            q, k, _ = layer.self_attn.qkv(layer.input_layernorm(x), cos, sin)
            if pattern != "full":
                mask = attention_mask(pattern, n, cfg.group_size(n), cfg.n_heads, variant=cfg.s2_variant,
                                      layer_idx=layer.self_attn.layer_idx, n_sink=cfg.n_sink).to(x.device)
            maps.append(attention_probs(q, k, mask))
            x = layer(x, cos, sin, pattern)
        return maps

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, eos_id: int | None = None, generator: torch.Generator | None = None,
                 check_context: bool = True) -> torch.Tensor:
        """Continue `tokens` (b, n) by `max_new_tokens` with a KV cache: greedy when temperature == 0, else sampling
        from softmax(logits / temperature), optionally restricted to the top_k tokens or the top_p nucleus.
        Returns (b, n + new); rows that produced `eos_id` are padded with it afterwards. Full attention throughout."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (batch, seq), got shape {tuple(tokens.shape)}")
        if max_new_tokens < 0:
            raise UserInputError(f"max_new_tokens must be ≥ 0, got {max_new_tokens}")
        was_training = self.training
        self.eval()
        dtype = next(self.parameters()).dtype
        cache = KVCache(self.config, tokens.shape[0], tokens.shape[1] + max_new_tokens, dtype, tokens.device)
        out, finished = tokens, torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        logits = self(tokens, cache=cache, check_context=check_context)[:, -1]
        for i in range(max_new_tokens):
            next_token = sample_next_token(logits.float(), temperature, top_k, top_p, generator)  # (b,)
            if eos_id is not None:
                next_token = torch.where(finished, torch.full_like(next_token, eos_id), next_token)
                finished |= next_token == eos_id
            out = torch.cat([out, next_token[:, None]], dim=1)
            if i + 1 == max_new_tokens or (eos_id is not None and finished.all()):
                break
            logits = self(next_token[:, None], cache=cache, check_context=check_context)[:, -1]
        self.train(was_training)
        return out


def sample_next_token(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(b, v) logits → (b,) token ids: argmax at temperature 0, else a sample (top-k, then nucleus top-p)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position i predicts token i + 1, averaged over (b, n − 1) targets, in float32. The
    last position has no target (ignore_index), so the logits are used whole: no sliced copy of (b, n, v)."""
    targets = F.pad(tokens[:, 1:], (0, 1), value=-100)  # (b, n): −100 = no target
    return F.cross_entropy(rearrange(logits.float(), "b n v -> (b n) v"), rearrange(targets, "b n -> (b n)"),
                           ignore_index=-100)
