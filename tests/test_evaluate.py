"""Tests for evaluate.py: perplexity protocols on stub models with known log-probabilities, a real tiny Llama against
a hand computation, the passkey prompt and scoring, errors, and plots."""

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from minilongllora.config import LlamaConfig
from minilongllora.evaluate import (FINAL_QUESTION, TASK_DESCRIPTION, fit_passkey_prompt, official_window_starts,
                                    passkey_accuracy, passkey_prompt, perplexity, plot_passkey, plot_perplexity,
                                    plot_position_loss, position_loss, sliding_windows)
from minilongllora.model import Llama, lm_loss

try:
    from minilongllora.data import ByteTokenizer
except ImportError:  # the data module is written separately: an inline byte tokenizer with the same interface
    class ByteTokenizer:
        vocab_size, eos_id = 256, 0

        def encode(self, text):
            return list(text.encode("utf-8"))

        def decode(self, ids):
            return bytes(list(ids)).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------------- stubs
class Stub(nn.Module):
    """Same call signature as Llama; records every batch it is asked to score."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.calls, self.modes = vocab, [], []

    def forward(self, tokens, check_context=True):
        self.calls.append(tokens.clone())
        self.modes.append(self.training)
        return self.logits(tokens)


class Uniform(Stub):
    def logits(self, tokens):
        return torch.zeros(*tokens.shape, self.vocab, dtype=torch.float64)  # float64 so 1e-6 checks are exact


class NextToken(Stub):
    """Predicts token x + 1 (mod V) after x with probability p(i), the rest spread uniformly; i = position in the
    window, so the loss depends on how much context the window gives (p constant unless a schedule is given)."""

    def __init__(self, vocab, p=0.9, schedule=None):
        super().__init__(vocab)
        self.p, self.schedule = p, schedule

    def prob(self, i):
        return self.schedule(i) if self.schedule else self.p

    def logits(self, tokens):
        b, n = tokens.shape
        p = torch.tensor([self.prob(i) for i in range(n)], dtype=torch.float64)
        out = torch.log((1 - p) / (self.vocab - 1))[None, :, None].expand(b, n, self.vocab).clone()
        out.scatter_(2, ((tokens + 1) % self.vocab)[..., None], torch.log(p)[None, :, None].expand(b, n, 1))
        return out


class Weighted(Stub):
    """Context-free: logits are a fixed random vector c, so the NLL of a target token j is logsumexp(c) − c_j."""

    def __init__(self, vocab, seed=0):
        super().__init__(vocab)
        self.c = torch.randn(vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2

    def nll(self, j):
        return (torch.logsumexp(self.c, 0) - self.c[j]).item()

    def logits(self, tokens):
        return self.c.expand(*tokens.shape, self.vocab)


# ------------------------------------------------------------------------------------------------- perplexity
@pytest.mark.parametrize("protocol", ["sliding", "official"])
def test_uniform_model_has_perplexity_vocab(protocol):
    tokens = torch.randint(0, 50, (3000,))
    out = perplexity(Uniform(50), tokens, 512, protocol=protocol, batch_size=3, progress=False)
    assert out["ppl"] == pytest.approx(50, abs=1e-6)


@pytest.mark.parametrize("protocol", ["sliding", "official"])
def test_model_right_with_prob_p_has_perplexity_one_over_p(protocol):
    tokens = torch.arange(1500) % 37
    out = perplexity(NextToken(37, p=0.8), tokens, 128, stride=100, protocol=protocol, progress=False)
    assert out["ppl"] == pytest.approx(1 / 0.8, abs=1e-6)


def test_sliding_windows_cover_every_token_once():
    for n, seq_len, stride in [(20, 8, 3), (1000, 256, 256), (1001, 256, 256), (257, 256, 1), (3000, 512, 256),
                               (513, 512, 7)]:
        scored = [s + i for s, first in sliding_windows(n, seq_len, stride) for i in range(first, seq_len)]
        windows = sliding_windows(n, seq_len, stride)
        assert all(0 <= s and s + seq_len <= n for s, _ in windows)
        assert windows[-1][0] == n - seq_len
        assert len(scored) == len(set(scored))
        if stride < seq_len:  # every token after the first, exactly once
            assert sorted(scored) == list(range(1, n))
    assert sliding_windows(20, 8, 3) == [(0, 1), (3, 5), (6, 5), (9, 5), (12, 5)]


def test_sliding_scores_every_token_once_with_the_right_context():
    n, seq_len, stride = 300, 64, 20
    tokens = torch.arange(n)  # unique tokens: a window's tokens are its absolute positions
    # 1) context-free, random weights per token: the total equals the sum over tokens 1..n-1, each once
    stub = Weighted(n)
    out = perplexity(stub, tokens, seq_len, stride=stride, batch_size=4, progress=False)
    assert out["tokens_scored"] == n - 1
    expected = sum(stub.nll(t) for t in range(1, n)) / (n - 1)
    assert out["loss"] == pytest.approx(expected, abs=1e-9)
    # 2) the windows asked for: seq_len tokens, starts every `stride`, the last one flush with the end
    starts = [int(w[0]) for batch in stub.calls for w in batch]
    assert all(batch.shape[1] == seq_len for batch in stub.calls)
    assert starts == list(range(0, n - seq_len, stride)) + [n - seq_len]
    # 3) context-dependent confidence: brute force, each target scored in the first window that contains it,
    #    with context = its distance from that window's start
    stub = NextToken(n + 1, schedule=lambda i: 0.5 + 0.49 * i / seq_len)
    out = perplexity(stub, tokens, seq_len, stride=stride, progress=False)
    nll = []
    for t in range(1, n):
        start = next(s for s in starts if s + seq_len > t)
        nll.append(-math.log(0.5 + 0.49 * (t - start - 1) / seq_len))
    assert out["ppl"] == pytest.approx(math.exp(np.mean(nll)), abs=1e-9)
    assert out["windows"] == len(starts)


def test_official_windows_and_whole_window_mean():
    # hand computation: range(0, 2000 - 512, 256) = 0, 256, 512, 768, 1024, 1280; the official code pops 1280
    assert official_window_starts(2000, 512, 256) == [0, 256, 512, 768, 1024]
    assert official_window_starts(512 + 256, 512, 256) == []  # range → [0], popped
    n, seq_len = 2000, 512
    tokens = torch.arange(n)
    stub = Weighted(n, seed=1)
    out = perplexity(stub, tokens, seq_len, protocol="official", batch_size=2, progress=False)
    starts = [int(w[0]) for batch in stub.calls for w in batch]
    assert starts == [0, 256, 512, 768, 1024]
    window_means = [np.mean([stub.nll(t) for t in range(s + 1, s + seq_len)]) for s in starts]
    assert out["ppl"] == pytest.approx(math.exp(np.mean(window_means)), rel=1e-9)
    assert out["windows"] == 5 and out["tokens_scored"] == 5 * 511
    # the whole-window mean weights short contexts as much as long ones: it differs from the strided value
    stub = NextToken(n + 1, schedule=lambda i: 0.5 + 0.49 * i / seq_len)
    official = perplexity(stub, tokens, seq_len, protocol="official", progress=False)["ppl"]
    sliding = perplexity(stub, tokens, seq_len, protocol="sliding", progress=False)["ppl"]
    assert official == pytest.approx(math.exp(np.mean([-math.log(0.5 + 0.49 * i / seq_len) for i in range(511)])))
    assert sliding < official


def test_documents_max_windows_and_mode_restored():
    docs = [torch.arange(100) % 11, torch.arange(10), torch.arange(70) % 11]
    stub = NextToken(11, p=0.5).train()
    out = perplexity(stub, docs, 32, stride=16, progress=False)
    assert out["documents"] == 2 and out["documents_skipped"] == 1
    assert out["tokens_scored"] == 99 + 69 and out["ppl"] == pytest.approx(2.0, abs=1e-6)
    assert stub.training and not any(stub.modes)  # eval inside, train mode restored
    stub.calls.clear()
    out = perplexity(stub, docs, 32, stride=16, max_windows=3, progress=False)
    assert out["windows"] == 3 and len(stub.calls) == 3 and out["tokens_scored"] == 31 + 16 + 16


def test_real_llama_stride_equal_seq_len_is_mean_loss_of_windows():
    model = Llama(LlamaConfig.from_preset("tiny", n_layers=1, dim=64, n_heads=4, n_kv_heads=4, ffn_dim=128))
    seq_len, tokens = 64, torch.randint(1, 256, (4 * 64,))
    out = perplexity(model, tokens, seq_len, stride=seq_len, batch_size=2, progress=False)
    with torch.no_grad():
        windows = tokens.view(4, seq_len)
        expected = lm_loss(model.eval()(windows), windows).item()
    assert out["tokens_scored"] == 4 * (seq_len - 1)
    assert out["loss"] == pytest.approx(expected, abs=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    curve = position_loss(model, tokens, seq_len)
    assert curve.shape == (seq_len - 1,) and curve.mean().item() == pytest.approx(expected, abs=1e-5)
    # past the trained context (256) without RoPE scaling: refused unless check_context=False (Fig. 4's base curve)
    long = torch.randint(1, 256, (400,))
    with pytest.raises(ValueError, match="exceed"):
        perplexity(model, long, 300, progress=False)
    assert math.isfinite(perplexity(model, long, 300, check_context=False, progress=False)["ppl"])


def test_position_loss_follows_the_context_schedule():
    stub = NextToken(30, schedule=lambda i: 0.3 + 0.01 * i)
    curve = position_loss(stub, torch.arange(200) % 30, 50, max_windows=3)
    assert len(stub.calls) == 3
    assert torch.allclose(curve.double(), torch.tensor([-math.log(0.3 + 0.01 * i) for i in range(49)],
                                                       dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(seq_len=1), "seq_len"), (dict(seq_len=64, stride=0), "stride"), (dict(seq_len=64, stride=65), "stride"),
    (dict(seq_len=200, stride=16), "too short"), (dict(seq_len=64, protocol="nope"), "protocol"),
    (dict(seq_len=150, stride=50, protocol="official"), "official"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        perplexity(Uniform(10), torch.zeros(200, dtype=torch.long), progress=False, **kwargs)


# ----------------------------------------------------------------------------------------------------- passkey
def test_passkey_prompt_format_and_determinism():
    prompt, answer = passkey_prompt(1000, seed=3)
    lines = prompt.split("\n")
    assert len(lines) == 5 and lines[0] == TASK_DESCRIPTION and lines[-1] == FINAL_QUESTION
    assert lines[0].startswith("There is an important info hidden inside a lot of irrelevant text.")
    assert lines[-1] == "What is the pass key? The pass key is"
    k = int(answer)
    assert answer == f" {k}" and 1 <= k < 50000
    assert lines[2] == f"The pass key is {k}. Remember it. {k} is the pass key."
    assert len(lines[1]) + len(lines[3]) == 1000
    sentence = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    filler = " ".join([sentence] * 20)
    assert filler.startswith(lines[1]) and filler.startswith(lines[3])  # both cut from the start, as official
    assert passkey_prompt(1000, 3) == (prompt, answer) and passkey_prompt(1000, 4) != (prompt, answer)
    # the official RNG order: np.random.seed(seed); randint(0, n_garbage); randint(1, 50000)
    rng = np.random.RandomState(3)
    assert len(lines[1]) == rng.randint(0, 1000) and k == rng.randint(1, 50000)
    assert passkey_prompt(0, 1)[0].split("\n")[1] == ""


class Oracle(Stub):
    """Reads the pass key from the prompt and spells ' {key}' after the final question (byte tokens)."""

    def logits(self, tokens):
        text = bytes(tokens[0].tolist()).decode()
        key = re.search(r"The pass key is (\d+)\. Remember it", text).group(1)
        done = text.rsplit(FINAL_QUESTION, 1)[1]
        target = f" {key}"[len(done)] if len(done) < len(key) + 1 else "\n"
        out = torch.full((*tokens.shape, self.vocab), -10.0)
        out[:, -1, ord(target)] = 10.0
        return out


class Garbage(Stub):
    def logits(self, tokens):
        out = torch.zeros(*tokens.shape, self.vocab)
        out[..., ord("x")] = 5.0
        return out


def test_passkey_accuracy_oracle_and_garbage():
    tok = ByteTokenizer()
    rows = passkey_accuracy(Oracle(256), tok, [300, 800], trials=3, seed=5, progress=False)
    assert [r["accuracy"] for r in rows] == [1.0, 1.0] and [r["target"] for r in rows] == [300, 800]
    assert all(r["trials"] == 3 and abs(r["length"] - r["target"]) <= 0.02 * r["target"] for r in rows)
    rows = passkey_accuracy(Garbage(256), tok, [300], trials=3, progress=False)
    assert rows[0]["accuracy"] == 0.0


def test_passkey_lengths_fit_the_target():
    tok = ByteTokenizer()
    for target in (250, 1000, 4000):
        for seed in range(3):
            ids, answer = fit_passkey_prompt(tok, target, seed)
            assert target * 0.98 <= len(ids) <= target
            assert bytes(answer).decode().strip().isdigit() and bytes(answer).decode()[0] == " "
    with pytest.raises(ValueError, match="shorter"):
        fit_passkey_prompt(tok, 50, 0)


class HFLikeTokenizer:
    """A Hugging Face-like tokenizer: BOS (id 1) with add_special_tokens=True, characters → ids offset by 2."""

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + [ord(c) + 2 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 2) for i in ids if i > 1)


def test_passkey_with_hf_style_tokenizer_and_real_llama():
    tok = HFLikeTokenizer()
    ids, answer = fit_passkey_prompt(tok, 300, 0)
    assert ids[0] == 1 and len(ids) == 300  # BOS kept on the prompt, as the official tokenizer(prompt)
    assert re.fullmatch(r" \d+", tok.decode(answer)) and 1 not in answer  # no BOS in the answer tokens
    assert tok.decode(ids).endswith(FINAL_QUESTION)
    model = Llama(LlamaConfig.from_preset("tiny", n_layers=1, dim=64, n_heads=4, n_kv_heads=4, ffn_dim=128))
    rows = passkey_accuracy(model.train(), ByteTokenizer(), [250], trials=2, progress=False)  # + ≤ 6 answer tokens
    assert rows[0]["trials"] == 2 and 0.0 <= rows[0]["accuracy"] <= 1.0 and 245 <= rows[0]["length"] <= 250
    assert model.training


# ------------------------------------------------------------------------------------------------------- plots
def test_plots_write_png(tmp_path):
    rows = {"base": [{"length": 100, "accuracy": 1.0}, {"length": 300, "accuracy": 0.2}],
            "longlora": [{"length": 100, "accuracy": 1.0}, {"length": 300, "accuracy": 0.9}]}
    paths = [plot_passkey(rows, tmp_path / "passkey.png", contexts={"base": 128, "longlora": 512}),
             plot_perplexity({"base": {256: 9.0, 512: 30.0}, "longlora": [{"seq_len": 256, "ppl": 9.1},
                                                                          {"seq_len": 512, "ppl": 8.5}]},
                             tmp_path / "ppl.png", contexts={"base": 256}),
             plot_position_loss({"base": torch.linspace(3, 2, 50)}, tmp_path / "sub" / "pos.png")]
    for p in paths:
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
