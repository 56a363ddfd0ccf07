"""The code-format passkey (passkey.py): prompt shape, fitting to a length, training documents and their share of
the pretraining corpus, and the accuracy of a model that reads the key (an oracle) or does not."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from minilongllora import passkey
from minilongllora.data import ByteTokenizer, load_corpus
from minilongllora.errors import UserInputError
from minilongllora.evaluate import passkey_accuracy
from minilongllora.train import TrainConfig, load_dataset

DOCS = ["import os\nimport sys\n\n\ndef f(x):\n    return x + 1\n", "class A:\n    pass\n", "X = [1, 2, 3]\n" * 40]


def test_prompt_shape_and_determinism():
    prompt, answer = passkey.code_passkey_prompt(DOCS, 200, seed=7)
    lines = prompt.split("\n")
    key = int(answer)
    assert passkey.KEY_RANGE[0] <= key < passkey.KEY_RANGE[1] and len(answer) == 5
    assert lines[0] == f"KEY = {key}" and lines[-1] == "assert KEY == "
    filler = "\n".join(lines[1:-1]) + "\n"
    assert 200 - max(len(line) + 1 for d in DOCS for line in d.split("\n")) < len(filler) <= 200
    stream = "\n".join(DOCS * 3)
    assert filler in stream  # whole lines of real documents, in order
    assert passkey.code_passkey_prompt(DOCS, 200, 7) == (prompt, answer)
    assert passkey.code_passkey_prompt(DOCS, 200, 8) != (prompt, answer)
    assert passkey.code_passkey_prompt(DOCS, 0, 7)[0] == f"KEY = {key}\nassert KEY == "
    rng = np.random.RandomState(7)  # the key is the seed's first draw
    assert key == rng.randint(10000, 100000)


def test_fitted_prompts_are_at_most_the_target_and_within_a_line():
    tok, docs = ByteTokenizer(), load_corpus("validation")
    longest = max(len(line.encode()) + 1 for d in docs for line in d.split("\n"))
    for target in (64, 256, 1000):
        for seed in range(5):
            ids, answer = passkey.fit_code_passkey_prompt(tok, docs, target, seed)
            prompt = tok.decode(ids)
            assert len(ids) <= target and prompt.endswith("assert KEY == ")
            assert len(ids) > target - longest or len(ids) == target  # a whole line more would not fit
            assert tok.decode(answer) == re.match(r"KEY = (\d{5})\n", prompt).group(1)
    with pytest.raises(UserInputError, match="shorter than the code passkey prompt"):
        passkey.fit_code_passkey_prompt(tok, docs, 10, 0)


def test_training_documents_cover_every_distance_and_the_share_is_stated():
    docs = load_corpus("validation")
    out = passkey.training_documents(docs, 50_000, 256, seed=0)
    assert 50_000 <= sum(map(len, out)) < 50_000 + 256
    assert all(len(d) <= 256 for d in out)
    for d in out:
        m = re.fullmatch(r"KEY = (\d{5})\n(.*)assert KEY == (\d{5})\n", d, flags=re.S)
        assert m and m.group(1) == m.group(3)
    distances = [len(d) for d in out]
    assert min(distances) < 64 and max(distances) > 224  # short and long reads both trained
    assert passkey.training_documents(docs, 5_000, 256, seed=0) == out[:len(passkey.training_documents(docs, 5_000, 256,
                                                                                                      seed=0))]


def test_passkey_share_of_the_training_tokens():
    plain = load_dataset(TrainConfig(base="tiny", seq_len=256))
    mixed = load_dataset(TrainConfig(base="tiny", seq_len=256, passkey_share=0.02))
    share = 1 - plain.tokens.numel() / mixed.tokens.numel()
    assert share == pytest.approx(0.02, abs=0.001)
    text = bytes(mixed.tokens.flatten().tolist()).decode(errors="replace")
    keys, questions = len(re.findall(r"KEY = \d{5}\n", text)), text.count("assert KEY == ")
    assert questions > 100 and keys - questions in (0, 1)  # packing may cut the last document's question off
    with pytest.raises(UserInputError, match="passkey_share"):
        TrainConfig(base="tiny", passkey_share=0.02, data="tokens.bin")


class CodeOracle(nn.Module):
    """Reads KEY from the prompt and spells it after `assert KEY == ` (byte tokens); `wrong` spells the wrong key."""

    def __init__(self, wrong=False):
        super().__init__()
        self.wrong = wrong

    def forward(self, tokens, check_context=True):
        text = bytes(tokens[0].tolist()).decode()
        key = re.match(r"KEY = (\d{5})\n", text).group(1)
        key = str(int(key) + 1) if self.wrong else key
        done = text.rsplit("assert KEY == ", 1)[1]
        out = torch.full((*tokens.shape, 256), -10.0)
        out[:, -1, ord(key[len(done)] if len(done) < 5 else "\n")] = 10.0
        return out


def test_accuracy_of_an_oracle_and_of_a_wrong_key():
    tok = ByteTokenizer()
    rows = passkey_accuracy(CodeOracle(), tok, [128, 300], trials=4, progress=False, format="code")
    assert [r["accuracy"] for r in rows] == [1.0, 1.0] and all(r["length"] <= r["target"] for r in rows)
    rows = passkey_accuracy(CodeOracle(wrong=True), tok, [128], trials=4, progress=False, format="code")
    assert rows[0]["accuracy"] == 0.0
    with pytest.raises(UserInputError, match="passkey format"):
        passkey_accuracy(CodeOracle(), tok, [128], format="english", progress=False)


def test_row_placement_keeps_every_passkey_document_whole():
    plain = load_dataset(TrainConfig(base="tiny", seq_len=256))
    rows = load_dataset(TrainConfig(base="tiny", seq_len=256, passkey_share=0.02, passkey_placement="row"))
    extra = rows.tokens[plain.tokens.shape[0]:]
    assert torch.equal(rows.tokens[:plain.tokens.shape[0]], plain.tokens)  # the corpus rows are unchanged
    doc_tokens = 0
    for row in extra:
        text = bytes(row.tolist()).decode(errors="replace")
        m = re.search(r"\x00(KEY = (\d{5})\n.*?assert KEY == (\d{5})\n)\x00", text, flags=re.S)
        assert m and m.group(2) == m.group(3)  # one whole document, EOS on both sides, inside the row
        doc_tokens += len(m.group(1).encode())
    assert doc_tokens / rows.tokens.numel() == pytest.approx(0.02, abs=0.001)
    again = load_dataset(TrainConfig(base="tiny", seq_len=256, passkey_share=0.02, passkey_placement="row"))
    assert torch.equal(again.tokens, rows.tokens)
    with pytest.raises(UserInputError, match="passkey_placement"):
        TrainConfig(base="tiny", passkey_placement="middle")
