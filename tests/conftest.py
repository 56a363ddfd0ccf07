"""Shared fixtures: every test is seeded; tiny random Hugging Face Llamas are built locally (no hub access)."""

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def randomize_(model: torch.nn.Module, std: float = 0.05, norm_spread: float = 0.5) -> torch.nn.Module:
    """Give every parameter random values (norm weights around 1), so equality tests cannot pass by symmetry."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1 + norm_spread * (torch.rand_like(p) - 0.5))
            else:
                p.normal_(0.0, std)
    return model


def hf_llama(tmp_path, *, hidden=64, layers=2, heads=4, kv_heads=4, ffn=128, vocab=128, max_pos=512, rope=None,
             tie=False, attn="sdpa"):
    """A random `transformers` LlamaForCausalLM, saved to tmp_path/hf; returns (model, path)."""
    from transformers import LlamaConfig as HFConfig, LlamaForCausalLM

    rope_parameters = {"rope_theta": 10000.0, "rope_type": "default", **(rope or {})}
    cfg = HFConfig(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
                   num_key_value_heads=kv_heads, vocab_size=vocab, max_position_embeddings=max_pos,
                   rope_parameters=rope_parameters, tie_word_embeddings=tie, rms_norm_eps=1e-5)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation=attn)
    randomize_(model)
    path = tmp_path / "hf"
    model.save_pretrained(path)
    return model.eval(), path


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """`python -m minilongllora ARGV` in this process: (exit code, stdout, stderr)."""
    from minilongllora.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random HF base (1 layer, width 64, 64-token context) saved once per test module."""
    from minilongllora import Llama, LlamaConfig, to_hf

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "base"
    to_hf(Llama(LlamaConfig.from_preset("tiny", n_layers=1, dim=64, n_heads=4, ffn_dim=128, max_seq_len=64)), path)
    return path
