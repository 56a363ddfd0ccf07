"""table1_sink's diagnostics (issue 16, reproduce/sinks.py): the key masks checked by hand, a model tested with them
against the model's own forward (full attention, the `local` pattern), which tokens can reach which logits (by
perturbation, the masks' defining property), the attention mass on the first tokens against the attention maps,
the FLOPs of a row, and the choice of k on validation."""

import math

import pytest
import torch
from einops import rearrange

from minilongllora import Llama, LlamaConfig
from minilongllora.reproduce import table1_sink
from minilongllora.lora import apply_lora
from minilongllora.reproduce.sinks import (KeyMasked, distance_mass, far_reading, first_token_mass, graft, key_mask,
                                          parse_test, rotary_phase, rotate_query_pair, score_by_frequency)

from test_attention import kernel  # noqa: F401 (fp64 explicit attention: the oracle's precision)


def reads(row: torch.Tensor) -> list[int]:
    return row.nonzero().flatten().tolist()


def test_key_masks_by_hand():
    full = key_mask("full", 6)
    assert reads(full[3]) == [0, 1, 2, 3]
    no_first = key_mask("no_first 2", 6)
    assert reads(no_first[1]) == [0, 1]  # before k: its own past, it has nothing else
    assert reads(no_first[2]) == [2] and reads(no_first[5]) == [2, 3, 4, 5]
    window = key_mask("window 0.5", 6)  # W = 3: query i reads i - 2 … i
    assert reads(window[1]) == [0, 1] and reads(window[5]) == [3, 4, 5]
    sinks = key_mask("window_sinks 0.5 1", 6)
    assert reads(sinks[5]) == [0, 3, 4, 5] and reads(sinks[2]) == [0, 1, 2]
    for bad in ("window", "no_first", "sinks 4", "window_sinks 0.5"):
        with pytest.raises(ValueError, match="unknown key test"):
            parse_test(bad)


def _model(n_kv_heads=2, layers=2, **kw):
    torch.manual_seed(0)
    cfg = LlamaConfig.from_preset("tiny", n_layers=layers, dim=64, n_heads=4, n_kv_heads=n_kv_heads, ffn_dim=96,
                                  max_seq_len=64, **kw)
    return Llama(cfg).eval()


def test_full_key_mask_gives_the_models_own_logits():
    model, tokens = _model(), torch.randint(0, 256, (2, 48))
    with torch.no_grad():
        torch.testing.assert_close(KeyMasked(model, "full")(tokens), model(tokens), rtol=1e-5, atol=1e-5)


def test_window_key_mask_equals_the_local_pattern():
    """'window F' through the dense mask against the model's fast `local` pattern (blocks of G = F·n)."""
    local = _model(attention="local", group_size_ratio=0.25, eval_attention="train")
    plain = _model()
    plain.load_state_dict(local.state_dict())
    tokens = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(KeyMasked(plain, "window 0.25")(tokens), local(tokens), rtol=1e-5, atol=1e-5)


def test_key_mask_in_some_heads_only_against_the_dense_oracle(kernel):  # noqa: F811
    """`heads`: the test's mask in those heads only. Every head gives the plain KeyMasked, none the model's own
    logits; head 1 of layer 0 windowed gives layer 0's attention as the dense oracle computes it with a per-head
    mask (window for head 1, causal for the others), in float64."""
    from minilongllora.reference import dense_attention

    model, tokens = _model(layers=2).double(), torch.randint(0, 256, (2, 48))
    every = [[layer, h] for layer in range(2) for h in range(4)]
    with torch.no_grad():
        torch.testing.assert_close(KeyMasked(model, "window 0.25", every)(tokens),
                                   KeyMasked(model, "window 0.25")(tokens), atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(KeyMasked(model, "window 0.25", [])(tokens), model(tokens), atol=1e-10, rtol=1e-10)
        one = _model(layers=1).double()
        x = one.embed_tokens(tokens)
        cos, sin = one.rope(0, 48, x)
        block = one.layers[0]
        q, k, v = block.self_attn.qkv(block.input_layernorm(x), cos, sin)
        masks = torch.stack([key_mask("window 0.25" if h == 1 else "full", 48) for h in range(4)])
        out = rearrange(dense_attention(q, k, v, masks), "b h n d -> b n (h d)")
        x = x + block.self_attn.o_proj(out)
        want = one.lm_head(one.norm(x + block.mlp(block.post_attention_layernorm(x))))
        torch.testing.assert_close(KeyMasked(one, "window 0.25", [[0, 1]])(tokens), want, atol=1e-10, rtol=1e-10)
        assert not torch.allclose(KeyMasked(one, "window 0.25", [[0, 2]])(tokens), want)  # another head: not it


def _changed_positions(model, test: str, n: int, perturb: list[int]) -> list[int]:
    """Positions whose logits change when the tokens at `perturb` change."""
    torch.manual_seed(1)
    a = torch.randint(0, 256, (1, n))
    b = a.clone()
    b[0, perturb] = (a[0, perturb] + 1) % 256
    with torch.no_grad():
        la, lb = KeyMasked(model, test)(a), KeyMasked(model, test)(b)
    return ((la - lb).abs().amax(-1)[0] > 0).nonzero().flatten().tolist()


def test_which_tokens_reach_which_logits(kernel):  # noqa: F811
    """The defining property of each test, through every layer: with no_first k, no position at or after k depends
    on the first k tokens; with a window of W keys, one layer carries token j to positions j … j + W − 1 only, and
    with the sinks added, the first tokens reach every position."""
    two, one = _model(layers=2).double(), _model(layers=1).double()
    n = 32
    assert _changed_positions(two, "full", n, [1]) == list(range(1, n))
    assert _changed_positions(two, "no_first 4", n, [0, 1, 2, 3]) == [0, 1, 2, 3]
    assert _changed_positions(two, "no_first 4", n, [5]) == list(range(5, n))
    assert _changed_positions(one, "window 0.25", n, [10]) == list(range(10, 18))  # W = 8
    assert _changed_positions(one, "window_sinks 0.25 4", n, [2]) == list(range(2, n))  # a sink: everywhere
    assert _changed_positions(one, "window_sinks 0.25 4", n, [10]) == list(range(10, 18))


def test_first_token_mass_against_the_attention_maps():
    model = _model(layers=2)
    docs = [torch.randint(0, 256, (32,)) for _ in range(2)]
    got = first_token_mass(model, docs, k=3, bins=4)
    maps = [model.attention_maps(d[None]) for d in docs]
    for layer in range(2):
        for head in range(4):
            want = sum(m[layer][0, head, 16:, :3].sum(-1).mean().item() for m in maps) / 2
            assert got["per_head"][layer][head] == pytest.approx(want, abs=1e-6)
    first_bin = sum(torch.stack([p[0, :, :8, :3].sum(-1) for p in m]).mean().item() for m in maps) / 2
    assert got["by_position"][0] == pytest.approx(first_bin, abs=1e-6)
    assert got["by_position"][0] > got["by_position"][-1]  # the first queries can read little else
    all_keys = first_token_mass(model, docs, k=32, bins=4)
    assert all(v == pytest.approx(1.0) for v in all_keys["by_position"])


def test_distance_mass_against_the_attention_maps_by_hand():
    model = _model(layers=2)
    docs = [torch.randint(0, 256, (32,)) for _ in range(2)]
    got = distance_mass(model, docs, bins=4)  # queries 24 … 31; bins of 8 distances
    maps = [model.attention_maps(d[None]) for d in docs]
    for layer in range(2):
        for head in range(4):
            for b in range(4):  # loops over query and key: the mass at distances 8b … 8b + 7 (the last bin: 24 … 31)
                want = sum(sum(m[layer][0, head, q, k].item() for q in range(24, 32) for k in range(q + 1)
                               if min((q - k) // 8, 3) == b) / 8 for m in maps) / 2
                assert got["per_head"][layer][head][b] == pytest.approx(want, abs=1e-6)
    assert sum(got["mean"]) == pytest.approx(1.0)  # every query's attention lands in some bin
    assert got["mean"] == pytest.approx([sum(got["per_head"][i][j][b] for i in range(2) for j in range(4)) / 8
                                         for b in range(4)])


def test_far_reading_against_the_attention_maps_by_hand():
    """far_reading's mass: each head's attention on the keys more than n/4 back, from the attention maps, over the
    queries that have such keys (8 … 31 at n = 32); its change: the head's slice of W_o times its output with those
    keys hidden (the maps' rows renormalized over the keys left) against without, per query, in float64. GQA: query
    head h reads key head h // 2."""
    model = _model(layers=2).double()
    docs = [torch.randint(0, 256, (32,)) for _ in range(2)]
    got = far_reading(model, docs, "window 0.25")
    mass, change = torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64)
    with torch.no_grad():
        for doc in docs:
            maps = model.attention_maps(doc[None])
            x = model.embed_tokens(doc[None])
            cos, sin = model.rope(0, 32, x)
            for i, layer in enumerate(model.layers):
                _, _, v = layer.self_attn.qkv(layer.input_layernorm(x), cos, sin)  # (1, 2, n, d): 2 key heads
                w_o = layer.self_attn.o_proj.weight  # (dim, 4 · d)
                for h in range(4):
                    p = maps[i][0, h]  # (n, n)
                    d = v.shape[-1]
                    for q in range(8, 32):
                        far = [k for k in range(q + 1) if q - k >= 8]
                        mass[i, h] += p[q, far].sum() / 24 / 2
                        kept = p[q].clone()
                        kept[far] = 0
                        own = w_o[:, h * d:(h + 1) * d] @ (p[q] @ v[0, h // 2])
                        without = w_o[:, h * d:(h + 1) * d] @ (kept / kept.sum() @ v[0, h // 2])
                        change[i, h] += (without - own).norm() / own.norm() / 24 / 2
                x = layer(x, cos, sin, "full")
    torch.testing.assert_close(torch.tensor(got["mass"], dtype=torch.float64), mass, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(torch.tensor(got["change"], dtype=torch.float64), change, atol=1e-10, rtol=1e-10)
    assert mass.min() > 0 and change.min() > 0
    with pytest.raises(ValueError, match="hides no key"):
        far_reading(model, docs, "window 1.0")


def test_far_reading_with_some_heads_hidden_against_the_dense_oracle():
    """`heads`: the test in those heads of the forward pass. No head gives the plain reading; with head 1 of layer 0
    hidden, layer 0's reading is unchanged (its input is) and layer 1's equals the attention maps' of a pass whose
    layer 0 the dense oracle computes with a per-head mask, in float64."""
    from minilongllora.reference import attention_probs, dense_attention

    model = _model(layers=2).double()
    docs = [torch.randint(0, 256, (32,)) for _ in range(2)]
    plain = far_reading(model, docs, "window 0.25")
    assert far_reading(model, docs, "window 0.25", [])["mass"] == plain["mass"]
    got = far_reading(model, docs, "window 0.25", [[0, 1]])
    assert got["mass"][0] == plain["mass"][0] and got["change"][0] == plain["change"][0] and got["heads"] == [[0, 1]]
    want = torch.zeros(4, dtype=torch.float64)
    hidden = key_mask("full", 32) & ~key_mask("window 0.25", 32)
    with torch.no_grad():
        for doc in docs:
            x = model.embed_tokens(doc[None])
            cos, sin = model.rope(0, 32, x)
            block = model.layers[0]
            q, k, v = block.self_attn.qkv(block.input_layernorm(x), cos, sin)
            masks = torch.stack([key_mask("window 0.25" if h == 1 else "full", 32) for h in range(4)])
            x = x + block.self_attn.o_proj(rearrange(dense_attention(q, k, v, masks), "b h n d -> b n (h d)"))
            x = x + block.mlp(block.post_attention_layernorm(x))
            block = model.layers[1]
            q, k, _ = block.self_attn.qkv(block.input_layernorm(x), cos, sin)
            probs = attention_probs(q, k)[0]  # (h, n, n), causal
            want += (probs * hidden).sum(-1)[:, 8:].mean(-1) / 2  # queries 8 … 31 have keys more than 8 back
    torch.testing.assert_close(torch.tensor(got["mass"][1], dtype=torch.float64), want, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(torch.tensor(plain["mass"][1], dtype=torch.float64), want)


def test_score_by_frequency_adds_up_to_the_scores_by_hand():
    model = _model(layers=2)  # head_dim 16: 8 rotating pairs
    docs = [torch.randint(0, 256, (32,)) for _ in range(2)]
    got = score_by_frequency(model, docs, near=1, far=3, bins=4)  # queries 24 … 31: near 0 … 7 back, far 24 … 31
    for layer in range(2):
        for head in range(4):
            raw = _raw_scores(model, docs, layer, head)
            for name, lo, hi in (("near", 0, 7), ("far", 24, 31)):  # the parts add up to the mean score of the pairs
                pairs = [(q, q - dist) for q in range(24, 32) for dist in range(lo, hi + 1) if q - dist >= 0]
                by_hand = sum(sum(r[q, k].item() for q, k in pairs) / len(pairs) for r in raw) / 2
                assert sum(got[name][layer][head]) == pytest.approx(by_hand, abs=1e-9)
    assert len(got["far_minus_near"][0][0]) == 8
    assert got["far_minus_near"][1][2][3] == pytest.approx(got["far"][1][2][3] - got["near"][1][2][3])


def _raw_scores(model, docs, layer, head):
    """q·k/√d of one head, written out: (n, n) per document, through the model's own layers up to `layer`."""
    out = []
    with torch.no_grad():
        for d in docs:
            x = model.embed_tokens(d[None])
            cos, sin = model.rope(0, d.numel(), x)
            for i, block in enumerate(model.layers):
                if i == layer:
                    q, k, _ = block.self_attn.qkv(block.input_layernorm(x), cos, sin)
                    kv = head // (q.shape[1] // k.shape[1])
                    out.append((q[0, head].double() @ k[0, kv].double().T) / q.shape[-1] ** 0.5)
                    break
                x = block(x, cos, sin)
    return out


def _rotated_qk(model, doc, layer):
    """The rotated queries and keys (h, n, d) of one layer, from the model's own qkv (RoPE applied), as complex
    numbers per rotating pair (h, n, d/2), and the model's angle of each (position, pair) (n, d/2)."""
    with torch.no_grad():
        x = model.embed_tokens(doc[None])
        cos, sin = model.rope(0, doc.numel(), x)
        for block in model.layers[:layer]:
            x = block(x, cos, sin)
        q, k, _ = model.layers[layer].self_attn.qkv(model.layers[layer].input_layernorm(x), cos, sin)
    half = q.shape[-1] // 2
    as_complex = lambda t: torch.complex(t[0, ..., :half].double(), t[0, ..., half:].double())  # noqa: E731
    return as_complex(q), as_complex(k), torch.atan2(sin[:, :half], cos[:, :half]).double()


def test_rotary_phase_against_the_rotated_queries_and_keys_by_hand():
    """C = mean q · conj(mean k) before rotation: undo the model's own RoPE angles on qkv's rotated q and k."""
    model = _model(n_kv_heads=4, layers=2)  # head_dim 16: 8 pairs
    docs = [torch.randint(0, 256, (32,)) for _ in range(2)]
    got = rotary_phase(model, docs, pair=3, bins=4)  # the last 8 queries
    for layer in range(2):
        c = 0
        for doc in docs:
            q, k, angle = _rotated_qk(model, doc, layer)
            unrotate = torch.exp(-1j * angle[:, 3])  # (n,)
            c = c + (q[:, 24:, 3] * unrotate[24:]).mean(1) * (k[:, :, 3] * unrotate).mean(1).conj() / 2
        # the model rotates in float32, so undoing it agrees to float32's rounding (1e-7 here), not float64's
        assert got["phase"][layer] == pytest.approx(c.angle().tolist(), abs=1e-6)
        assert got["magnitude"][layer] == pytest.approx((c.abs() / 4).tolist(), rel=1e-6)  # / √16


def test_rotate_query_pair_turns_that_frequency_of_the_queries_and_nothing_else():
    """Turning pair 3 by α multiplies the rotated queries' pair 3 by e^{iα} (the sense RoPE turns them with the
    position), leaves the other pairs and the keys as they were, turns rotary_phase by α, and needs merged weights."""
    model, doc = _model(n_kv_heads=2, layers=2), torch.randint(0, 256, (32,))
    q0, k0, _ = _rotated_qk(model, doc, 0)
    before = rotary_phase(model, [doc], pair=3, bins=4)
    angles = [[0.3, -1.0, 2.5, 0.0], [0.0] * 4]
    rotate_query_pair(model, 3, angles)
    q1, k1, _ = _rotated_qk(model, doc, 0)
    turn = torch.exp(1j * torch.tensor(angles[0], dtype=torch.float64))[:, None]  # (h, 1)
    torch.testing.assert_close(q1[:, :, 3], q0[:, :, 3] * turn, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q1[:, :, [0, 1, 2, 4, 5, 6, 7]], q0[:, :, [0, 1, 2, 4, 5, 6, 7]], atol=0, rtol=0)
    torch.testing.assert_close(k1, k0, atol=0, rtol=0)
    after = rotary_phase(model, [doc], pair=3, bins=4)
    for head, a in enumerate(angles[0]):
        assert math.remainder(after["phase"][0][head] - before["phase"][0][head] - a, 2 * math.pi) == \
            pytest.approx(0, abs=1e-5)
    assert after["magnitude"][0] == pytest.approx(before["magnitude"][0], rel=1e-5)
    with pytest.raises(TypeError, match="merged"):
        rotate_query_pair(apply_lora(_model()), 3, angles)


def _donor():
    """Another model of the same shapes: the `_model` weights moved by seeded noise (a stand-in for a fine-tuning)."""
    donor = _model(n_kv_heads=2, layers=2)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return donor


def test_graft_of_every_weight_gives_the_donors_logits():
    model, donor, tokens = _model(n_kv_heads=2, layers=2), _donor(), torch.randint(0, 256, (2, 32))
    graft(model, donor.state_dict(), ("self_attn", "mlp", "norm", "embed_tokens", "lm_head"))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), donor(tokens), atol=0, rtol=0)


def test_graft_of_rotary_pairs_takes_those_rows_of_the_queries_and_keys_only():
    """Pairs 1 and 3 of W_q and W_k grafted (rows j and j + d/2 of every head, 4 query and 2 key heads): layer 0's
    rotated queries and keys are, at those pairs, those of the model with the donor's whole W_q and W_k, and at the
    other pairs the model's own, exactly (each is one row's product with the same input); nothing else changes."""
    model, donor, doc = _model(n_kv_heads=2, layers=2), _donor(), torch.randint(0, 256, (32,))
    whole = _model(n_kv_heads=2, layers=2)
    graft(whole, donor.state_dict(), ("q_proj", "k_proj"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graft(model, donor.state_dict(), ("q_proj", "k_proj"), pairs=[1, 3])
    (q0, k0, _), (qd, kd, _), (q1, k1, _) = (_rotated_qk(m, doc, 0) for m in (_model(n_kv_heads=2), whole, model))
    took, kept = [1, 3], [0, 2, 4, 5, 6, 7]  # head_dim 16: 8 pairs
    torch.testing.assert_close(q1[..., took], qd[..., took], atol=0, rtol=0)
    torch.testing.assert_close(k1[..., took], kd[..., took], atol=0, rtol=0)
    torch.testing.assert_close(q1[..., kept], q0[..., kept], atol=0, rtol=0)
    torch.testing.assert_close(k1[..., kept], k0[..., kept], atol=0, rtol=0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"layers.{i}.self_attn.{w}_proj.weight" for i in range(2) for w in "qk"}
    with pytest.raises(ValueError, match="rows of W_q and W_k only"):
        graft(model, donor.state_dict(), ("v_proj",), pairs=[1])
    with pytest.raises(ValueError, match="rows of W_q and W_k only"):
        graft(model, donor.state_dict(), ("o_proj",), heads=[0])
    with pytest.raises(ValueError, match="no parameter"):
        graft(model, donor.state_dict(), ("wq",))
    with pytest.raises(TypeError, match="merged"):
        graft(apply_lora(_model()), donor.state_dict(), ("q_proj",))


def test_graft_of_one_head_takes_its_query_rows_and_its_key_heads_rows_only():
    """Query head 1 of 4 (2 key heads: it reads key head 0) in layer 0 only, pairs 2 and 5: its rotated queries at
    those pairs are the whole-W_q-and-W_k graft's, and so are key head 0's; every other head and pair is the model's
    own, exactly, and layer 1 is untouched."""
    model, donor, doc = _model(n_kv_heads=2, layers=2), _donor(), torch.randint(0, 256, (32,))
    whole = _model(n_kv_heads=2, layers=2)
    graft(whole, donor.state_dict(), ("q_proj", "k_proj"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graft(model, donor.state_dict(), ("layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj"), pairs=[2, 5],
          heads=[1])
    (q0, k0, _), (qw, kw, _), (q1, k1, _) = (_rotated_qk(m, doc, 0) for m in (_model(n_kv_heads=2), whole, model))
    torch.testing.assert_close(q1[1][..., [2, 5]], qw[1][..., [2, 5]], atol=0, rtol=0)
    torch.testing.assert_close(k1[0][..., [2, 5]], kw[0][..., [2, 5]], atol=0, rtol=0)
    keep_q, keep_k = q1.clone(), k1.clone()
    keep_q[1][..., [2, 5]], keep_k[0][..., [2, 5]] = q0[1][..., [2, 5]], k0[0][..., [2, 5]]
    torch.testing.assert_close(keep_q, q0, atol=0, rtol=0)
    torch.testing.assert_close(keep_k, k0, atol=0, rtol=0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight"}


def test_flops_of_the_rows_at_llama_scale():
    """Llama-2-7B at 8192 (2x): S2-Attn 117.1 / 143.5 TFLOPs (Table 11), full attention 1; every 4th step full adds
    a quarter of the attention saving back; growing groups cost between the two."""
    from minilongllora.reproduce.plan import Plan

    plan = Plan.make("unused", 256)
    get = {s: table1_sink.flops(table1_sink.config(plan, 512, s, 0, every=4))["flops_rel_7b"]
           for s in ("full", "s2", "s2_full_steps", "s2_grow", "s2_sink")}
    assert get["full"] == pytest.approx(1.0) and get["s2"] == pytest.approx(117.1 / 143.5, abs=1e-3)
    assert get["s2_full_steps"] == pytest.approx(0.75 * get["s2"] + 0.25, rel=1e-9)
    assert get["s2"] < get["s2_grow"] < 1 and get["s2"] < get["s2_sink"] < get["s2"] + 1e-3


class _Fixed:
    """A runner whose candidates come out at the given perplexities, by k."""

    def __init__(self, ppl):
        self.by_k = ppl

    def train(self, cfg):
        return {"key": str(cfg.full_attention_every), "config": cfg, "loss": 1.0, "train_seconds": 1.0,
                "reused": False, "k": cfg.full_attention_every}

    def ppl(self, run, n, *a, **kw):
        return {"ppl": self.by_k[run["k"]]}


@pytest.mark.parametrize("ppl, chosen", [({2: 10.0, 4: 10.05, 8: 10.5}, 4), ({2: 10.0, 4: 10.2, 8: 10.09}, 8),
                                         ({2: 10.0, 4: 10.5, 8: 10.6}, 2)])
def test_every_k_is_the_sparsest_within_one_percent_of_the_best(ppl, chosen):
    from minilongllora.reproduce.plan import Plan

    k, candidates = table1_sink.choose_every(Plan.make("unused", 256), _Fixed(ppl))
    assert k == chosen and [c["every"] for c in candidates] == list(table1_sink.FULL_EVERY)
    assert all(c["selection"] and c["context"] == 8 * 256 for c in candidates)
