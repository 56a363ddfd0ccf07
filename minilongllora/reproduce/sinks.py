"""(Not in the paper; issue 16.) Test-time diagnostics of attention sinks: a trained model tested with some keys
hidden, and the attention mass its heads put on the first tokens.

Attention sinks (Xiao et al. 2023, StreamingLLM): trained models park much of their attention on the first few tokens
of a sequence. Under grouped training (short attention, S2-Attn) every group but the first lacks them; under full
attention at test time they are visible again. Which keys break a grouped model tested with full attention, the
sinks or the distance? Each test below hides a different set of keys from every query, in every layer and head:

    full            causal attention (what the paper tests with)
    no_first K      causal, but no query at or after position K reads the first K tokens (K = 4, 16)
    window F        a sliding window: query i reads keys i − F·n < j ≤ i (StreamingLLM's "window attention")
    window_sinks F K  the window, plus the first K tokens (StreamingLLM's evaluation)

`KeyMasked` runs a Llama's layers with one such (n, n) mask through SDPA, in every head or in some heads only; with the
causal mask it gives the model's own logits (tests/test_table1_sink.py). `first_token_mass` reads
`Llama.attention_maps`: the share of each head's attention that lands on the first K tokens; `distance_mass`, the share
that the window's last queries put on keys at each distance (table1_budget: where does a grouped model's attention go
beyond its break?); `far_reading`, how much of each head's attention and output its far keys make;
`score_by_frequency`, how much each rotary frequency adds to the score of a far key against a near
one (and why); `rotary_phase`, where on its cosine one frequency's part of the score lies, and `rotate_query_pair`, a
weight edit that moves it; `graft`, another model's weights (whole matrices, or only the rows of W_q and W_k of some
rotary pairs or heads) put in a model's place.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..attention import repeat_kv, sdpa
from ..reference import attention_probs

KEY_TESTS = ("full", "no_first", "window", "window_sinks")


def parse_test(test: str) -> tuple[str, list[float]]:
    """"window_sinks 0.5 4" -> ("window_sinks", [0.5, 4.0]); checks the name and the number of arguments."""
    name, *args = test.split()
    want = {"full": 0, "no_first": 1, "window": 1, "window_sinks": 2}
    if name not in want or len(args) != want[name]:
        raise ValueError(f"unknown key test {test!r}; expected one of 'full', 'no_first K', 'window F', "
                         f"'window_sinks F K'")
    return name, [float(a) for a in args]


def key_mask(test: str, n: int) -> torch.Tensor:
    """(n, n) bool, True where query i may read key j, for one of the tests of the module docstring."""
    name, args = parse_test(test)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    causal = j <= i
    if name == "full":
        return causal
    if name == "no_first":
        k = int(args[0])
        return causal & ~((j < k) & (i >= k))  # the first k queries keep their own past: they have nothing else
    window = causal & (i - j < max(1, round(args[0] * n)))
    if name == "window":
        return window
    return window | (causal & (j < int(args[1])))


def _picked(heads: list, layer: int, n_heads: int, device) -> torch.Tensor:
    """(n_heads,) bool: the heads of `layer` that the [layer, head] pairs of `heads` choose."""
    picked = torch.zeros(n_heads, dtype=torch.bool, device=device)
    picked[[h for at, h in heads if at == layer]] = True
    return picked


class KeyMasked(nn.Module):
    """A Llama evaluated with `key_mask(test, n)` in every layer and head, or only in `heads` ([layer, head] pairs;
    the others read causally): (b, n) tokens -> (b, n, vocab) logits. The same blocks as `model.Block.forward`, with
    the attention read under the mask."""

    def __init__(self, model: nn.Module, test: str, heads: list | None = None):
        super().__init__()
        parse_test(test)
        self.model, self.test, self.heads = model, test, heads

    def forward(self, tokens: torch.Tensor, check_context: bool = True) -> torch.Tensor:
        m, n = self.model, tokens.shape[1]
        x = m.embed_tokens(tokens)  # (b, n, dim)
        cos, sin = m.rope(0, n, x)
        mask = key_mask(self.test, n).to(x.device)
        for i, layer in enumerate(m.layers):
            attn = layer.self_attn
            q, k, v = attn.qkv(layer.input_layernorm(x), cos, sin)  # (b, h, n, d), (b, k, n, d)
            picked = (torch.ones(q.shape[1], dtype=torch.bool, device=x.device) if self.heads is None
                      else _picked(self.heads, i, q.shape[1], x.device))
            if not picked.any():  # no head of this layer is chosen: all of it reads causally
                out = sdpa(q, k, v, causal=True)
            else:
                out = sdpa(q, k, v, causal=False, mask=mask)
            if picked.any() and not picked.all():  # the chosen heads of this layer under the mask, the others causal
                out = torch.where(picked[:, None, None], out, sdpa(q, k, v, causal=True))
            x = x + attn.o_proj(rearrange(out, "b h n d -> b n (h d)"))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return m.lm_head(m.norm(x))


@torch.no_grad()
def first_token_mass(model, documents: list[torch.Tensor], k: int, bins: int = 16) -> dict:
    """Share of attention on the first k tokens under full attention, averaged over `documents` (each (n,)):
    "per_head" (layers x heads) over the queries of the window's second half (far from those tokens, where the
    question arises), and "by_position" (bins,) over all layers and heads, for the queries of each 1/bins of the
    window (the queries before k, which can read nothing else, included)."""
    per_head, by_position = None, None
    for doc in documents:
        maps = model.attention_maps(doc[None])  # [(1, h, n, n)] x layers, full attention
        mass = torch.stack([p[0, :, :, :k].sum(-1) for p in maps]).double()  # (layers, h, n): per query
        n = mass.shape[-1]
        head = mass[:, :, n // 2:].mean(-1)
        pos = rearrange(mass[:, :, :n // bins * bins], "l h (b m) -> b (l h m)", b=bins).mean(-1)
        per_head = head if per_head is None else per_head + head
        by_position = pos if by_position is None else by_position + pos
    return {"per_head": (per_head / len(documents)).tolist(), "by_position": (by_position / len(documents)).tolist(),
            "k": k, "documents": len(documents)}


def _distance_bins(n: int, bins: int) -> tuple[int, torch.Tensor]:
    """The window's last m = n/bins queries, and each (query, key)'s distance bin, (m, n): bin b holds distances
    b·m … (b+1)·m − 1 (the last bin also every larger one), −1 a future key."""
    m = n // bins
    distance = torch.arange(n - m, n)[:, None] - torch.arange(n)[None, :]  # (m, n)
    return m, torch.where(distance >= 0, (distance.clamp(min=0) // m).clamp(max=bins - 1), -1)


def distance_mass(model, documents: list[torch.Tensor], bins: int = 16) -> dict:
    """Share of attention on keys at each distance under full attention, for the queries of the window's last 1/bins
    (each reads keys at every distance bin), averaged over `documents` (each (n,)): "per_head" (layers x heads x
    bins) and "mean" (bins,) over layers and heads; bin b holds distances b·n/bins … (b+1)·n/bins − 1."""
    per_head = None
    for doc in documents:
        n = doc.numel()
        m, which = _distance_bins(n, bins)
        which = which.clamp(min=0)  # future keys have probability 0: any bin will do
        maps = model.attention_maps(doc[None])  # [(1, h, n, n)] x layers, full attention
        mass = torch.stack([p[0, :, n - m:, :].double() for p in maps])  # (layers, h, m, n)
        binned = torch.zeros(*mass.shape[:3], bins, dtype=torch.float64)
        binned.scatter_add_(-1, which.expand_as(mass), mass)  # (layers, h, m, bins)
        head = binned.mean(2)  # (layers, h, bins)
        per_head = head if per_head is None else per_head + head
    per_head = per_head / len(documents)
    return {"per_head": per_head.tolist(), "mean": per_head.mean((0, 1)).tolist(), "bins": bins,
            "documents": len(documents)}


@torch.no_grad()
def far_reading(model, documents: list[torch.Tensor], test: str = "window 0.5", heads: list | None = None) -> dict:
    """How much of each head's reading lies in the keys a key test hides (e.g. "window 0.5": those more than n/2
    back), over every query that has such keys, averaged over `documents` (each (n,)), layers x heads each: "mass",
    the share of its causal attention on those keys; "change", |its contribution to the residual stream with them
    hidden (from this head alone) minus without| / |without|, its contribution being its slice of W_o times its
    attention output. Every head reads the unmodified model's layer inputs; with `heads` ([layer, head] pairs), the
    model's own with the test in those heads (KeyMasked's `heads`): does hiding their keys move the others'?"""
    mass = change = None
    for doc in documents:
        n = doc.numel()
        causal, kept = key_mask("full", n), key_mask(test, n)
        hidden = causal & ~kept  # (n, n): the keys the test hides
        rows = hidden.any(-1)  # the queries that have any
        if not rows.any():
            raise ValueError(f"{test!r} hides no key at {n} tokens")
        x = model.embed_tokens(doc[None])  # (1, n, dim)
        cos, sin = model.rope(0, n, x)
        per_mass, per_change = [], []
        for i, layer in enumerate(model.layers):
            attn = layer.self_attn
            q, k, v = attn.qkv(layer.input_layernorm(x), cos, sin)  # (1, h, n, d), (1, kv, n, d)
            probs = attention_probs(q, k, causal)[0]  # (h, n, n)
            per_mass.append((probs * hidden).sum(-1)[:, rows].double().mean(-1))  # (h,)
            out = sdpa(q, k, v, causal=True)  # (1, h, n, d)
            masked = sdpa(q, k, v, causal=False, mask=kept.to(x.device))
            w_o = rearrange(attn.o_proj.weight, "e (h d) -> h e d", h=q.shape[1])  # each head's slice of W_o
            own, without = (torch.einsum("hed,hnd->hne", w_o, o[0])[:, rows] for o in (out, masked))  # (h, m, dim)
            per_change.append(((without - own).norm(dim=-1) / own.norm(dim=-1)).double().mean(-1))
            picked = _picked(heads or [], i, q.shape[1], x.device)
            out = torch.where(picked[:, None, None], masked, out)  # the chosen heads read under the test
            x = x + attn.o_proj(rearrange(out, "b h n d -> b n (h d)"))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        m, c = torch.stack(per_mass), torch.stack(per_change)  # (layers, h)
        mass, change = (m, c) if mass is None else (mass + m, change + c)
    return {"mass": (mass / len(documents)).tolist(), "change": (change / len(documents)).tolist(), "test": test,
            "documents": len(documents), **({} if heads is None else {"heads": heads})}


@torch.no_grad()
def score_by_frequency(model, documents: list[torch.Tensor], near: int, far: int, bins: int = 16) -> dict:
    """Each rotary frequency's part of the attention score q·k/√d under full attention, for the queries of the
    window's last 1/bins, averaged over keys at distance bins < `near` ("near") and ≥ `far` ("far") and over
    `documents` (each (n,)): layers x heads x d/2 each, frequency i being the pair of dimensions (i, i + d/2) that
    rotate together (rotate-half layout; i = 0 the fastest). The parts add up to the score, and "far_minus_near" says
    which frequencies make a far key score like a near one. It holds (heads, n/bins, n, d) float64 numbers per layer:
    a diagnostic for small models (0.5 GB for the tiny model at 2048 tokens)."""
    parts = {"near": None, "far": None}
    for doc in documents:
        n = doc.numel()
        m, which = _distance_bins(n, bins)
        x = model.embed_tokens(doc[None])
        cos, sin = model.rope(0, n, x)
        per_layer = {"near": [], "far": []}
        for layer in model.layers:
            q, k, _ = layer.self_attn.qkv(layer.input_layernorm(x), cos, sin)  # (1, h, n, d), rotated
            q, k = q[0, :, n - m:].double(), repeat_kv(k, q.shape[1])[0].double()
            half = q.shape[-1] // 2
            prod = torch.einsum("hqd,hkd->hqkd", q, k) / q.shape[-1] ** 0.5  # (h, m, n, d)
            prod = prod[..., :half] + prod[..., half:]  # (h, m, n, d/2): one part per rotating pair
            for name, keep in (("near", (which >= 0) & (which < near)), ("far", which >= far)):
                per_layer[name].append(prod[:, keep].mean(1))  # (h, d/2): mean over those (query, key) pairs
            x = layer(x, cos, sin)
        for name in parts:
            got = torch.stack(per_layer[name])  # (layers, h, d/2)
            parts[name] = got if parts[name] is None else parts[name] + got
    near_, far_ = (parts[name] / len(documents) for name in ("near", "far"))
    return {"near": near_.tolist(), "far": far_.tolist(), "far_minus_near": (far_ - near_).tolist(),
            "near_bins": near, "far_bins": far, "bins": bins, "documents": len(documents)}


@torch.no_grad()
def rotary_phase(model, documents: list[torch.Tensor], pair: int | None = None, bins: int = 16) -> dict:
    """Rotary frequency `pair`'s mean query-key product C = mean(q) · conj(mean(k)) (default pair d/4: 10000^(-1/2)
    radians per position whatever d), each head's pair of dimensions (pair, pair + d/2) read as one complex number
    before rotation, over the window's last 1/bins queries and all its keys, averaged over `documents`: layers x
    heads. That frequency's part of those queries' scores at distance Δ is then, on average, |C| cos(θΔ + arg C)/√d:
    "phase" (arg C, radians) says where on that cosine the window lies and "magnitude" (|C|/√d) how much it weighs
    (rotate-half layout, θ the pair's angle per token)."""
    total, d = None, model.layers[0].self_attn.config.head_dim
    pair = d // 4 if pair is None else pair
    for doc in documents:
        n = doc.numel()
        m = n // bins
        x = model.embed_tokens(doc[None])
        cos, sin = model.rope(0, n, x)
        per_layer = []
        for layer in model.layers:
            attn, h = layer.self_attn, layer.input_layernorm(x)
            q = rearrange(attn.q_proj(h), "1 n (h d) -> h n d", d=d).double()
            k = rearrange(attn.k_proj(h), "1 n (h d) -> h n d", d=d).double()
            k = repeat_kv(k[None], q.shape[0])[0]  # (h, n, d): each query head with its key head
            qc = torch.complex(q[..., pair], q[..., pair + d // 2])[:, n - m:].mean(1)  # (h,)
            kc = torch.complex(k[..., pair], k[..., pair + d // 2]).mean(1)  # (h,)
            per_layer.append(qc * kc.conj())
            x = layer(x, cos, sin)
        got = torch.stack(per_layer)  # (layers, h)
        total = got if total is None else total + got
    c = total / len(documents)
    return {"phase": c.angle().tolist(), "magnitude": (c.abs() / d ** 0.5).tolist(), "pair": pair, "bins": bins,
            "documents": len(documents)}


@torch.no_grad()
def rotate_query_pair(model, pair: int, angles) -> None:
    """Turn every head's query at rotary frequency `pair` by angles[layer][head] radians, in place: a rotation of the
    two rows of W_q that make it, so that frequency's part of each score becomes |C| cos(θΔ + arg C + angle) and
    nothing else changes (`rotary_phase`'s C turns by the angle). W_q must be a plain (merged) nn.Linear."""
    for layer, row in zip(model.layers, angles):
        attn = layer.self_attn
        if type(attn.q_proj) is not nn.Linear:
            raise TypeError(f"rotate_query_pair needs merged weights; q_proj is a {type(attn.q_proj).__name__}")
        w, d = attn.q_proj.weight, attn.config.head_dim
        for head, angle in enumerate(row):
            a, b = head * d + pair, head * d + pair + d // 2
            c, s = torch.cos(torch.tensor(float(angle))), torch.sin(torch.tensor(float(angle)))
            w[a], w[b] = c * w[a] - s * w[b], s * w[a] + c * w[b]


def graft(model, donor: dict, names, pairs=None, heads=None) -> None:
    """Weight grafting, in place: `model` takes the `donor` state dict's value of every parameter whose name contains
    one of `names` ("q_proj", "layers.1.self_attn.k_proj", "mlp", …); with `pairs`, only the rows of W_q and W_k
    that make those rotary pairs (rows j and j + d/2 of each head, the rotate-half layout), so every other frequency
    keeps the model's own weights; with `heads` (query heads), only those heads' rows of W_q and the rows of W_k of the
    key heads they read. The donor must have the model's shapes (a fine-tuning of the same base)."""
    own = model.state_dict()  # views of the parameters: copying into them changes the model
    if any("lora_" in k for k in own):
        raise TypeError("graft needs merged weights; merge the model's LoRA first")
    chosen = [k for k in own if any(n in k for n in names)]
    if not chosen:
        raise ValueError(f"no parameter's name contains any of {list(names)}")
    d = model.config.head_dim
    for k in chosen:
        if pairs is None and heads is None:
            own[k].copy_(donor[k])
            continue
        if not k.endswith(("q_proj.weight", "k_proj.weight")):
            raise ValueError(f"rotary pairs and heads are rows of W_q and W_k only, not of {k}")
        n = own[k].shape[0] // d  # this matrix's heads: query heads, or key heads (fewer under GQA)
        per_key = model.config.n_heads // n  # query heads that read one of its heads
        hs = range(n) if heads is None else sorted({h // per_key for h in heads})
        js = range(d) if pairs is None else [j + half for j in pairs for half in (0, d // 2)]
        rows = torch.tensor([h * d + j for h in hs for j in js])
        own[k][rows] = donor[k][rows]
