"""Data: byte tokenizer, the shipped corpus and manifest, packing, token .bin files, resumable batches, HF tokenizer."""

import hashlib
import json
import lzma
import statistics

import numpy as np
import pytest
import torch

from minilongllora.data import (CORPUS_ROOT, SPLITS, ByteTokenizer, PackedDataset, TokenFile, corpus_file,
                                corpus_tokens, load_corpus, load_hf_tokenizer, load_jsonl_texts, load_token_bin, pack,
                                pack_tokens, read_jsonl, write_token_bin)
from minilongllora.evaluate import official_window_starts


# ------------------------------------------------------------------------------------------------------ tokenizer
@pytest.mark.parametrize("text", ["", "def f(x):\n    return x\n", "héllo wörld — ∑ 日本語 🐍", "\t\r\n~"])
def test_byte_tokenizer_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text
    assert tok.decode(np.array(ids)) == text


def test_byte_tokenizer_nul_and_broken_utf8():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 and tok.eos_id == 0
    with pytest.raises(ValueError, match="NUL"):
        tok.encode("a\0b")
    assert tok.decode([0xE2, 0x82]) == "\ufffd"  # a cut multi-byte character decodes with a replacement character


# -------------------------------------------------------------------------------------------------------- packing
def test_pack_separates_documents_with_eos_and_drops_tail():
    tok = ByteTokenizer()
    docs = ["abcde", "fg", "hijklmn"]  # stream: abcde␀fg␀hijklmn = 5 + 1 + 2 + 1 + 7 = 16 tokens
    rows = pack(docs, 6, tok)
    assert rows.dtype == torch.long and rows.shape == (2, 6)  # 16 // 6 = 2 rows; the 4-token tail "klmn" is dropped
    assert rows[0].tolist() == [*b"abcde", 0]
    assert rows[1].tolist() == [*b"fg", 0, *b"hij"]
    assert (rows == tok.eos_id).sum() == 2
    assert pack(docs, 4, tok).shape == (4, 4)  # exact multiple: nothing dropped
    assert torch.equal(pack(docs, 6), rows)  # byte tokenizer by default
    with pytest.raises(ValueError, match="not enough"):
        pack(docs, 17, tok)


def test_pack_tokens_accepts_arrays_and_tensors():
    flat = np.arange(10, dtype=np.uint16)
    rows = pack_tokens(flat, 3)
    assert rows.dtype == torch.long and rows.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert torch.equal(pack_tokens(torch.arange(10), 3), rows)
    assert torch.equal(pack_tokens(list(range(10)), 3), rows)


# --------------------------------------------------------------------------------------------------------- corpus
def test_corpus_splits_disjoint_long_and_match_manifest():
    manifest = json.loads((CORPUS_ROOT / "manifest.json").read_text())
    paths = {}
    for split in SPLITS:
        entry, path = manifest["splits"][split], corpus_file(split)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        records = list(read_jsonl(path))
        paths[split] = {r["path"] for r in records}
        lengths = [len(r["text"].encode("utf-8")) for r in records]
        assert len(records) == entry["documents"] > 0 and sum(lengths) == entry["text_bytes"]
        assert min(lengths) >= manifest["selection"]["min_bytes"]
        assert statistics.median_low(lengths) >= 8000, f"{split}: median document {statistics.median_low(lengths)} B"
        assert all("\0" not in r["text"] for r in records)
    assert not paths["train"] & paths["validation"] and not paths["train"] & paths["test"]
    assert not paths["validation"] & paths["test"]
    assert len(paths["train"]) > 5 * (len(paths["validation"]) + len(paths["test"]))  # about 90 / 5 / 5
    assert (CORPUS_ROOT / "LICENSE-PSF.txt").read_text().count("PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2") == 1


def test_corpus_loaders():
    docs = load_corpus("validation")
    assert docs == load_jsonl_texts(corpus_file("validation")) and all(isinstance(d, str) for d in docs)
    rows = corpus_tokens("validation", 1024)
    total = sum(len(d.encode("utf-8")) for d in docs) + len(docs) - 1
    assert rows.shape == (total // 1024, 1024) and rows.dtype == torch.long
    assert bytes(rows[0].tolist()) == docs[0].encode("utf-8")[:1024]


def test_corpus_missing_gives_rebuild_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_corpus.py") as err:
        load_corpus("train", root=tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(ValueError, match="split"):
        load_corpus("dev")


def test_jsonl_texts_gz_xz_plain(tmp_path):
    import gzip

    lines = "".join(json.dumps({"text": t, "meta": {}}) + "\n" for t in ["one", "twö", "three"])
    (tmp_path / "a.jsonl").write_text(lines, encoding="utf-8")
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "a.jsonl.xz").write_bytes(lzma.compress(lines.encode()))
    for name in ["a.jsonl", "a.jsonl.gz", "a.jsonl.xz"]:
        assert load_jsonl_texts(tmp_path / name) == ["one", "twö", "three"]


# ------------------------------------------------------------------------------------------------ token .bin files
def test_token_bin_round_trip(tmp_path):
    tokens = np.random.randint(0, 32001, size=1000)  # Llama vocabulary + [PAD], as the official eval uses
    path = write_token_bin(tmp_path / "sub" / "test.bin", tokens)
    assert path.stat().st_size == 2000 and not list(path.parent.glob("*.tmp"))
    tf = load_token_bin(path)
    assert isinstance(tf, TokenFile) and isinstance(tf.tokens, np.memmap) and tf.tokens.dtype == np.uint16
    assert len(tf) == 1000 and np.array_equal(tf[:], tokens) and tf[3] == tokens[3]
    assert tf.sequences(300).tolist() == torch.as_tensor(tokens[:900]).reshape(3, 300).tolist()
    assert official_window_starts(len(tf), 256, 256) == [0, 256]  # range(0, 744, 256) = [0, 256, 512], last dropped
    write_token_bin(tmp_path / "t32.bin", torch.tensor([70000, 1]), dtype=np.uint32)
    assert load_token_bin(tmp_path / "t32.bin", dtype=np.uint32)[:].tolist() == [70000, 1]


def test_token_bin_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        load_token_bin(tmp_path / "missing.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_token_bin(tmp_path / "empty.bin")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(ValueError, match="3 bytes, not a multiple of 2"):
        load_token_bin(tmp_path / "odd.bin")
    with pytest.raises(ValueError, match="outside uint16"):
        write_token_bin(tmp_path / "big.bin", [1, 65536])
    assert not (tmp_path / "big.bin").exists()


# -------------------------------------------------------------------------------------------------------- batches
def test_packed_dataset_is_deterministic_and_covers_each_epoch():
    rows = torch.arange(10 * 4).reshape(10, 4)
    ds, same, other = PackedDataset(rows, seed=3), PackedDataset(rows, seed=3), PackedDataset(rows, seed=4)
    assert len(ds) == 10 and ds.seq_len == 4
    for step in [0, 1, 7, 2, 0]:  # any order, any instance: a resumed run sees the same batches
        assert torch.equal(ds.batch(step, 3), same.batch(step, 3))
        assert ds.batch(step, 3).shape == (3, 4)
    assert not all(torch.equal(ds.batch(s, 3), other.batch(s, 3)) for s in range(4))
    for batch_size in [2, 3]:  # 10 % 3 != 0: batches straddle epochs, but each epoch still has every row once
        seen = torch.cat([ds.indices(s, batch_size) for s in range(30 // batch_size)]).reshape(3, 10)
        for epoch in range(3):
            assert sorted(seen[epoch].tolist()) == list(range(10))
        assert not torch.equal(seen[0], seen[1])  # a fresh permutation each epoch
    # batch 3 (samples 9, 10, 11) straddles epochs 0 and 1: the last row of epoch 0, then the first two of epoch 1
    assert ds.indices(3, 3).tolist() == [ds.permutation(0)[9], ds.permutation(1)[0], ds.permutation(1)[1]]
    assert torch.equal(ds.batch(1, 3), rows[ds.indices(1, 3)])
    g = torch.Generator().manual_seed(3)
    assert torch.equal(ds.indices(0, 10), torch.randperm(10, generator=g))


# ----------------------------------------------------------------------------------------- Hugging Face tokenizers
def test_hf_tokenizer_loads_locally_and_packs(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["import os", "def main ( ) : return os . getcwd ( )"],
                            trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(tmp_path / "tok")

    hf = load_hf_tokenizer(tmp_path / "tok")
    ids = hf.encode("import os", add_special_tokens=False)
    assert len(ids) == 2 and hf.unk_token_id not in ids and hf.decode(ids) == "import os"
    rows = pack(["import os", "def main"], 5, hf)
    assert rows.tolist() == [[*ids, hf.eos_token_id, *hf.encode("def main", add_special_tokens=False)]]
    with pytest.raises(FileNotFoundError, match="no tokenizer directory"):
        load_hf_tokenizer(tmp_path / "nope")
