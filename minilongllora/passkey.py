"""Passkey retrieval (§4.2, Figure 4, App. A.2): a key hidden in a long prompt, asked for at its end.

The paper's prompt: the official `passkey_retrivial.py` (`generate_prompt_landmark`, after CStanKonrad/long_llama), a
number hidden in English filler ("The grass is green..."); greedy decoding of exactly as many tokens as the answer
has, correct only on an exact token match, 10 trials per length with seeds 0…9. See `passkey_prompt` and
`passkey_accuracy` for the few deviations. Decoding uses `model.generate(tokens, max_new_tokens, check_context=...)`
(Llama's greedy KV-cache decoder) when the model has one, else a plain greedy loop of full forward passes.

The code prompt, for a model trained on code (English filler is text a model pretrained on Python source has never
seen): the same structure in the corpus' own language,

    KEY = 71432                      <- the key line: a 5-digit key
    <whole lines of real Python code, from a random line of a random document of one split>
    assert KEY == 71432              <- the question; the model must continue it with the key

scored like the paper's. The filler for evaluation comes from the validation (or test) split; `training_documents`
builds documents of the same shape from the TRAIN split, so a model is never evaluated on filler it was trained on
(the pretraining recipe mixes a stated share of them into its corpus: data/README.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import UserInputError
from .evaluate import _device, _EvalMode, encode_text

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
    if trials < 1:
        raise UserInputError(f"trials must be ≥ 1, got {trials}")
    if format not in PASSKEY_FORMATS:
        raise UserInputError(f"passkey format must be one of {PASSKEY_FORMATS}, got {format!r}")
    if format == "code":
        if filler_docs is None:
            from .data import load_corpus
            filler_docs = load_corpus("validation")
        fit = lambda target, s: fit_code_passkey_prompt(tokenizer, list(filler_docs), target, s)  # noqa: E731
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


# ---------------------------------------------------------------------------------------------------- code prompt
KEY_LINE = "KEY = {key}\n"
QUESTION = "assert KEY == "
KEY_RANGE = (10000, 100000)  # 5-digit keys


def code_filler(docs: list[str], n_chars: int, rng: np.random.RandomState) -> str:
    """Whole lines of code, at most `n_chars` characters: from a random line of a random document onward, continuing
    into the next document (in split order) when one runs out."""
    doc = int(rng.randint(len(docs)))
    lines = docs[doc].split("\n")
    start = int(rng.randint(len(lines)))
    out, size = [], 0
    for _ in range(len(docs) + 1):
        for line in lines[start:]:
            if size + len(line) + 1 > n_chars:
                return "".join(out)
            out.append(line + "\n")
            size += len(line) + 1
        doc, start = (doc + 1) % len(docs), 0
        lines = docs[doc].split("\n")
    return "".join(out)


def code_passkey_prompt(docs: list[str], n_filler: int, seed: int) -> tuple[str, str]:
    """(prompt, answer) of trial `seed`: the key line, at most `n_filler` characters of filler code, the question."""
    if n_filler < 0:
        raise UserInputError(f"n_filler must be >= 0, got {n_filler}")
    rng = np.random.RandomState(seed)
    key = int(rng.randint(*KEY_RANGE))
    return KEY_LINE.format(key=key) + code_filler(docs, n_filler, rng) + QUESTION, str(key)


def fit_code_passkey_prompt(tokenizer, docs: list[str], target: int, seed: int) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of the code passkey prompt of `seed`, as long as whole lines allow without exceeding
    `target` tokens (exact-to-a-line for the byte tokenizer, one pass; a few corrections for others)."""
    overhead = len(encode_text(tokenizer, code_passkey_prompt(docs, 0, seed)[0], add_special_tokens=True))
    if overhead > target:
        raise UserInputError(f"target length {target} is shorter than the code passkey prompt without filler "
                             f"({overhead} tokens)")
    n_chars = target - overhead
    for _ in range(8):
        prompt, answer = code_passkey_prompt(docs, n_chars, seed)
        ids = encode_text(tokenizer, prompt, add_special_tokens=True)
        if len(ids) <= target:
            return ids, answer_tokens(tokenizer, prompt, answer)
        n_chars = max(0, n_chars - math.ceil((len(ids) - target) * len(prompt) / len(ids)))
    raise UserInputError(f"could not fit the code passkey prompt of seed {seed} into {target} tokens")


def training_documents(docs: list[str], n_chars: int, max_chars: int, seed: int) -> list[str]:
    """Code-passkey documents (prompt + key + newline) of `docs` (the TRAIN split), about `n_chars` characters in all,
    each at most `max_chars` long, with filler lengths uniform over what fits: the key is read at every distance."""
    rng = np.random.RandomState(seed)
    largest = KEY_RANGE[1] - 1
    overhead = len(KEY_LINE.format(key=largest) + QUESTION + str(largest) + "\n")
    if max_chars <= overhead:
        raise UserInputError(f"code passkey documents need more than {overhead} characters, got {max_chars}")
    out, size = [], 0
    while size < n_chars:
        n_filler, trial = int(rng.randint(0, max_chars - overhead + 1)), int(rng.randint(2**31))
        prompt, answer = code_passkey_prompt(docs, n_filler, trial)
        out.append(prompt + answer + "\n")
        size += len(out[-1])
    return out
