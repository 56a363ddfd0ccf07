"""LoRA adapters as peft writes and reads them, so an adapter trained here loads into `peft.PeftModel` and back.

`save_peft_adapter` writes `adapter_config.json` + `adapter_model.safetensors` (LoRA A/B of every LoRALinear, and the
trainable embedding and norms of LoRA+ as `modules_to_save`, full copies); `load_peft_adapter` applies such a
directory, ours or peft's, to our `Llama`. Key names are peft 0.21's, built on the one HF parameter-name mapping
(`hf.hf_key`). Only safetensors are read: `adapter_model.bin` is a pickle, refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .config import read_json
from .errors import UserInputError
from .files import atomic_write
from .hf import read_safetensors, hf_key, our_key
from .lora import LoRALinear, add_lora

PEFT_PREFIX = "base_model.model."  # peft's PeftModelForCausalLM → LoraModel → LlamaForCausalLM
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _peft_names(chosen: set[str], all_names: list[str], matches) -> list[str]:
    """What to write in target_modules / modules_to_save: the last name components (`q_proj`, `norm`) when peft's
    suffix rule `matches` then selects exactly `chosen`, else the full names, which select only themselves."""
    short = sorted({n.rsplit(".", 1)[-1] for n in chosen})
    picked = {n for n in all_names if any(matches(n, s) for s in short)}
    return short if picked == chosen else sorted(chosen)


def save_peft_adapter(model: nn.Module, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` that `peft.PeftModel.from_pretrained(
    LlamaForCausalLM.from_pretrained(base), path)` loads with our logits: A and B of every LoRALinear, and a full copy
    of every other module with trainable weights (embedding, norms) as `modules_to_save`. Key names are peft 0.21's:
    `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, `base_model.model.model.embed_tokens.weight`."""
    path = Path(path)
    loras = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not loras:
        raise ValueError("the model has no LoRA layers: call apply_lora / apply_lora_plus / load_peft_adapter first")
    settings = {(m.r, m.alpha, m.dropout_p) for m in loras.values()}
    if len(settings) > 1:
        raise ValueError(f"LoRA layers differ in (r, alpha, dropout): {sorted(settings)}; an adapter has one setting")
    if any(m.merged for m in loras.values()):
        raise ValueError("some LoRA layers are merged into their base weight; unmerge() them before saving an adapter")
    (r, alpha, dropout), = settings
    tensors, saved, seen = {}, set(), set()
    for name, m in model.named_modules():
        own = dict(m.named_parameters(recurse=False))
        if isinstance(m, LoRALinear):
            tensors |= {f"{PEFT_PREFIX}{hf_key(name)}.{n}.weight": own[n] for n in ("lora_A", "lora_B")}
        elif any(p.requires_grad for p in own.values()):  # modules_to_save: peft stores the whole module
            tensors |= {f"{PEFT_PREFIX}{hf_key(name)}.{n}": p for n, p in own.items()}
            if any(id(p) not in seen for p in own.values()):  # a tied head is listed once, as the embedding
                saved.add(hf_key(name))
        seen |= {id(p) for p in own.values()}
    tensors = {k: v.detach().to("cpu").clone() for k, v in tensors.items()}  # clone: safetensors refuses shared
    all_names = [hf_key(n) for n, _ in model.named_modules() if n]
    target_modules = _peft_names({hf_key(n) for n in loras}, all_names, lambda n, s: n == s or n.endswith("." + s))
    modules_to_save = _peft_names(saved, all_names, lambda n, s: n.endswith(s)) if saved else None
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": target_modules,
        "modules_to_save": modules_to_save, "bias": "none", "fan_in_fan_out": False, "use_dora": False,
        "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}, "init_lora_weights": True,
        "inference_mode": True,
        # tied embeddings: peft then ties the head to the embedding's trainable copy, as ours share one tensor
        "ensure_weight_tying": "model.embed_tokens" in saved and getattr(model.config, "tie_embeddings", False),
    }
    atomic_write(path / ADAPTER_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write(path / ADAPTER_CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return path


# adapter_config.json fields that change the math and that we do not implement: field → its harmless value(s)
_UNSUPPORTED = {"use_dora": (False, None), "use_rslora": (False, None), "fan_in_fan_out": (False, None),
                "bias": ("none", None), "lora_bias": (False, None), "rank_pattern": ({}, None),
                "alpha_pattern": ({}, None), "target_parameters": (None, []), "trainable_token_indices": (None,),
                "layer_replication": (None,), "use_qalora": (False, None), "alora_invocation_tokens": (None,)}


def load_peft_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Apply a peft LoRA adapter directory (ours, or `save_pretrained` of a peft model) to our `Llama`: LoRA with its
    r and lora_alpha on every module the file holds A/B for, the `modules_to_save` copies written into the base modules
    and left trainable, everything else frozen. Only safetensors are read: `adapter_model.bin` is a pickle, refused."""
    path = Path(path)
    r, alpha, dropout = _read_adapter_config(path)
    lora, full = _read_adapter_tensors(path)
    params = dict(model.named_parameters(remove_duplicate=False))  # a tied lm_head.weight is the embedding's
    _check_lora_targets(model, path, lora, r)
    _check_full_copies(model, path, full, params)
    add_lora(model, list(lora), r, alpha, dropout)
    with torch.no_grad():
        for name, ab in lora.items():
            module = model.get_submodule(name)
            module.lora_A.copy_(ab["A"])
            module.lora_B.copy_(ab["B"])
        for name, t in full.items():
            params[name].copy_(t)
            params[name].requires_grad_(True)
    return model


def _read_adapter_config(path: Path) -> tuple[int, float, float]:
    """(r, lora_alpha, lora_dropout) of an adapter directory; UserInputError for what plain LoRA cannot load."""
    if not path.is_dir():
        raise FileNotFoundError(f"no adapter directory at {path}")
    if not (path / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {path}: not a peft adapter directory")
    if not (path / ADAPTER_WEIGHTS).is_file():
        if (path / "adapter_model.bin").is_file():
            raise UserInputError(f"{path} holds only adapter_model.bin, a pickle (unpickling can run code); "
                                 f"minilongllora reads {ADAPTER_WEIGHTS} only: re-save it with peft's "
                                 "save_pretrained(safe_serialization=True) in a trusted environment")
        raise FileNotFoundError(f"no {ADAPTER_WEIGHTS} in {path}")
    config = read_json(path / ADAPTER_CONFIG)
    if not isinstance(config, dict) or "r" not in config or "lora_alpha" not in config:
        raise UserInputError(f"{path / ADAPTER_CONFIG} is not a LoRA adapter config (a JSON object with r and "
                             "lora_alpha)")
    if config.get("peft_type") != "LORA":
        raise UserInputError(f"{path}: peft_type is {config.get('peft_type')!r}; only LORA adapters are supported")
    for key, allowed in _UNSUPPORTED.items():
        if config.get(key) not in allowed:
            raise UserInputError(f"{path}: {key}={config[key]!r} is not supported (minilongllora implements plain "
                                 "LoRA, h = W0 x + (alpha/r) B A x; DoRA, rsLoRA, per-module ranks and biases are "
                                 "not)")
    return config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0)


def _read_adapter_tensors(path: Path) -> tuple[dict, dict]:
    """({module name: {"A": t, "B": t}}, {parameter name: tensor} of modules_to_save), in our names."""
    lora, full = {}, {}
    for key, t in read_safetensors(path / ADAPTER_WEIGHTS).items():
        if not key.startswith(PEFT_PREFIX):
            raise UserInputError(f"{path}: unexpected tensor {key!r} (peft keys start with {PEFT_PREFIX!r})")
        name = our_key(key.removeprefix(PEFT_PREFIX))
        if m := re.fullmatch(r"(.+)\.lora_([AB])\.weight", name):
            lora.setdefault(m[1], {})[m[2]] = t
        elif "lora_" in name:  # DoRA's lora_magnitude_vector, LoRA on embeddings' lora_embedding_A, ...
            raise UserInputError(f"{path}: tensor {key!r} belongs to a LoRA variant minilongllora does not implement")
        else:
            full[name] = t
    return lora, full


def _check_lora_targets(model: nn.Module, path: Path, lora: dict, r: int) -> None:
    for name, ab in lora.items():
        if set(ab) != {"A", "B"}:
            raise UserInputError(f"{path}: {name} has lora_{''.join(ab)} but not both lora_A and lora_B")
        try:
            base = model.get_submodule(name)
        except AttributeError:
            raise UserInputError(f"{path}: the adapter targets {name}, which this model does not have") from None
        if not isinstance(base, nn.Linear):
            raise UserInputError(f"{path}: the adapter targets {name}, a {type(base).__name__}; only nn.Linear is "
                                 "supported")
        want = {"A": (r, base.in_features), "B": (base.out_features, r)}
        for ab_name, t in ab.items():
            if tuple(t.shape) != want[ab_name]:
                raise UserInputError(f"{path}: {name}.lora_{ab_name} has shape {tuple(t.shape)}, the model (r={r}) "
                                     f"needs {want[ab_name]}")


def _check_full_copies(model: nn.Module, path: Path, full: dict, params: dict) -> None:
    tied = getattr(model.config, "tie_embeddings", False)
    if tied and len({"embed_tokens.weight", "lm_head.weight"} & set(full)) == 1:
        raise UserInputError(f"{path} trains one of embed_tokens / lm_head of a tied model without "
                             "ensure_weight_tying, so in peft the other keeps its original weights; this model ties "
                             "them and cannot follow")
    for name, t in full.items():
        if name not in params:
            raise UserInputError(f"{path}: the adapter saves {name}, which this model does not have")
        if t.shape != params[name].shape:
            raise UserInputError(f"{path}: {name} has shape {tuple(t.shape)}, the model needs "
                                 f"{tuple(params[name].shape)}")
        twins = [other for other in full if other != name and params.get(other) is params[name]]
        if twins and not torch.equal(t, full[twins[0]]):
            raise UserInputError(f"{path}: {name} and {twins[0]} differ, but this model ties them into one tensor")
