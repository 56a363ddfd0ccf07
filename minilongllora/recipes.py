"""Named training runs: `get_recipe("extend-tiny-4x", steps=10)` → a TrainConfig.

CPU-small (2 cores, torch 2.13, this project's CPU machine with AVX-512 BF16; benchmarks/results/speed_cpu.json): in
bf16 autocast the `tiny` preset (4 layers, dim 256, 3,295,488 parameters) trains at about 12,000 tokens/s at 256 tokens
(full training, 8 x 256 per step) and about 15,000 tokens/s at 1024 tokens with S2-Attn + LoRA+ (4 x 1024), 2.2x and
2.5x the fp32 trainer before the speed work (`--precision fp32`: about 5,500 and 6,100).

* `pretrain-tiny`: the base model from scratch at its own context of 256 tokens on the shipped pystdlib corpus, to
  convergence (10 tokens per parameter, cosine schedule; data/README.md).
* `extend-tiny-4x`: the README's main job. LongLoRA on that base (`data/tiny-base/`, written by pretrain-tiny and
  `python -m minilongllora export`): 4x its context (1024 tokens) with S2-Attn (split variant, groups of 1/4),
  LoRA+ (r=8, α=16 on q/k/v/o, embedding and norms trainable) and linear position interpolation by 4.
* `cuda-7b-{8k,16k,32k,64k,100k}`: the paper's Llama-2-7B runs (§4.1, App. B; the official README command):
  AdamW β=(0.9, 0.95), lr 2e-5, weight decay 0, 20 warmup steps then constant, batch 1 x 8 accumulation per GPU,
  1000 steps, S2-Attn with groups of 1/4, LoRA+ r=8 α=16, bf16, gradient checkpointing, RoPE factor
  ceil(target / 4096). The base (a local Llama-2-7b-hf directory in safetensors) and the data (a RedPajama / PG19
  token .bin) are the user's: `--base PATH --data PATH`. Launch with `torchrun --nproc_per_node 8 -m minilongllora
  extend --recipe cuda-7b-8k --base ... --data ...` (8 GPUs give the paper's global batch of 64).
"""

from __future__ import annotations

from .errors import UserInputError
from .rope import interpolation_factor
from .trainconfig import TrainConfig

LLAMA2_CONTEXT = 4096

_PAPER = dict(  # §4.1 / App. B / official fine-tune.py + README command
    base="", data="", lr=2e-5, weight_decay=0.0, warmup_steps=20, betas=(0.9, 0.95), clip=1.0, batch_size=1,
    grad_accum=8, steps=1000, method="lora_plus", lora_r=8, lora_alpha=16.0, lora_dropout=0.0, attention="s2",
    s2_variant="split", group_size_ratio=0.25, precision="bf16", gradient_checkpointing=True, save_every=100,
    log_every=1,
)


def _cuda_7b(target: int) -> TrainConfig:
    return TrainConfig(**_PAPER, seq_len=target, out_dir=f"runs/cuda-7b-{target // 1024}k" if target % 1024 == 0
                       else f"runs/cuda-7b-{target}", rope_factor=float(interpolation_factor(target, LLAMA2_CONTEXT)))


RECIPES: dict[str, TrainConfig] = {
    # the base model, trained to convergence (issue 14): 8,400 steps x 16 x 256 tokens = 34.4M tokens, 10.4 per
    # parameter (3,295,488), about 4.6 epochs of the 7.3M-token train split plus 2% code-passkey
    # documents (passkey.py: the model learns to copy a key read up to its whole context back); Llama 2's optimizer
    # (AdamW 0.9/0.95, weight decay 0.1, warmup, cosine decay to 10% of the peak); the peak lr chosen on validation
    # by 600-step runs of this recipe (validation perplexity 4.07 / 3.97 / 4.17 at 5e-4 / 1e-3 / 2e-3); bf16 autocast
    "pretrain-tiny": TrainConfig(
        base="tiny", out_dir="runs/pretrain-tiny", seq_len=256, steps=8400, batch_size=16, grad_accum=1, lr=1e-3,
        warmup_steps=300, lr_schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1, method="full",
        attention="full", precision="bf16", passkey_share=0.02, passkey_placement="row", gradient_checkpointing=False,
        save_every=200, eval_every=400, eval_windows=128, log_every=100,
    ),
    # ~2 min of training on 2 CPU cores: 300 steps x 4 x 1024 tokens = 1.2M tokens, S2-Attn + LoRA+, PI x4. lr 2e-4,
    # chosen on the validation split at 1024 tokens among 1e-4 / 2e-4 / 5e-4 (sliding-window perplexity 9.20 / 4.28 /
    # 8.80) for the converged base of 2026-12-03 (its pretraining peak 1e-3, final 1e-4): at 5e-4 the full-attention
    # validation perplexity at 1024 fell to step 200 and then ROSE (4.2 -> 5.0: the model forgets how to read keys
    # farther than a group back, which full attention at test exposes), at 1e-4 it had not adapted to PI yet.
    "extend-tiny-4x": TrainConfig(
        base="data/tiny-base", out_dir="runs/extend-tiny-4x", seq_len=1024, steps=300, batch_size=4, grad_accum=1,
        lr=2e-4, warmup_steps=20, weight_decay=0.0, method="lora_plus", lora_r=8, lora_alpha=16.0,
        attention="s2", s2_variant="split", group_size_ratio=0.25, rope_factor=4.0, precision="bf16",
        gradient_checkpointing=False, save_every=100, eval_every=100, eval_windows=8, log_every=50,
    ),
    "cuda-7b-8k": _cuda_7b(8192),
    "cuda-7b-16k": _cuda_7b(16384),
    "cuda-7b-32k": _cuda_7b(32768),
    "cuda-7b-64k": _cuda_7b(65536),
    "cuda-7b-100k": _cuda_7b(100000),
}


def get_recipe(name: str, **overrides) -> TrainConfig:
    """The recipe `name` with some fields replaced (validated again): get_recipe("pretrain-tiny", steps=10)."""
    if name not in RECIPES:
        raise UserInputError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name].replace(**overrides)
