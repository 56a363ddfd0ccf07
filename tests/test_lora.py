"""LoRA / LoRA+ (lora.py) against the independent references: peft 0.21 and transformers 5, in float32."""

import json

import pytest
import torch
from conftest import hf_llama

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from minilongllora import Llama, LlamaConfig, from_hf, to_hf  # noqa: E402
from minilongllora.lora import (  # noqa: E402
    LoRALinear,
    apply_lora,
    apply_lora_plus,
    format_parameter_report,
    load_peft_adapter,
    merge_lora,
    parameter_report,
    save_peft_adapter,
    trainable_parameters,
)
from minilongllora.model import lm_loss  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj"]
NORMS = {"input_layernorm", "post_attention_layernorm"}


def tokens(vocab=128, b=2, n=24, seed=1):
    return torch.randint(0, vocab, (b, n), generator=torch.Generator().manual_seed(seed))


def peft_lora_plus(path):
    """LongLoRA's LoRA+ in peft terms (issue #79): LoRA on q/k/v/o, embedding and every norm as modules_to_save."""
    config = LoraConfig(r=8, lora_alpha=16, target_modules=PROJ, modules_to_save=["embed_tokens", "norm"],
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(LlamaForCausalLM.from_pretrained(path), config)


def peft_name(ours: str) -> str:
    """Our trainable parameter name → the peft model's (adapter "default")."""
    module, _, leaf = ours.rpartition(".")
    if leaf in ("lora_A", "lora_B"):
        return f"base_model.model.model.{module}.{leaf}.default.weight"
    return f"base_model.model.model.{module}.modules_to_save.default.{leaf}"


def train_steps(logits_fn, params, steps=3, lr=3e-2, vocab=128):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for step in range(steps):
        x = tokens(vocab, seed=10 + step)
        lm_loss(logits_fn(x), x).backward()
        opt.step()
        opt.zero_grad()


# the layer ------------------------------------------------------------------------------------------------------------
def test_lora_linear_init_merge_unmerge():
    base = torch.nn.Linear(16, 12, bias=True)
    x = torch.randn(3, 5, 16)
    w0, ref = base.weight.detach().clone(), base(x).detach()
    layer = LoRALinear(base, r=4, alpha=8)
    assert layer.scaling == 2.0 and layer.weight is base.weight
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (12, 4) and not layer.lora_B.any()
    bound = 1 / 16**0.5  # kaiming_uniform_(a=√5) on (r, in) is U(-1/√in, 1/√in)
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > bound / 3
    torch.testing.assert_close(layer(x), ref, atol=0, rtol=0)  # B = 0: the base layer exactly
    with torch.no_grad():
        layer.lora_B.normal_()
    unmerged = layer(x)
    assert not torch.allclose(unmerged, ref)
    torch.testing.assert_close(layer.delta_weight(), 2.0 * layer.lora_B @ layer.lora_A)
    layer.merge()
    layer.merge()  # idempotent
    assert layer.merged
    torch.testing.assert_close(layer.weight, w0 + layer.delta_weight(), **TOL)
    torch.testing.assert_close(layer(x), unmerged, **TOL)
    layer.unmerge()
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), unmerged, **TOL)


def test_lora_linear_dropout_only_on_lora_path():
    base = torch.nn.Linear(8, 8, bias=False)
    layer = LoRALinear(base, r=2, alpha=2, dropout=0.5).train()
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), base(x))  # B = 0, so dropout cannot show yet


# peft equivalence: forward and gradients ------------------------------------------------------------------------------
def test_logits_and_gradients_match_peft(tmp_path):
    _, path = hf_llama(tmp_path, kv_heads=2)
    pm = peft_lora_plus(path)
    ours = apply_lora_plus(from_hf(path), r=8, alpha=16)
    peft_params = dict(pm.named_parameters())
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, LoRALinear):
                module.lora_A.copy_(peft_params[peft_name(f"{name}.lora_A")])
                b = peft_params[peft_name(f"{name}.lora_B")]
                b.normal_(0, 0.05)
                module.lora_B.copy_(b)
    x = tokens()
    ours_logits, peft_logits = ours(x), pm(input_ids=x).logits
    torch.testing.assert_close(ours_logits, peft_logits, **TOL)
    lm_loss(ours_logits, x).backward()
    lm_loss(peft_logits, x).backward()
    names = [n for n, _ in trainable_parameters(ours)]
    assert len(names) == 2 * 4 * 2 + 1 + 2 * 2 + 1
    assert {peft_name(n) for n in names} == {n for n, p in pm.named_parameters() if p.requires_grad}
    for name, p in trainable_parameters(ours):
        torch.testing.assert_close(p.grad, peft_params[peft_name(name)].grad, **TOL, msg=name)


# which parameters train -----------------------------------------------------------------------------------------------
def expected_trainable(n_layers, lora=("q", "k", "v", "o"), embed=True, norm=True):
    names = {f"layers.{i}.self_attn.{t}_proj.lora_{ab}" for i in range(n_layers) for t in lora for ab in "AB"}
    if embed:
        names.add("embed_tokens.weight")
    if norm:
        names |= {f"layers.{i}.{n}.weight" for i in range(n_layers) for n in NORMS} | {"norm.weight"}
    return names


@pytest.mark.parametrize("embed, norm", [(True, True), (False, False), (False, True), (True, False)])
def test_trainable_sets_and_frozen_weights_unchanged(embed, norm):
    model = Llama(LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=32))
    apply_lora_plus(model, r=4, alpha=8, train_embed=embed, train_norm=norm)
    names = {n for n, _ in trainable_parameters(model)}
    assert names == expected_trainable(2, embed=embed, norm=norm)
    if not embed and not norm:  # the plain-LoRA ablation column is apply_lora itself
        other = apply_lora(Llama(model.config), r=4, alpha=8)
        assert {n for n, _ in trainable_parameters(other)} == names
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert {"lm_head.weight", "layers.0.mlp.up_proj.weight", "layers.1.self_attn.q_proj.weight"} <= frozen.keys()
    before = {n: p.detach().clone() for n, p in trainable_parameters(model)}
    train_steps(model, [p for _, p in trainable_parameters(model)], steps=1, vocab=64)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    # A gets no gradient while B = 0 (step 1); B, norms and the embedding move
    assert all(not torch.equal(p, before[n]) for n, p in trainable_parameters(model) if not n.endswith("lora_A"))


def test_mlp_targets_and_tied_head():
    model = Llama(LlamaConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, ffn_dim=64, tie_embeddings=True))
    apply_lora_plus(model, targets=("q_proj", "v", "gate", "up", "down"), r=2, alpha=4)
    block = model.layers[0]
    assert isinstance(block.mlp.down_proj, LoRALinear) and not isinstance(block.self_attn.k_proj, LoRALinear)
    assert model.lm_head.weight is model.embed_tokens.weight and model.lm_head.weight.requires_grad  # trains with it
    kinds = {(r["kind"], r["trainable"]) for r in parameter_report(model)}
    assert ("head", False) not in kinds and ("embedding", True) in kinds


# Fig. 2(c) ------------------------------------------------------------------------------------------------------------
def test_llama2_7b_shares_on_meta_device():
    with torch.device("meta"):
        model = Llama(LlamaConfig.from_preset("llama2-7b"))
    apply_lora_plus(model, r=8)  # outside the context manager: A and B follow the base weight onto meta
    assert model.layers[31].self_attn.o_proj.lora_A.device.type == "meta"
    rows = {(r["kind"], r["trainable"]): r for r in parameter_report(model)}
    pct = {k: 100 * r["share"] for k, r in rows.items()}
    assert round(pct["norm", True], 3) == 0.004
    assert round(pct["embedding", True], 2) == 1.94
    assert round(pct["head", False], 2) == 1.94
    assert round(pct["lora", True], 2) == 0.12
    assert round(pct["attn_linear", False] + pct["mlp_linear", False]) == 96
    assert rows["lora", True]["count"] == 32 * 4 * 2 * 8 * 4096
    assert sum(r["count"] for r in rows.values()) == LlamaConfig.from_preset("llama2-7b").num_params() + 8_388_608
    assert "embedding" in format_parameter_report(model)


# adapters: ours → peft, peft → ours -----------------------------------------------------------------------------------
def test_adapter_export_loads_in_peft(tmp_path):
    _, path = hf_llama(tmp_path, kv_heads=2)
    ours = apply_lora_plus(from_hf(path), r=8, alpha=16)
    start = {n: p.detach().clone() for n, p in trainable_parameters(ours)}
    train_steps(ours, [p for _, p in trainable_parameters(ours)])
    for n, p in trainable_parameters(ours):  # B, norms and embedding all moved
        assert not torch.equal(p, start[n]), n
    adapter = save_peft_adapter(ours, tmp_path / "adapter")
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 16, 0.0)
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["target_modules"] == sorted(PROJ)
    assert set(config["modules_to_save"]) == {"embed_tokens", "norm", *NORMS}

    # the same tensor names and shapes as peft's own save_pretrained of the same LoRA+ setup
    peft_dir = tmp_path / "peft_ref"
    peft_lora_plus(path).save_pretrained(peft_dir)
    from safetensors.torch import load_file
    ref, got = load_file(peft_dir / "adapter_model.safetensors"), load_file(adapter / "adapter_model.safetensors")
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in got
    assert "base_model.model.model.embed_tokens.weight" in got

    pm = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(path), adapter)
    x = tokens(seed=99)
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=x).logits, ours(x), **TOL)
        merged = pm.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=x).logits, ours(x), **TOL)


def test_peft_adapter_loads_into_ours(tmp_path):
    _, path = hf_llama(tmp_path, kv_heads=2)
    pm = peft_lora_plus(path)
    train_steps(lambda x: pm(input_ids=x).logits, [p for p in pm.parameters() if p.requires_grad])
    pm.save_pretrained(tmp_path / "adapter")
    ours = load_peft_adapter(from_hf(path), tmp_path / "adapter")
    assert {peft_name(n) for n, _ in trainable_parameters(ours)} == {n for n, p in pm.named_parameters()
                                                                      if p.requires_grad}
    x = tokens(seed=7)
    pm.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), pm(input_ids=x).logits, **TOL)
    # and back out again: our re-export loads in peft with the same logits
    save_peft_adapter(ours, tmp_path / "again")
    pm2 = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(path), tmp_path / "again")
    with torch.no_grad():
        torch.testing.assert_close(pm2(input_ids=x).logits, ours(x), **TOL)


def test_tied_embeddings_round_trip(tmp_path):
    """Tied head: ours exports with ensure_weight_tying (peft then ties the head to the trained embedding copy);
    a peft adapter that trained the embedding WITHOUT it has an untied head, which a tied model must refuse."""
    _, path = hf_llama(tmp_path, layers=1, tie=True)
    ours = apply_lora_plus(from_hf(path), r=4, alpha=8)
    train_steps(ours, [p for _, p in trainable_parameters(ours)])
    save_peft_adapter(ours, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["ensure_weight_tying"] is True
    pm = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(path), tmp_path / "adapter")
    back = load_peft_adapter(from_hf(path), tmp_path / "adapter")
    assert back.lm_head.weight is back.embed_tokens.weight
    x = tokens(seed=5)
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=x).logits, ours(x), **TOL)
        torch.testing.assert_close(back(x), ours(x), **TOL)
    untied = get_peft_model(LlamaForCausalLM.from_pretrained(path),
                            LoraConfig(r=4, target_modules=PROJ, modules_to_save=["embed_tokens"]))
    untied.save_pretrained(tmp_path / "untied")
    with pytest.raises(ValueError, match="ensure_weight_tying"):
        load_peft_adapter(from_hf(path), tmp_path / "untied")


# merge → plain HF checkpoint ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rope", [None, {"rope_type": "linear", "factor": 2.0}])
def test_merge_then_to_hf_matches_transformers(tmp_path, rope):
    _, path = hf_llama(tmp_path, max_pos=16, rope=rope)
    model = apply_lora_plus(from_hf(path), r=4, alpha=8).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.05)
        model.norm.weight.mul_(1.5)
    x = tokens(n=24 if rope else 16)  # with factor 2, 24 > 16 positions are inside the scaled context
    with torch.no_grad():
        ref = model(x)
        with pytest.raises(ValueError, match="merge_lora"):
            to_hf(model, tmp_path / "refused")
        merged = merge_lora(model)
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(x), ref, **TOL)
        out = to_hf(merged, tmp_path / "merged")
        hf = LlamaForCausalLM.from_pretrained(out).eval()
        torch.testing.assert_close(hf(input_ids=x).logits, ref, **TOL)
    saved, rope = json.loads((out / "config.json").read_text())["rope_parameters"], rope or {}
    assert (saved["rope_type"], saved.get("factor")) == (rope.get("rope_type", "default"), rope.get("factor"))


# clear errors ---------------------------------------------------------------------------------------------------------
def tiny():
    return Llama(LlamaConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, ffn_dim=64))


def test_bad_arguments():
    with pytest.raises(ValueError, match="integer r > 0"):
        apply_lora(tiny(), r=0)
    with pytest.raises(ValueError, match="unknown LoRA target 'qkv'"):
        apply_lora(tiny(), targets=("q", "qkv"))
    with pytest.raises(ValueError, match="only once"):
        apply_lora(apply_lora(tiny()))
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_peft_adapter(tiny(), "/nonexistent/never-written")


def test_bad_adapters(tmp_path):
    _, path = hf_llama(tmp_path, layers=1)
    with pytest.raises(FileNotFoundError, match="no adapter directory"):
        load_peft_adapter(from_hf(path), tmp_path / "missing")
    dora = tmp_path / "dora"
    get_peft_model(LlamaForCausalLM.from_pretrained(path),
                   LoraConfig(r=4, target_modules=PROJ, use_dora=True)).save_pretrained(dora)
    with pytest.raises(ValueError, match="use_dora=True is not supported"):
        load_peft_adapter(from_hf(path), dora)
    (dora / "adapter_model.safetensors").rename(dora / "adapter_model.bin")  # never unpickled: refused by name
    with pytest.raises(ValueError, match="pickle"):
        load_peft_adapter(from_hf(path), dora)
    (dora / "adapter_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_peft_adapter(from_hf(path), dora)
    # a well-formed adapter for a different model: shapes do not fit
    _, other = hf_llama(tmp_path / "wide", layers=1, hidden=32, heads=2, kv_heads=2)
    get_peft_model(LlamaForCausalLM.from_pretrained(other), LoraConfig(r=4, target_modules=PROJ)).save_pretrained(
        tmp_path / "wide_adapter")
    with pytest.raises(ValueError, match="has shape"):
        load_peft_adapter(from_hf(path), tmp_path / "wide_adapter")
