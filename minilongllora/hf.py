"""Hugging Face checkpoints in and out: `from_hf(path)` and `to_hf(model, path)`.

Our parameter names are Hugging Face's minus the leading `model.` (see model.py), and RoPE uses HF's rotate-half
convention, so loading is a rename, never a permutation. Weights are read and written only as safetensors: a
`pytorch_model.bin` is a pickle, and unpickling an untrusted file can run arbitrary code, so we refuse it.
Files are written by `files.atomic_write`, so a crash never leaves a half-written checkpoint behind a valid name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import LlamaConfig, read_json
from .errors import UserInputError
from .files import atomic_write
from .model import Llama

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def hf_key(name: str) -> str:
    """Our parameter or module name → Hugging Face's (`layers.0.mlp.up_proj.weight` →
    `model.layers.0.mlp.up_proj.weight`; `lm_head` and `lm_head.weight` unchanged)."""
    return name if name.split(".")[0] == "lm_head" else f"model.{name}"


def our_key(key: str) -> str:
    """Hugging Face's parameter name → ours."""
    return key.removeprefix("model.")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserInputError(f"cannot read {path}: corrupted or truncated safetensors file ({e})") from None


def load_hf_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF checkpoint directory (single file or sharded index), keyed by HF names."""
    path = Path(path)
    if (path / WEIGHTS_NAME).is_file():
        return read_safetensors(path / WEIGHTS_NAME)
    if (path / INDEX_NAME).is_file():
        index = read_json(path / INDEX_NAME)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise UserInputError(f"{path / INDEX_NAME} has no \"weight_map\" object of tensor name -> shard file")
        shards = sorted(set(weight_map.values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (path / shard).is_file():
                raise FileNotFoundError(f"{path / INDEX_NAME} names shard {shard}, which is missing")
            state.update(read_safetensors(path / shard))
        return state
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise UserInputError(f"{path} holds only pickled weights (.bin/.pt); minilongllora loads safetensors only, "
                             "because unpickling can run code. Convert them once in a trusted environment "
                             "(transformers: model.save_pretrained(dir, safe_serialization=True))")
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path}")


def from_hf(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
            **config_overrides) -> Llama:
    """Load a Hugging Face Llama directory (config.json + model.safetensors or a sharded index) as our `Llama`.

    The model is built on the meta device and the checkpoint's tensors are assigned to it, so a 7B model needs its
    weights' memory once, not twice. `config_overrides` change LlamaConfig fields (e.g. attention="s2")."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    config = LlamaConfig.from_hf(path)
    if config_overrides:
        config = config.replace(**config_overrides)
    state = {our_key(k): v for k, v in load_hf_state_dict(path).items()}
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = Llama(config)
    expected = {name for name, _ in model.named_parameters()}
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise UserInputError(f"checkpoint {path} does not match its config.json: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
    for name, p in model.named_parameters():
        if state[name].shape != p.shape:
            raise UserInputError(f"checkpoint {path}: {name} has shape {tuple(state[name].shape)}, "
                                 f"config.json implies {tuple(p.shape)}")
    state = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model


def to_hf(model: Llama, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `model` as a Hugging Face directory that `transformers.LlamaForCausalLM.from_pretrained` loads, with its
    RoPE scaling in config.json (`rope_parameters`). LoRA must be merged first (`lora.merge_lora`)."""
    path = Path(path)
    names = [name for name, _ in model.named_parameters()]
    if any("lora_" in name for name in names):
        raise ValueError("the model still has LoRA adapters: call minilongllora.lora.merge_lora(model) first, "
                         "or save the adapter with save_peft_adapter")
    state = {}
    for name, p in model.state_dict().items():
        if model.config.tie_embeddings and name == "lm_head.weight":
            continue
        state[hf_key(name)] = p.detach().to(dtype=dtype or p.dtype, device="cpu").contiguous()
    config = model.config.to_hf_dict()
    config["dtype"] = str(dtype or next(model.parameters()).dtype).removeprefix("torch.")
    atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    atomic_write(path / "config.json", lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return path
