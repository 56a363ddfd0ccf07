"""A passkey test for a model trained on code: a key at the top of real code, the question at the end.

The paper's passkey prompt (Figure 4, `evaluate.passkey_prompt`) hides a number in English filler ("The grass is
green..."), text a model pretrained on Python source has never seen. This prompt has the same structure in the
corpus' own language:

    KEY = 71432                      <- the key line: a 5-digit key
    <whole lines of real Python code, from a random line of a random document of one split>
    assert KEY == 71432              <- the question; the model must continue it with the key

scored like the paper's: greedy decoding of as many tokens as the key has, correct only on an exact match. The
filler for evaluation comes from the validation (or test) split; `training_documents` builds documents of the same
shape from the TRAIN split, so a model is never evaluated on filler it was trained on (the pretraining recipe mixes
a stated share of them into its corpus: data/README.md).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import UserInputError

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
    from .evaluate import answer_tokens, encode_text

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
        prompt, answer = code_passkey_prompt(docs, int(rng.randint(0, max_chars - overhead + 1)), int(rng.randint(2**31)))
        out.append(prompt + answer + "\n")
        size += len(out[-1])
    return out
