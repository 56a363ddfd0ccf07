"""LoRA, and LongLoRA's "LoRA+" (trainable embedding and norms), written out and interoperable with peft.

LoRA (Hu et al. 2021, arXiv 2106.09685, §4.1) freezes a pretrained weight W0 and learns a low-rank update:

    h = W0 x + (α/r) · B A x        A: (r, in), Kaiming-uniform(a=√5) · B: (out, r), zeros, so h = W0 x at init

LongLoRA (Chen et al., ICLR 2024, §3.3, Table 2) finds that LoRA on the attention projections alone does not adapt a
model to a longer context (PG19 perplexity 11.44 at 32k, whatever the rank), while also training the embedding and
every normalization layer closes the gap (8.12; full fine-tuning 8.08). Those layers hold ~2% and ~0.004% of Llama-2-7B
(Fig. 2(c)). The paper calls this recipe "LoRA+": `apply_lora_plus`. The maintainers' reading (issue #72): position
interpolation moves the model further than a low-rank update of the projections can follow.

Name clash: peft's `peft.optimizers.create_loraplus_optimizer` implements a DIFFERENT "LoRA+" (Hayou et al. 2024,
arXiv 2402.12354): a higher learning rate for B than for A. It trains no embedding or norm.

The official code keeps LoRA in `adapter_model.bin` and the embedding/norms in a separate `trainable_params.bin`.
We keep LoRA+ whole, as one peft adapter whose embedding and norms are `modules_to_save` (full copies), as users
asked in issues #79/#161: `adapter.save_peft_adapter` / `adapter.load_peft_adapter` round-trip with `peft.PeftModel`.

RoPE scaling (position interpolation) is not part of the adapter: it lives in the base model's config. Load the base
with the same setting the adapter was trained with, in transformers 5:
    LlamaForCausalLM.from_pretrained(base, rope_parameters={"rope_type": "linear", "factor": 8.0, "rope_theta": 1e4})
or  config.rope_parameters = {**config.rope_parameters, "rope_type": "linear", "factor": 8.0}
Never `config.rope_scaling = {...}`: in transformers 5 that setter replaces the dict and wipes rope_theta.

LoRA weights take the base weight's dtype and device (meta included; peft instead upcasts adapters of a float16/bfloat16
base to float32 by default, `autocast_adapter_dtype=True`). Modules are chosen by type and exact name, never substrings.
References: microsoft/LoRA (loralib) and litgpt's lora.py for the layer; peft 0.21 for the adapter file format.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .errors import UserInputError, finite_float
from .model import MLP, Attention, RMSNorm

# short target name → module inside each block; "q_proj" etc. are accepted too
TARGETS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
           "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


class LoRALinear(nn.Linear):
    """h = W0 x + (α/r) · B A dropout(x), with W0 (and its bias) frozen.

    The base weight stays this module's own `.weight`, so parameter names keep their pretrained form
    (`...q_proj.weight`) and only `lora_A` (r, in) and `lora_B` (out, r) are new."""

    def __init__(
        self,
        # ↓ the pretrained layer
        base: nn.Linear,
        # ↓ the LoRA part
        r: int,
        alpha: float,
        dropout: float = 0.0,
    ):
        if isinstance(base, LoRALinear) or not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps a plain nn.Linear, got {type(base).__name__}")
        finite_float(alpha, "LoRA alpha"), finite_float(dropout, "LoRA dropout")  # numbers, neither NaN nor infinite
        if not isinstance(r, int) or isinstance(r, bool) or r <= 0 or not alpha > 0 or not 0 <= dropout < 1:
            raise UserInputError(f"LoRA needs an integer r > 0, alpha > 0, 0 ≤ dropout < 1; got {r=}, {alpha=}, "
                                 f"{dropout=}")
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")  # no throw-away weight
        self.weight, self.bias = base.requires_grad_(False).weight, base.bias  # W0: the same Parameters, frozen
        self.r, self.alpha, self.dropout_p, self.scaling = r, alpha, dropout, alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as microsoft/LoRA and peft; B = 0 makes ΔW = 0
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) · B A, shape (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.weight, self.bias)
        if self.merged:  # W0 + ΔW already sits in self.weight
            return h
        return h + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W0 + ΔW (for inference; idempotent)."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − ΔW (idempotent)."""
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}, dropout={self.dropout_p}, merged={self.merged}"


# applying LoRA / LoRA+ ------------------------------------------------------------------------------------------------
def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_lora(model: nn.Module, names: list[str], r: int, alpha: float, dropout: float) -> nn.Module:
    """Freeze every parameter, then replace each named nn.Linear by a LoRALinear (whose A and B train)."""
    for name in names:
        base = model.get_submodule(name)
        if isinstance(base, LoRALinear):
            raise ValueError(f"{name} already carries LoRA; apply LoRA to a model only once (or merge_lora first)")
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{name} is a {type(base).__name__}, not an nn.Linear; LoRA applies to linear layers")
    model.requires_grad_(False)
    for name in names:
        _set_module(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout))
    return model


def lora_module_names(model: nn.Module, targets=("q", "k", "v", "o")) -> list[str]:
    """Exact module names for short targets: "q" → layers.{i}.self_attn.q_proj for every block i."""
    keys = [t.removesuffix("_proj") for t in ((targets,) if isinstance(targets, str) else targets)]
    for t in keys:
        if t not in TARGETS:
            raise ValueError(f"unknown LoRA target {t!r}; choose from {', '.join(TARGETS)} (or their *_proj names)")
    if not keys:
        raise ValueError("no LoRA targets given")
    return [f"layers.{i}.{TARGETS[t]}" for i in range(len(model.layers)) for t in dict.fromkeys(keys)]


def apply_lora(model: nn.Module, targets=("q", "k", "v", "o"), r: int = 8, alpha: float = 16,
               dropout: float = 0.0) -> nn.Module:
    """Plain LoRA (the official fine-tune.py: r=8, α=16, q/k/v/o): the targeted projections get A and B, every other
    parameter is frozen. Targets: q, k, v, o (attention) and gate, up, down (MLP). Modifies and returns `model`."""
    return add_lora(model, lora_module_names(model, targets), r, alpha, dropout)


def apply_lora_plus(model: nn.Module, targets=("q", "k", "v", "o"), r: int = 8, alpha: float = 16,
                    dropout: float = 0.0, train_embed: bool = True, train_norm: bool = True) -> nn.Module:
    """LongLoRA's LoRA+ (§3.3): `apply_lora`, plus the token embedding and every RMSNorm trainable; the LM head stays
    frozen. With tied embeddings the head IS the embedding matrix, so it trains with it. `train_embed=False` or
    `train_norm=False` give Table 2's ablation columns (r=8 + Norm: 10.49, r=8 + Embed: 8.29, both: 8.12)."""
    apply_lora(model, targets, r, alpha, dropout)
    for module in model.modules():
        if (train_embed and isinstance(module, nn.Embedding)) or (train_norm and isinstance(module, RMSNorm)):
            module.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain nn.Linear holding W0 + ΔW, so `to_hf` writes a plain HF checkpoint."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            plain.weight, plain.bias = module.weight, module.bias
            _set_module(model, name, plain)
    return model


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) for every parameter that requires grad: exactly what should reach the optimizer."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


# parameter report (Fig. 2(c)) -----------------------------------------------------------------------------------------
KINDS = ("embedding", "norm", "lora", "attn_linear", "mlp_linear", "head", "other")


def _kind(model: nn.Module, module: nn.Module, parent: nn.Module | None, param_name: str) -> str:
    if isinstance(module, LoRALinear) and param_name.startswith("lora_"):
        return "lora"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, RMSNorm):
        return "norm"
    if module is getattr(model, "lm_head", None):
        return "head"
    if isinstance(module, nn.Linear) and isinstance(parent, (Attention, MLP)):
        return "attn_linear" if isinstance(parent, Attention) else "mlp_linear"
    return "other"


def parameter_report(model: nn.Module) -> list[dict]:
    """Rows {kind, trainable, count, share} grouped by kind (lora, embedding, norm, head, attn_linear, mlp_linear,
    other) and trainable flag; `share` is the fraction of ALL parameters, LoRA's included (as in Fig. 2(c)).
    A tied LM head is counted once, as the embedding."""
    parents = {id(child): m for m in model.modules() for child in m.children()}
    counts: dict[tuple[str, bool], int] = {}
    seen: set[int] = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            key = (_kind(model, module, parents.get(id(module)), pname), p.requires_grad)
            counts[key] = counts.get(key, 0) + p.numel()
    total = sum(counts.values())
    return [{"kind": k, "trainable": t, "count": n, "share": n / total}
            for (k, t), n in sorted(counts.items(), key=lambda item: (KINDS.index(item[0][0]), not item[0][1]))]


def format_parameter_report(model: nn.Module) -> str:
    rows = parameter_report(model)
    total, trainable = sum(r["count"] for r in rows), sum(r["count"] for r in rows if r["trainable"])
    lines = [f"{'kind':<13}{'trainable':>10}{'count':>16}{'share':>11}"]
    lines += [f"{r['kind']:<13}{'yes' if r['trainable'] else 'no':>10}{r['count']:>16,}{100 * r['share']:>10.4f}%"
              for r in rows]
    lines.append(f"{'total':<13}{'':>10}{total:>16,}{100.0:>10.4f}%")
    lines.append(f"{'trainable':<13}{'':>10}{trainable:>16,}{100 * trainable / total:>10.4f}%")
    return "\n".join(lines)


def __getattr__(name: str):  # old import path: the peft adapter files moved to adapter.py
    if name in ("save_peft_adapter", "load_peft_adapter"):
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
