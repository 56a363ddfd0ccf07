"""Evaluation, top to bottom: perplexity (two window protocols) → loss by position → passkey retrieval → plots.

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

Passkey retrieval (§4.2, Figure 4, App. A.2): the official `passkey_retrivial.py` (`generate_prompt_landmark`, after
CStanKonrad/long_llama), greedy decoding of exactly as many tokens as the answer has, correct only on an exact token
match, 10 trials per length with seeds 0…9. See `passkey_prompt` and `passkey_accuracy` for the few deviations.

Tokenizers: anything with `encode(text) -> list[int]` and `decode(ids) -> str` works (`data.ByteTokenizer`). A
Hugging Face tokenizer is recognised by duck typing: if its `encode` accepts `add_special_tokens` (or **kwargs), the
prompt is encoded with special tokens (Llama's BOS, as the official `tokenizer(prompt)`) and the filler without.

Models: anything called as `model(tokens (b, n), check_context=...) -> logits (b, n, vocab)`, e.g. `model.Llama`.
Passkey decoding uses `model.generate(tokens, max_new_tokens, check_context=...)` (Llama's greedy KV-cache decoder)
when the model has one, else a plain greedy loop of full forward passes.
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


# ------------------------------------------------------------------------------------------------ passkey prompt
TASK_DESCRIPTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                    "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
FINAL_QUESTION = "What is the pass key? The pass key is"


def _filler(n_chars: int) -> str:
    """The filler sentence repeated (joined by spaces) and cut to n_chars characters (official: 5000 repeats)."""
    return " ".join([FILLER] * max(5000, n_chars // (len(FILLER) + 1) + 1))[:n_chars]


def passkey_prompt(n_garbage: int, seed: int) -> tuple[str, str]:
    """The official `generate_prompt_landmark(n_garbage, seed)` → (prompt, answer).

    Same RNG draws in the same order: numpy's legacy generator seeded with `seed`, n_prefix = randint(0, n_garbage),
    then pass_key = randint(1, 50000) (so 1 … 49999); `RandomState(seed)` gives the numbers `np.random.seed(seed)`
    gives, without touching the global state (the official code saves and restores it). As in the official code the
    prefix is the first n_prefix characters of the filler and the suffix the first n_garbage − n_prefix characters
    (both cut from the START of the filler, so the suffix restarts the sentence cycle). Lines are joined by "\\n".
    Deviations: the answer is " {k}" with its leading space (the official returns "{k}" and relies on Llama's
    tokenizer prefixing "▁"; see `passkey_accuracy`), n_garbage = 0 is allowed (numpy's randint(0, 0) raises), and
    the filler is not capped at 5000 repeats (≈ 445k characters; the text is identical below that)."""
    if n_garbage < 0:
        raise UserInputError(f"n_garbage must be ≥ 0, got {n_garbage}")
    rng = np.random.RandomState(seed)
    n_prefix = int(rng.randint(0, n_garbage)) if n_garbage > 0 else 0
    n_suffix = n_garbage - n_prefix
    garbage = _filler(n_garbage)
    pass_key = int(rng.randint(1, 50000))
    information_line = f"The pass key is {pass_key}. Remember it. {pass_key} is the pass key."
    lines = [TASK_DESCRIPTION, garbage[:n_prefix], information_line, garbage[:n_suffix], FINAL_QUESTION]
    return "\n".join(lines), f" {pass_key}"


def answer_tokens(tokenizer, prompt: str, answer: str) -> list[int]:
    """The tokens a model must generate after `prompt` to say `answer`: encode(prompt + answer) minus encode(prompt)
    where the second is a prefix of the first (for Llama this is "▁", digits…, exactly the official
    `tokenizer(answer).input_ids[:, 1:]`), else `answer` encoded on its own without special tokens."""
    p = encode_text(tokenizer, prompt, add_special_tokens=True)
    full = encode_text(tokenizer, prompt + answer, add_special_tokens=True)
    if len(full) > len(p) and full[:len(p)] == p:
        return full[len(p):]
    return encode_text(tokenizer, answer, add_special_tokens=False)


def fit_passkey_prompt(tokenizer, target: int, seed: int, chars_per_token: float | None = None
                       ) -> tuple[list[int], list[int]]:
    """(prompt token ids, answer token ids) for the passkey prompt of `seed` whose length is as close to `target`
    tokens as the filler allows without exceeding it: n_garbage starts at (target − prompt overhead) ×
    chars-per-token of the filler, is corrected a few times by the measured gap, then trimmed until it fits."""
    if chars_per_token is None:
        sample = _filler(4000)
        chars_per_token = len(sample) / len(encode_text(tokenizer, sample))

    def build(n_garbage: int):
        prompt, answer = passkey_prompt(n_garbage, seed)
        return n_garbage, encode_text(tokenizer, prompt, add_special_tokens=True), prompt, answer

    n, ids, prompt, answer = build(0)
    if len(ids) > target:
        raise UserInputError(f"target length {target} is shorter than the passkey prompt without filler ({len(ids)} "
                             "tokens)")
    n, ids, prompt, answer = build(int((target - len(ids)) * chars_per_token))
    for _ in range(4):  # correct by the measured gap (exact in one step for a byte tokenizer)
        step = int((target - len(ids)) * chars_per_token)
        if step == 0:
            break
        n, ids, prompt, answer = build(max(0, n + step))
    while len(ids) > target and n > 0:  # trim: never longer than the target
        n, ids, prompt, answer = build(max(0, n - max(1, math.ceil((len(ids) - target) * chars_per_token))))
    return ids, answer_tokens(tokenizer, prompt, answer)


def _greedy(model, ids: torch.Tensor, max_new_tokens: int, check_context: bool) -> list[int]:
    """The `max_new_tokens` greedy continuation of ids (1, n): `model.generate` if the model has it, else argmax
    over full forward passes."""
    if hasattr(model, "generate"):
        out = model.generate(ids, max_new_tokens, check_context=check_context)
        return out[0, ids.shape[1]:].tolist()
    for _ in range(max_new_tokens):
        next_token = model(ids, check_context=check_context)[:, -1].float().argmax(-1)
        ids = torch.cat([ids, next_token[:, None]], dim=1)
    return ids[0, -max_new_tokens:].tolist()


PASSKEY_FORMATS = ("paper", "code")


@torch.no_grad()
def passkey_accuracy(model, tokenizer, lengths: Sequence[int], trials: int = 10, *, seed: int = 0,
                     check_context: bool = True, progress: bool = True, format: str = "paper",
                     filler_docs: Sequence[str] | None = None) -> list[dict]:
    """Passkey retrieval accuracy at each target prompt length in TOKENS (Figure 4, official `passkey_retrivial.py`).

    For each length, `trials` prompts with seeds seed … seed + trials − 1 (official: 10 trials, seeds 0 … 9), each
    fitted to the target length (`fit_passkey_prompt`; the official code instead sets n_garbage = int(3.75 · length
    // 1024 · 1024) characters, a ratio tuned to Llama's tokenizer); greedy decoding of exactly len(answer tokens)
    tokens; correct iff they equal the answer tokens. The prompt is at most `target` tokens; decoding adds the answer's
    few tokens on top (keep target + ~6 within the model's context, or pass check_context=False to let a model
    without RoPE scaling extrapolate, as Figure 4's Llama2 curve does). `format="code"` uses the code prompt of
    `passkey.py` instead (key line, filler of real code from `filler_docs`, default the pystdlib validation split,
    and `assert KEY == `). Returns one row per length: {"length": mean prompt length in tokens, "target",
    "accuracy" (fraction in [0, 1]), "trials"}."""
    from . import passkey

    if trials < 1:
        raise UserInputError(f"trials must be ≥ 1, got {trials}")
    if format not in PASSKEY_FORMATS:
        raise UserInputError(f"passkey format must be one of {PASSKEY_FORMATS}, got {format!r}")
    if format == "code":
        if filler_docs is None:
            from .data import load_corpus
            filler_docs = load_corpus("validation")
        fit = lambda target, s: passkey.fit_code_passkey_prompt(tokenizer, list(filler_docs), target, s)  # noqa: E731
    else:
        sample = _filler(4000)
        chars_per_token = len(sample) / len(encode_text(tokenizer, sample))  # estimated once
        fit = lambda target, s: fit_passkey_prompt(tokenizer, target, s, chars_per_token)  # noqa: E731
    device, rows = _device(model), []
    with _EvalMode(model), tqdm(total=len(lengths) * trials, desc="passkey", disable=not progress) as bar:
        for target in lengths:
            correct, total_tokens = 0, 0
            for trial in range(trials):
                ids, answer = fit(target, seed + trial)
                generated = _greedy(model, torch.tensor([ids], device=device), len(answer), check_context)
                correct += generated == answer
                total_tokens += len(ids)
                bar.update(1)
            rows.append({"length": total_tokens / trials, "target": target, "accuracy": correct / trials,
                         "trials": trials})
    return rows


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
