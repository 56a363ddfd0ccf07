"""Data, top to bottom: byte tokenizer → shipped long-document corpus → packing → token .bin files → batches.

The corpus (`data/pystdlib`, built by `data/build_corpus.py`, PSF License) is the long `.py` files of CPython's
standard library: long documents with long-range structure (imports at the top used far below, names defined once
and reused), a small stand-in for the paper's PG19 / proof-pile that is on every machine and ships in git.

Packing follows LongLoRA's official `fine-tune.py` (`tokenize_fn`): documents joined with the EOS token,
concatenated, and cut into rows of the context length. Evaluation data follows the official `eval.py`: a flat
`np.memmap(path, dtype=np.uint16, mode="r")` of Llama token ids (PG19 `validation.bin`/`test.bin`, proof-pile
`test_sampled_data.bin`). References: Chen et al. 2023 (LongLoRA, arXiv 2309.12307), github.com/dvlab-research/LongLoRA.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from . import passkey
from .errors import UserInputError, check_token_ids
from .files import atomic_write

CORPUS_ROOT = Path(__file__).resolve().parent.parent / "data" / "pystdlib"
REBUILD = "python data/build_corpus.py"
SPLITS = ("train", "validation", "test")


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocab 256). NUL (id 0) is the end-of-document token: it never occurs in source text,
    and `encode` refuses text that contains it rather than silently mixing it up with a document boundary."""

    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(self.encode_array(text))

    def encode_array(self, text: str) -> np.ndarray:
        """The same ids as a uint8 array (fast path used by `pack`)."""
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        if (ids == self.eos_id).any():
            raise UserInputError("text contains a NUL byte, which ByteTokenizer reserves as the end-of-document token")
        return ids

    def decode(self, ids) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return bytes(ids).decode("utf-8", errors="replace")


def load_hf_tokenizer(path: str | os.PathLike):
    """A Hugging Face tokenizer from a local directory only (`AutoTokenizer(..., local_files_only=True)`)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer directory at {path} (expected a local folder with tokenizer.json or "
                                "tokenizer.model and tokenizer_config.json; nothing is downloaded)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


# ---------------------------------------------------------------------------------------------- documents (jsonl)
def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The JSON objects of a `.jsonl`, `.jsonl.gz` or `.jsonl.xz` file (RedPajama: one {"text": ...} per line);
    UserInputError naming the file and the line where it is not JSON, truncated or corrupted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield json.loads(line)
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path}, line {number}: not valid JSON ({e})") from None
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as e:  # gzip.BadGzipFile is an OSError
        raise UserInputError(f"cannot read {path}: truncated or corrupted after {number} lines ({e})") from None


def load_jsonl_texts(path: str | os.PathLike, key: str = "text") -> list[str]:
    """The documents of a RedPajama-style jsonl(.gz/.xz) file (the official fine-tuning data's `text` field)."""
    texts = []
    for i, record in enumerate(read_jsonl(path), 1):
        if not isinstance(record, dict) or not isinstance(record.get(key), str):
            raise UserInputError(f"{path}: record {i} has no text field {key!r}")
        texts.append(record[key])
    return texts


def corpus_file(split: str, root: str | os.PathLike | None = None) -> Path:
    """Path of a split of the shipped corpus; FileNotFoundError with the rebuild command if it is absent."""
    if split not in SPLITS:
        raise UserInputError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(root if root is not None else CORPUS_ROOT) / f"{split}.jsonl.xz"
    if not path.is_file():
        raise FileNotFoundError(f"corpus split not found: {path}; rebuild it with `{REBUILD}` from the repo root")
    return path


def load_corpus(split: str, root: str | os.PathLike | None = None) -> list[str]:
    """The documents (file texts, in sorted-path order) of a split of `data/pystdlib`: train, validation or test."""
    path = corpus_file(split, root)
    docs = load_jsonl_texts(path)
    if not docs:
        raise UserInputError(f"corpus split {path} holds no documents; rebuild it with `{REBUILD}` from the repo "
                             "root")
    return docs


def corpus_documents(split: str = "validation") -> list[torch.Tensor]:
    """A split of the shipped corpus as byte-token documents, each a 1-D LongTensor (each evaluated on its own)."""
    tok = ByteTokenizer()
    return [torch.from_numpy(tok.encode_array(doc).astype(np.int64)) for doc in load_corpus(split)]


# ---------------------------------------------------------------------------------------------------------- packing
def pack_tokens(tokens, seq_len: int) -> torch.Tensor:
    """A flat 1-D token array (numpy, memmap, list or tensor) cut into rows: LongTensor (len // seq_len, seq_len).

    The incomplete tail (len % seq_len tokens) is dropped, so no row holds padding."""
    if seq_len < 1:
        raise UserInputError(f"seq_len must be positive, got {seq_len}")
    flat = torch.as_tensor(np.asarray(tokens, dtype=np.int64)).reshape(-1)
    rows = flat.numel() // seq_len
    if rows == 0:
        raise UserInputError(f"only {flat.numel()} tokens: not enough for one sequence of {seq_len}")
    return flat[: rows * seq_len].reshape(rows, seq_len).clone()


def _encode(tokenizer, doc: str) -> np.ndarray:
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.encode_array(doc)
    return np.asarray(tokenizer.encode(doc, add_special_tokens=False), dtype=np.int64)  # a Hugging Face tokenizer


def pack(docs: Sequence[str], seq_len: int, tokenizer=None) -> torch.Tensor:
    """Documents → LongTensor (num_seqs, seq_len), as the official `fine-tune.py` `tokenize_fn` does.

    `doc₀ EOS doc₁ EOS … docₙ` is tokenized as one stream and cut into rows of `seq_len`; rows cross document
    boundaries and the EOS token marks them. Two differences from the official code, both deliberate: it pads the
    last row of each 1000-document map batch with [PAD] (`pad_to_multiple_of=model_max_length`), here the
    incomplete tail is DROPPED (at most seq_len - 1 tokens), so every token is real text or EOS; and it prepends one
    BOS per map batch (Llama tokenizer), here no BOS is added (`add_special_tokens=False` for HF tokenizers).
    `tokenizer` defaults to ByteTokenizer; a Hugging Face tokenizer must have an eos_token."""
    tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
    eos = tokenizer.eos_id if isinstance(tokenizer, ByteTokenizer) else tokenizer.eos_token_id
    if eos is None:
        raise UserInputError("the tokenizer has no EOS token to separate documents")
    if not docs:
        raise UserInputError("no documents to pack")
    sep = np.array([eos], dtype=np.int64)
    parts = []
    for i, doc in enumerate(docs):
        if i:
            parts.append(sep)
        parts.append(_encode(tokenizer, doc).astype(np.int64))
    return pack_tokens(np.concatenate(parts), seq_len)


def corpus_tokens(split: str, seq_len: int, tokenizer=None, root: str | os.PathLike | None = None) -> torch.Tensor:
    """A split of the shipped corpus, packed: LongTensor (num_seqs, seq_len), byte tokenizer by default."""
    return pack(load_corpus(split, root), seq_len, tokenizer)


# ------------------------------------------------------------------------------------- token .bin (official layout)
class TokenFile:
    """A flat file of token ids, memory-mapped read-only: the official evaluation layout (`eval.py`:
    `np.memmap(data_path, dtype=np.uint16, mode="r")`; uint16 holds Llama's 32k vocabulary)."""

    def __init__(self, path: str | os.PathLike, dtype=np.uint16):
        self.path, self.dtype = Path(path), np.dtype(dtype)
        if not self.path.is_file():
            raise FileNotFoundError(f"no token file at {self.path}")
        size = self.path.stat().st_size
        if size == 0:
            raise UserInputError(f"token file {self.path} is empty")
        if size % self.dtype.itemsize:
            raise UserInputError(f"token file {self.path} has {size} bytes, not a multiple of {self.dtype.itemsize} "
                                 f"({self.dtype.name}): truncated, or written with another dtype")
        self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index):
        return self.tokens[index]

    def sequences(self, seq_len: int) -> torch.Tensor:
        """Non-overlapping rows (num, seq_len), tail dropped (see `pack_tokens`)."""
        return pack_tokens(self.tokens, seq_len)


def load_token_bin(path: str | os.PathLike, dtype=np.uint16) -> TokenFile:
    """Open a token .bin (see TokenFile); clear errors for a missing, empty or truncated file."""
    return TokenFile(path, dtype)


def write_token_bin(path: str | os.PathLike, tokens, dtype=np.uint16) -> Path:
    """Write token ids as a flat binary file of `dtype`, atomically (temp file in the same folder, then rename)."""
    path, dtype = Path(path), np.dtype(dtype)
    arr = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens).reshape(-1)
    if arr.size == 0:
        raise UserInputError("no tokens to write")
    info = np.iinfo(dtype)
    if arr.min() < info.min or arr.max() > info.max:
        raise UserInputError(f"token ids span [{arr.min()}, {arr.max()}], outside {dtype.name} [{info.min}, "
                             f"{info.max}]")
    atomic_write(path, lambda tmp: tmp.write_bytes(arr.astype(dtype).tobytes()))
    return path


# ---------------------------------------------------------------------------------------------------------- batches
class PackedDataset:
    """Packed rows served in deterministic batches, for exact resume: `batch(step, batch_size)` depends only on
    (seed, step, batch_size). Sample k = step·batch_size + j is row perm_e[k mod N] of epoch e = k // N, where perm_e
    is `torch.randperm(N)` under `torch.Generator().manual_seed(seed + e)`; so each epoch visits every row exactly
    once, and a batch may straddle two epochs (no row is skipped). A resumed run only needs the step counter."""

    def __init__(self, tokens: torch.Tensor, seed: int = 0):
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            raise UserInputError(f"expected a non-empty (num_seqs, seq_len) tensor, got shape {tuple(tokens.shape)}")
        self.tokens, self.seed = tokens.long(), int(seed)
        self._perms: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(len(self), generator=generator)
        return self._perms[epoch]

    def indices(self, step: int, batch_size: int) -> torch.Tensor:
        """The row indices of batch `step`."""
        if step < 0 or batch_size < 1:
            raise UserInputError(f"need step >= 0 and batch_size >= 1, got {step}, {batch_size}")
        n = len(self)
        samples = range(step * batch_size, (step + 1) * batch_size)
        return torch.stack([self.permutation(k // n)[k % n] for k in samples])

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """LongTensor (batch_size, seq_len)."""
        return self.tokens[self.indices(step, batch_size)]


class TokenFileRows(PackedDataset):
    """PackedDataset's batches (same permutations, same `batch(step, batch_size)`) read lazily from a memory-mapped
    token file, so a billion-token RedPajama .bin is never copied into RAM (PackedDataset holds a tensor)."""

    def __init__(self, path: str, seq_len: int, seed: int):
        self.file, self._seq_len, self.seed, self._perms = load_token_bin(path), seq_len, int(seed), {}
        self.rows = len(self.file) // seq_len
        if self.rows == 0:
            raise UserInputError(f"{path} holds {len(self.file)} tokens, fewer than one sequence of {seq_len}")

    def __len__(self) -> int:
        return self.rows

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        n = self._seq_len
        rows = [np.asarray(self.file.tokens[i * n:(i + 1) * n], dtype=np.int64) for i in self.indices(step, batch_size)]
        return torch.from_numpy(np.stack(rows))


def passkey_rows(docs: list[str], share: float, seq_len: int, seed: int) -> torch.Tensor:
    """Rows of `seq_len` byte tokens, each holding ONE whole code-passkey document (passkey.py) at a random offset,
    with real code of `docs` before and after it (EOS between): passkey documents are `share` of all tokens of
    `docs` packed plus these rows. So a read of any length is trained whole (packed end to end, a document of length
    L is cut by a row boundary with probability about L / seq_len)."""
    rng, tok = np.random.RandomState(seed + 1), ByteTokenizer()
    n_real, rows, doc_tokens = sum(len(d.encode()) for d in docs), [], 0
    stream = tok.encode_array("\n".join(docs)).astype(np.int64)
    while doc_tokens < share * (n_real + len(rows) * seq_len):
        (doc,) = passkey.training_documents(docs, 1, seq_len - 2, seed=int(rng.randint(2**31)))
        ids = tok.encode_array(doc).astype(np.int64)
        if len(ids) > seq_len - 2:  # multi-byte characters made it longer than its characters: draw another
            continue
        before = int(rng.randint(0, seq_len - len(ids) - 1))
        start = int(rng.randint(0, len(stream) - seq_len))
        row = np.concatenate([stream[start:start + before], [tok.eos_id], ids, [tok.eos_id],
                              stream[start + before:start + seq_len]])[:seq_len]
        rows.append(row)
        doc_tokens += len(ids)
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, seq_len, dtype=torch.long)


def training_rows(data: str, seq_len: int, seed: int, vocab_size: int | None = None,
                  passkey_share: float = 0.0, passkey_placement: str = "packed") -> PackedDataset:
    """The training rows of `data` ("pystdlib" or a token .bin file), pystdlib with `passkey_share` of its tokens in
    code-passkey documents (passkey.py), packed with the corpus or each whole in its own row (`passkey_placement`
    "row": `passkey_rows`); with `vocab_size`, every token id of the data is checked against it first."""
    if data == "pystdlib" and passkey_share and passkey_placement == "row":
        docs = load_corpus("train")
        dataset = PackedDataset(torch.cat([pack(docs, seq_len), passkey_rows(docs, passkey_share, seq_len, seed)]),
                                seed=seed)
        tokens = dataset.tokens
    elif data == "pystdlib" and passkey_share:
        docs = load_corpus("train")
        n_real = sum(len(d.encode()) for d in docs)
        extra = passkey.training_documents(docs, round(n_real * passkey_share / (1 - passkey_share)), seq_len,
                                           seed=seed)
        dataset = PackedDataset(pack(docs + extra, seq_len), seed=seed)
        tokens = dataset.tokens
    elif data == "pystdlib":
        dataset = PackedDataset(corpus_tokens("train", seq_len), seed=seed)
        tokens = dataset.tokens
    elif not Path(data).is_file():
        raise FileNotFoundError(f"data {data!r} is neither 'pystdlib' nor a token .bin file")
    else:
        dataset = TokenFileRows(data, seq_len, seed)
        tokens = dataset.file.tokens
    if vocab_size is not None:
        check_token_ids(tokens, vocab_size, f"data {data}")
    return dataset


def validation_windows(eval_data: str | None, seq_len: int, windows: int, vocab_size: int | None = None,
                       source: str = "pystdlib") -> torch.Tensor:
    """The first `windows` windows of seq_len tokens of the validation data: the token .bin `eval_data`, or
    pystdlib's validation split if it is None; with `vocab_size`, their token ids are checked against it. `source`
    names the data in that message."""
    if eval_data is not None:
        tokens = load_token_bin(eval_data).tokens
        n = min(windows, len(tokens) // seq_len)
        if n == 0:
            raise UserInputError(f"eval_data {eval_data} holds fewer than seq_len = {seq_len} tokens")
        rows = torch.from_numpy(np.asarray(tokens[:n * seq_len], dtype=np.int64)).view(n, seq_len)
    else:
        rows = corpus_tokens("validation", seq_len)[:windows]
    if vocab_size is not None:
        check_token_ids(rows, vocab_size, f"validation data {eval_data or source}")
    return rows
