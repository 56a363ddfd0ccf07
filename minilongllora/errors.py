"""What a user can get wrong, kept apart from what the code can get wrong.

`UserInputError` is raised for bad input: an argument, a setting, a file on disk. The command line prints it as one
line `error: ...` (exit code 2), as it does an OSError (a file the system refused); anything else is a bug and keeps
its traceback. It is a ValueError, so the Python API raises what it always raised.
"""

from __future__ import annotations

import math
import numbers


class UserInputError(ValueError):
    """Bad input (an argument, a setting, a file), reported in one line that names it."""


def finite_float(value, name: str) -> float:
    """`value` as a float; UserInputError naming `name` unless it is a finite number. NaN and infinity are refused
    here because they slip through comparisons: `nan >= 1` and `nan < 1` are both False."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserInputError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise UserInputError(f"{name} must be a finite number, got {value!r}")
    return number


def check_token_ids(tokens, vocab_size: int, source: str) -> None:
    """UserInputError naming `source` unless every id in `tokens` (a tensor, numpy array or memmap) lies in
    [0, vocab_size): an id past the embedding table means the data was made with another tokenizer."""
    if math.prod(tokens.shape) == 0:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise UserInputError(f"{source} holds token id {low if low < 0 else high}, outside the model's vocabulary "
                             f"[0, {vocab_size}): data and model use different tokenizers")
