"""The minimal LLaMA against `transformers` on the same weights: logits, generation, checkpoints, configs."""

import json

import pytest
import torch
from conftest import hf_llama, randomize_
from safetensors.torch import save_file

from minilongllora import Llama, LlamaConfig, from_hf, to_hf
from minilongllora.model import KVCache, RMSNorm

ROPES = {
    "default": (512, None),
    "linear4": (128, {"rope_type": "linear", "factor": 4.0}),
    "dynamic": (128, {"rope_type": "dynamic", "factor": 2.0}),
    "yarn": (128, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
    "llama3": (512, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 64}),
}


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("rope", list(ROPES))
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_equal_transformers(tmp_path, kv_heads, rope, attn):
    max_pos, scaling = ROPES[rope]
    hf, path = hf_llama(tmp_path, kv_heads=kv_heads, max_pos=max_pos, rope=scaling, attn=attn)
    ours = from_hf(path).eval()
    tokens = torch.randint(0, 128, (2, 512))
    with torch.no_grad():
        expected = hf(tokens).logits
        got = ours(tokens, check_context=False)
    assert got.shape == (2, 512, 128)
    assert (got - expected).abs().max().item() <= 1e-5


def test_tied_embeddings_equal_transformers(tmp_path):
    hf, path = hf_llama(tmp_path, tie=True)
    ours = from_hf(path).eval()
    assert ours.lm_head.weight is ours.embed_tokens.weight
    tokens = torch.randint(0, 128, (1, 64))
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_greedy_generation_equals_transformers(tmp_path, kv_heads):
    hf, path = hf_llama(tmp_path, kv_heads=kv_heads, vocab=64)
    # a sharper random model, so greedy choices are not near-ties that fp noise could flip
    with torch.no_grad():
        hf.lm_head.weight.mul_(20)
    hf.save_pretrained(path)
    ours = from_hf(path)
    prompt = torch.randint(0, 64, (2, 16))
    expected = hf.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None,
                           pad_token_id=0, attention_mask=torch.ones_like(prompt))
    got = ours.generate(prompt, max_new_tokens=32)
    assert got.shape == (2, 48)
    assert torch.equal(got, expected)


def test_kv_cache_matches_full_forward():
    model = randomize_(Llama(LlamaConfig.from_preset("tiny", n_kv_heads=2, n_layers=2))).eval()
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(model.config, 2, 40, torch.float32, torch.device("cpu"))
        chunks = [model(tokens[:, :17], cache=cache), model(tokens[:, 17:18], cache=cache),
                  model(tokens[:, 18:], cache=cache)]  # a prefill, one step, then a chunk
    assert (torch.cat(chunks, 1) - full).abs().max().item() <= 1e-5


def test_sampling_is_seeded_and_respects_top_k():
    model = randomize_(Llama(LlamaConfig.from_preset("tiny", n_layers=1)))
    prompt = torch.randint(0, 256, (1, 8))
    a = model.generate(prompt, 20, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 20, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with torch.no_grad():  # every sampled token is among the top-5 of its step
        logits = model(a[:, :-1])[0, 7:]
    top5 = logits.topk(5, dim=-1).indices
    assert all(tok in top5[i] for i, tok in enumerate(a[0, 8:].tolist()))
    c = model.generate(prompt, 20, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert c.shape == (1, 28)


@pytest.mark.parametrize("rope", ["default", "linear4", "yarn"])
def test_to_hf_round_trip(tmp_path, rope):
    from transformers import LlamaForCausalLM

    max_pos, scaling = ROPES[rope]
    config = LlamaConfig(vocab_size=100, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
                         max_seq_len=max_pos, rope_scaling=scaling)
    ours = randomize_(Llama(config)).eval()
    to_hf(ours, tmp_path / "out")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert hf.config.rope_parameters.get("rope_type", "default") == (scaling or {}).get("rope_type", "default")
    tokens = torch.randint(0, 100, (2, 256))
    with torch.no_grad():
        assert (ours(tokens, check_context=False) - hf(tokens).logits).abs().max().item() <= 1e-5
    again = from_hf(tmp_path / "out")
    assert again.config.rope_scaling == ours.config.rope_scaling
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_legacy_config_form_loads(tmp_path):
    hf, path = hf_llama(tmp_path, max_pos=128, rope={"rope_type": "linear", "factor": 4.0})
    d = json.loads((path / "config.json").read_text())
    theta = d.pop("rope_parameters")["rope_theta"]
    d["rope_theta"], d["rope_scaling"] = theta, {"type": "linear", "factor": 4.0}
    (path / "config.json").write_text(json.dumps(d))
    ours = from_hf(path).eval()
    assert ours.config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    tokens = torch.randint(0, 128, (1, 300))
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-5


def test_sharded_checkpoint_loads(tmp_path):
    hf, path = hf_llama(tmp_path)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="60KB")
    assert (sharded / "model.safetensors.index.json").exists() and not (sharded / "model.safetensors").exists()
    ours = from_hf(sharded).eval()
    tokens = torch.randint(0, 128, (1, 32))
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-5


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        from_hf(tmp_path / "nowhere")
    hf, path = hf_llama(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="corrupted or truncated"):
        from_hf(path)
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="safetensors only"):
        from_hf(path)
    (path / "pytorch_model.bin").unlink()
    state = {k: v for k, v in hf.state_dict().items() if "layers.1.mlp" not in k}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        from_hf(path)


def test_to_hf_writes_atomically(tmp_path, monkeypatch):
    import minilongllora.hf as hfmod

    model = Llama(LlamaConfig.from_preset("tiny", n_layers=1))
    to_hf(model, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(hfmod, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        to_hf(randomize_(model), tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before  # the old checkpoint survives
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_llama2_7b_on_meta_device_counts_parameters():
    config = LlamaConfig.from_preset("llama2-7b")
    with torch.device("meta"):
        model = Llama(config)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616 == config.num_params()


@pytest.mark.parametrize("name, params", [("llama2-13b", 13_015_864_320), ("llama2-70b", 68_976_648_192)])
def test_bigger_presets_count_parameters(name, params):
    assert LlamaConfig.from_preset(name).num_params() == params


@pytest.mark.parametrize("overrides, field", [
    (dict(dim=100, n_heads=8), "dim"),
    (dict(n_heads=8, n_kv_heads=3), "n_heads"),
    (dict(dim=24, n_heads=8), "head_dim"),
    (dict(n_layers=0), "n_layers"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(ffn_dim=0), "ffn_dim"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(rope_scaling={"rope_type": "ntk-by-parts", "factor": 2.0}), "rope_scaling"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 0.5}), "factor"),
    (dict(attention="sliding"), "attention"),
    (dict(s2_variant="wrap"), "s2_variant"),
])
def test_invalid_configs_raise_clear_errors(overrides, field):
    with pytest.raises(ValueError, match=field):
        LlamaConfig.from_preset("tiny", **overrides)


def test_unknown_preset_and_context_errors():
    with pytest.raises(ValueError, match="known presets"):
        LlamaConfig.from_preset("gpt-5")
    model = Llama(LlamaConfig.from_preset("tiny", n_layers=1))
    with pytest.raises(ValueError, match="exceed the model's context of 256"):
        model(torch.zeros(1, 300, dtype=torch.long))
    model.config.rope_scaling = {"rope_type": "linear", "factor": 2.0}
    assert model(torch.zeros(1, 300, dtype=torch.long)).shape == (1, 300, 256)


def test_rmsnorm_equals_torch():
    x = torch.randn(3, 5, 64)
    ours = RMSNorm(64, eps=1e-6)
    ref = torch.nn.RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    assert (ours(x) - ref(x)).abs().max().item() <= 1e-6


def test_gradient_checkpointing_gives_same_gradients():
    model = randomize_(Llama(LlamaConfig.from_preset("tiny", n_layers=2)))
    tokens = torch.randint(0, 256, (2, 64))
    from minilongllora.model import lm_loss

    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        lm_loss(model(tokens), tokens).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all((a - b).abs().max().item() <= 1e-6 for a, b in zip(*grads))


def test_from_hf_config_fields(tmp_path):
    _, path = hf_llama(tmp_path, kv_heads=2, max_pos=128, rope={"rope_type": "linear", "factor": 4.0})
    config = LlamaConfig.from_hf(path)
    assert (config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.ffn_dim) == (64, 2, 4, 2, 128)
    assert config.context_length == 512 and config.rope_scaling["factor"] == 4.0


def _grads_and_logits(model, tokens):
    model.zero_grad()
    logits = model(tokens)
    from minilongllora.model import lm_loss

    lm_loss(logits, tokens).backward()
    return logits.detach()


def test_training_pattern_in_train_mode_full_attention_in_eval():
    """§3.2: S2-Attn while training, full attention at inference (and Table 6's first row on request)."""
    config = LlamaConfig.from_preset("tiny", n_layers=2, attention="s2")
    model = randomize_(Llama(config))
    full = randomize_(Llama(config.replace(attention="full")))
    full.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 256, (2, 128))
    with torch.no_grad():
        assert model.train().attention_pattern() == "s2"
        assert (model(tokens) - full.train()(tokens)).abs().max() > 1e-3  # training really uses groups
        assert torch.equal(model.eval()(tokens), full.eval()(tokens))  # eval: full attention
        model.config.eval_attention = "train"
        assert torch.equal(model.eval()(tokens), model.train()(tokens))


@pytest.mark.parametrize("pattern, variant", [("s2", "split"), ("s2", "swap"), ("short", "split"),
                                              ("s2_layers", "split"), ("stride_sparse", "split"),
                                              ("s2_sink", "split")])
def test_model_training_patterns_are_causal(pattern, variant):
    """Changing tokens from position t on changes no logit before t, through every layer, while training."""
    model = randomize_(Llama(LlamaConfig.from_preset("tiny", n_layers=2, attention=pattern, s2_variant=variant)))
    tokens = torch.randint(0, 256, (1, 128))
    changed = tokens.clone()
    changed[:, 70:] = torch.randint(0, 256, (1, 58))
    with torch.no_grad():
        a, b = model.train()(tokens), model(changed)
    assert torch.equal(a[:, :70], b[:, :70])
    assert not torch.equal(a[:, 70:], b[:, 70:])


def test_roll_variant_reads_the_future_in_training():
    """Algorithm 1's wrap-around: with variant 'roll', the first G/2 positions see the last tokens."""
    model = randomize_(Llama(LlamaConfig.from_preset("tiny", n_layers=1, attention="s2", s2_variant="roll")))
    tokens = torch.randint(0, 256, (1, 128))  # G = 32, so positions 0..15 of the shifted heads read 112..127
    changed = tokens.clone()
    changed[:, 120:] = (changed[:, 120:] + 1) % 256
    with torch.no_grad():
        a, b = model.train()(tokens), model(changed)
    leaked = (a[0] - b[0]).abs().amax(-1) > 0
    assert leaked[:16].all() and not leaked[16:120].any()


def test_indivisible_group_size_is_a_clear_error():
    model = Llama(LlamaConfig.from_preset("tiny", n_layers=1, attention="s2")).train()
    with pytest.raises(ValueError, match="not divisible by group_size"):
        model(torch.zeros(1, 100, dtype=torch.long))


@pytest.mark.parametrize("pattern", ["full", "s2", "stride_sparse", "s2_sink"])
def test_attention_maps_reproduce_the_sdpa_outputs(pattern):
    """The inspection path (explicit softmax) gives the probabilities SDPA used: probs @ v == the layer's attention."""
    from einops import einsum, repeat

    from minilongllora.attention import causal_attention, sparse_attention

    model = randomize_(Llama(LlamaConfig.from_preset("tiny", n_layers=2, n_kv_heads=2, attention=pattern))).eval()
    tokens = torch.randint(0, 256, (2, 64))
    maps = model.attention_maps(tokens, pattern=pattern)
    assert len(maps) == 2 and maps[0].shape == (2, 8, 64, 64)
    assert torch.allclose(maps[1].sum(-1), torch.ones(2, 8, 64), atol=1e-6)
    with torch.no_grad():  # recompute layer 1's input, then its attention both ways
        x = model.embed_tokens(tokens)
        cos, sin = model.rope(0, 64, x)
        x = model.layers[0](x, cos, sin, pattern)
        q, k, v = model.layers[1].self_attn.qkv(model.layers[1].input_layernorm(x), cos, sin)
        sdpa = causal_attention(q, k, v) if pattern == "full" else sparse_attention(q, k, v, pattern, 16, layer_idx=1)
        explicit = einsum(maps[1], repeat(v, "b k n d -> b (k r) n d", r=4), "b h i j, b h j d -> b h i d")
    assert (sdpa - explicit).abs().max().item() <= 1e-5
