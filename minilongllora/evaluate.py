"""Evaluation, top to bottom: perplexity (two window protocols) → loss by position → plots.

Perplexity (paper §4.2, Tables 3 and 14; App. B.1). The paper says it evaluates "using a sliding window approach
with S = 256, following Press et al. (2022)". Two readings of that are implemented, selected by `protocol`:

* "sliding" (the default): the standard strided evaluation of Press et al. (2021) and of transformers' perplexity
  guide. Windows of `seq_len` tokens start every `stride` tokens; the first window scores all its predictions
  (tokens 1 … seq_len−1), each later window scores only the tokens no earlier window scored (its last `stride`
  tokens; the final window is placed flush with the end of the stream and scores what is left), always with the whole
  window as context. ppl = exp(total NLL / tokens scored): with stride < seq_len every token after the first is scored
  exactly once, and each one (after the first window) with at least seq_len − stride tokens of context. With stride
  == seq_len the windows do not overlap and the first token of each later window has no context in its window, so
  it is not scored: the result is the plain mean loss over non-overlapping windows.
* "official": LongLoRA's `eval.py` (`get_as_batch`, `evaluate`). Window starts are
  `list(range(0, len − seq_len, stride))` with the LAST start popped (`all_ix.pop()`); each window of `seq_len`
  tokens is scored as a whole (HF `labels = x`: the mean loss over its seq_len − 1 predictions), and
  ppl = e ** (mean over windows of the window mean losses) (the official code writes `2.71828 ** mean`; we use the
  exact exp, a relative difference below 7e-7 · loss). Windows overlap, so tokens are counted up to seq_len/stride
  times, and the tail after the last window (more than `stride` tokens, because of the pop) is never scored.

The difference matters for long-context claims: in a whole-window mean most positions have little context (half of
them fewer than seq_len/2 tokens), so the official number mostly measures short-context prediction and moves little
with seq_len; the strided number scores every token with up to seq_len − 1 (at least seq_len − stride) tokens of
context, so it shows what a longer window buys. `position_loss` draws the underlying curve (loss against context).

Passkey retrieval (Figure 4) is in passkey.py.

Tokenizers: anything with `encode(text) -> list[int]` and `decode(ids) -> str` works (`data.ByteTokenizer`). A
Hugging Face tokenizer is recognised by duck typing: if its `encode` accepts `add_special_tokens` (or **kwargs), the
prompt is encoded with special tokens (Llama's BOS, as the official `tokenizer(prompt)`) and the filler without.

Models: anything called as `model(tokens (b, n), check_context=...) -> logits (b, n, vocab)`, e.g. `model.Llama`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import UserInputError

PROTOCOLS = ("sliding", "official")


# ------------------------------------------------------------------------------------------------------ helpers
def _as_documents(tokens) -> list[torch.Tensor]:
    """One 1-D token stream (tensor, numpy array or memmap such as `data.TokenFile(...).tokens`, list of ints) or a
    list of them → list of LongTensors."""
    if isinstance(tokens, (torch.Tensor, np.ndarray)) or (
            isinstance(tokens, Sequence) and len(tokens) and isinstance(tokens[0], (int, np.integer))):
        docs = [tokens]
    else:
        docs = list(tokens)
    out = []
    for i, doc in enumerate(docs):
        t = doc.long().cpu() if isinstance(doc, torch.Tensor) else torch.as_tensor(np.asarray(doc, dtype=np.int64))
        if t.ndim != 1:
            raise UserInputError(f"document {i} must be a 1-D token stream, got shape {tuple(t.shape)} (flatten packed "
                                 "rows with .reshape(-1), or pass a list of 1-D documents)")
        out.append(t)
    if not out:
        raise UserInputError("no tokens to evaluate")
    return out


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _token_nll(model, batch: torch.Tensor, check_context: bool) -> torch.Tensor:
    """(b, n) tokens → (b, n − 1) NLL of tokens 1 … n−1, each predicted from the tokens before it, in float32 (or
    float64 where the model returns float64: half-precision logits are never used for the softmax)."""
    logits = model(batch, check_context=check_context)[:, :-1]
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")


class _EvalMode:
    """`with _EvalMode(model):` eval mode inside (full attention, no dropout), the previous mode restored after."""

    def __init__(self, model):
        self.model, self.was_training = model, getattr(model, "training", False)

    def __enter__(self):
        if hasattr(self.model, "eval"):
            self.model.eval()
        return self.model

    def __exit__(self, *exc):
        if hasattr(self.model, "train"):
            self.model.train(self.was_training)


# ------------------------------------------------------------------------------------------------------ windows
def sliding_windows(n: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """Windows of the strided protocol over a stream of n tokens: (start, first scored position in the window).

    Window ends are seq_len, seq_len + stride, … and finally n; a window scores positions [previous end, its end)
    (for the first window 1 … seq_len−1), but never position 0 of a window, which has nothing to be predicted from."""
    windows, end = [(0, 1)], seq_len
    while end < n:
        new_end = min(end + stride, n)
        windows.append((new_end - seq_len, max(1, seq_len - (new_end - end))))
        end = new_end
    return windows


def official_window_starts(n: int, seq_len: int, stride: int = 256) -> list[int]:
    """The official `eval.py` `get_as_batch`: `all_ix = list(range(0, len(data) - seq_length, sliding_window))`, then
    `all_ix.pop()` (the last start dropped; on an empty list the official code would raise IndexError)."""
    return list(range(0, n - seq_len, stride))[:-1]


def _check_lengths(seq_len: int, stride: int):
    if seq_len < 2:
        raise UserInputError(f"seq_len must be ≥ 2 (a window needs one token to predict another), got {seq_len}")
    if not 1 <= stride <= seq_len:
        raise UserInputError(f"stride must be in [1, seq_len = {seq_len}], got {stride} (a longer stride would skip "
                             "tokens; for windows under 256 tokens pass e.g. stride=seq_len // 2)")


# --------------------------------------------------------------------------------------------------- perplexity
@torch.no_grad()
def perplexity(model, tokens, seq_len: int, *, stride: int = 256, protocol: str = "sliding",
               max_windows: int | None = None, batch_size: int = 1, check_context: bool = True,
               progress: bool = True) -> dict:
    """Perplexity of `model` on a token stream (1-D) or a list of documents, with windows of `seq_len` tokens.

    protocol "sliding": strided evaluation, every token scored once (see the module docstring); "official": the
    LongLoRA `eval.py` windows and whole-window mean. Documents are windowed separately (the official code windows one
    flat stream: pass the concatenated stream to match it); documents shorter than seq_len + 1 tokens are skipped and
    counted in `documents_skipped`, and a single stream that short is an error. `max_windows` keeps the first windows
    (in document order). Returns {"ppl", "loss" (the mean NLL whose exp is ppl), "tokens_scored", "windows",
    "documents", "documents_skipped", "protocol", "seq_len", "stride"}."""
    if protocol not in PROTOCOLS:
        raise UserInputError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    _check_lengths(seq_len, stride)
    if batch_size < 1:
        raise UserInputError(f"batch_size must be ≥ 1, got {batch_size}")
    if max_windows is not None and max_windows < 1:
        raise UserInputError(f"max_windows must be ≥ 1 or None, got {max_windows}")
    docs = _as_documents(tokens)
    usable = [d for d in docs if d.numel() >= seq_len + 1]
    if not usable:
        longest = max(d.numel() for d in docs)
        raise UserInputError(f"the token stream is too short: {longest} tokens, need at least seq_len + 1 = "
                             f"{seq_len + 1}")

    # (document, start, first scored position within the window)
    windows = []
    for d, doc in enumerate(usable):
        if protocol == "sliding":
            windows += [(d, s, first) for s, first in sliding_windows(doc.numel(), seq_len, stride)]
        else:
            windows += [(d, s, 1) for s in official_window_starts(doc.numel(), seq_len, stride)]
    if not windows:  # only the official rule can leave none: it needs len > seq_len + stride
        raise UserInputError(f"no official window: the official rule needs more than seq_len + stride = "
                             f"{seq_len + stride} tokens (it pops the last start), the longest document has "
                             f"{max(d.numel() for d in usable)}")
    windows = windows[:max_windows]

    device = _device(model)
    total_nll, total_tokens, window_means = 0.0, 0, []
    with _EvalMode(model), tqdm(total=len(windows), desc=f"{protocol} ppl @ {seq_len}", disable=not progress) as bar:
        for b in range(0, len(windows), batch_size):
            chunk = windows[b:b + batch_size]
            batch = torch.stack([usable[d][s:s + seq_len] for d, s, _ in chunk]).to(device)
            nll = _token_nll(model, batch, check_context).double().cpu()  # (b, seq_len − 1); column j = position j+1
            for row, (_, _, first) in zip(nll, chunk):
                scored = row[first - 1:]
                total_nll += scored.sum().item()
                total_tokens += scored.numel()
                window_means.append(scored.mean().item())
            bar.update(len(chunk))

    loss = total_nll / total_tokens if protocol == "sliding" else float(np.mean(window_means))
    return {"ppl": math.exp(loss), "loss": loss, "tokens_scored": total_tokens, "windows": len(windows),
            "documents": len(usable), "documents_skipped": len(docs) - len(usable), "protocol": protocol,
            "seq_len": seq_len, "stride": stride}


@torch.no_grad()
def position_loss(model, tokens, seq_len: int, *, max_windows: int | None = None, batch_size: int = 1,
                  check_context: bool = True, progress: bool = False) -> torch.Tensor:
    """Mean NLL at each position of non-overlapping windows of `seq_len` tokens: float32 (seq_len − 1,), entry i is
    the loss of predicting token i + 1 from i + 1 tokens of context. A model that uses long context has a curve that
    keeps falling; one that cannot (past its trained length without interpolation) rises again."""
    _check_lengths(seq_len, 1)
    docs = _as_documents(tokens)
    windows = [(d, s) for d, doc in enumerate(docs) for s in range(0, doc.numel() - seq_len + 1, seq_len)]
    if not windows:
        raise UserInputError(f"the token stream is too short: {max(d.numel() for d in docs)} tokens, need at least "
                             f"seq_len = {seq_len}")
    windows = windows[:max_windows]
    device, total = _device(model), torch.zeros(seq_len - 1, dtype=torch.float64)
    with _EvalMode(model):
        for b in tqdm(range(0, len(windows), batch_size), desc=f"position loss @ {seq_len}", disable=not progress):
            batch = torch.stack([docs[d][s:s + seq_len] for d, s in windows[b:b + batch_size]]).to(device)
            total += _token_nll(model, batch, check_context).double().sum(0).cpu()
    return (total / len(windows)).float()


# ---------------------------------------------------------------------------------------------------- tokenizers
def encode_text(tokenizer, text: str, *, add_special_tokens: bool = False) -> list[int]:
    """`tokenizer.encode(text)` as a list of ints; `add_special_tokens` is passed on only where `encode` takes it
    (Hugging Face tokenizers), so a plain encode/decode tokenizer such as ByteTokenizer works unchanged."""
    params = inspect.signature(tokenizer.encode).parameters
    takes_it = "add_special_tokens" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    ids = tokenizer.encode(text, add_special_tokens=add_special_tokens) if takes_it else tokenizer.encode(text)
    return [int(i) for i in ids]


# --------------------------------------------------------------------------------------------------------- plots
def _figure(title: str, xlabel: str, ylabel: str):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, ax, path, contexts: Mapping[str, int] | None, colors: dict[str, str]) -> Path:
    for label, ctx in (contexts or {}).items():  # dashed line at each model's training context
        ax.axvline(ctx, linestyle="--", color=colors.get(label, "gray"), alpha=0.7, label=f"{label}: trained {ctx}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_passkey(rows_by_label: Mapping[str, Sequence[dict]], path, title: str = "Passkey retrieval (Figure 4)",
                 contexts: Mapping[str, int] | None = None) -> Path:
    """Accuracy (%) against prompt length in tokens, one line per model (rows from `passkey_accuracy`), with a dashed
    vertical line at each model's training context where `contexts` gives one. Saves a PNG; returns its path."""
    fig, ax = _figure(title, "prompt length (tokens)", "accuracy (%)")
    colors = {}
    for label, rows in rows_by_label.items():
        rows = sorted(rows, key=lambda r: r["length"])
        (line,) = ax.plot([r["length"] for r in rows], [100 * r["accuracy"] for r in rows], marker="o", label=label)
        colors[label] = line.get_color()
    ax.set_ylim(-5, 105)
    return _save(fig, ax, path, contexts, colors)


def plot_perplexity(results_by_label: Mapping[str, Sequence[dict] | Mapping[int, float]], path,
                    title: str = "Perplexity against evaluation context", contexts: Mapping[str, int] | None = None,
                    logx: bool = True) -> Path:
    """Perplexity against evaluation length, one line per model (before / after fine-tuning, …). Each model's
    results are `perplexity(...)` dicts (keys "seq_len", "ppl") or a mapping {seq_len: ppl}. Saves a PNG."""
    fig, ax = _figure(title, "evaluation context (tokens)", "perplexity")
    colors = {}
    for label, results in results_by_label.items():
        pairs = results.items() if isinstance(results, Mapping) else [(r["seq_len"], r["ppl"]) for r in results]
        points = sorted(pairs)
        (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        colors[label] = line.get_color()
    if logx:
        ax.set_xscale("log", base=2)
    return _save(fig, ax, path, contexts, colors)


def plot_position_loss(curves_by_label: Mapping[str, torch.Tensor | Sequence[float]], path,
                       title: str = "Loss against context length", contexts: Mapping[str, int] | None = None) -> Path:
    """`position_loss` curves, one line per model: loss of predicting token i + 1 against i + 1 tokens of context."""
    fig, ax = _figure(title, "context (tokens)", "mean next-token loss (nats)")
    colors = {}
    for label, curve in curves_by_label.items():
        curve = torch.as_tensor(curve, dtype=torch.float32)
        (line,) = ax.plot(range(1, curve.numel() + 1), curve.tolist(), label=label)
        colors[label] = line.get_color()
    return _save(fig, ax, path, contexts, colors)


# old import paths: passkey retrieval moved to passkey.py
_MOVED = ("TASK_DESCRIPTION", "FILLER", "FINAL_QUESTION", "PASSKEY_FORMATS", "passkey_prompt", "answer_tokens",
          "fit_passkey_prompt", "passkey_accuracy")


def __getattr__(name: str):
    if name in _MOVED:
        from . import passkey

        return getattr(passkey, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
