"""LongLoRA end to end, as one function: a model trained at a short context learns a 4x longer one, cheaply.

    base model (context L)  →  position interpolation (RoPE positions / 4)  →  S2-Attn + LoRA+ fine-tuning at 4L
                            →  perplexity at L, 2L and 4L with full attention, before and after

This is the README's main job (`python -m minilongllora longlora`), with the shipped tiny base model
(`data/tiny-base`, made by `python -m minilongllora pretrain` and `export`). "Before" is shown twice: the base model
as it is (past L it extrapolates RoPE to positions it never saw), and the base with position interpolation but no
fine-tuning (every position maps into the trained range, but the model never saw the squeezed angles: Chen et al.
2023 show it needs a short fine-tuning, which is what LongLoRA makes cheap). Perplexity uses the strided sliding
window (stride 256 tokens, every token scored once; evaluate.perplexity) on the first windows of the validation
split, full attention, as the paper evaluates (§4.1).
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import PRESETS
from .data import corpus_documents
from .errors import UserInputError
from .evaluate import perplexity, plot_perplexity, plot_position_loss, position_loss
from .files import write_json
from .hf import from_hf
from .recipes import RECIPES, get_recipe
from .train import check_out_dir, train
from .trainconfig import resolve_model_config


def evaluate_lengths(model, docs, lengths, *, max_windows: int, stride: int = 256) -> dict[int, float]:
    """{length: sliding-window perplexity} with full attention; past the model's context it extrapolates."""
    return {n: perplexity(model, docs, n, stride=min(stride, n), max_windows=max_windows, batch_size=4,
                          check_context=False, progress=False)["ppl"] for n in lengths}


def run_context_extension(recipe: str = "extend-tiny-4x", *, max_windows: int = 96, resume: bool = False,
                          overwrite: bool = False, **overrides) -> dict:
    """Evaluate the base, extend it with `recipe` (S2-Attn + LoRA+ + position interpolation), evaluate the result.
    Prints a table, writes `extension.json`, `extension.png` (perplexity against length) and `position_loss.png`
    (loss against position at the target length) into the run directory, and returns the numbers. `resume` and
    `overwrite` are `train`'s, for a run directory that already holds a run."""
    cfg = get_recipe(recipe, **overrides)
    if cfg.base in PRESETS:
        extensions = [name for name, r in RECIPES.items() if r.base not in PRESETS]
        raise UserInputError(f"recipe {recipe!r} is not an extension recipe (its base {cfg.base!r} is a preset, "
                             f"trained from scratch); use one of {', '.join(extensions)}")
    check_out_dir(cfg.out_dir, resume, overwrite)  # before the evaluations of the base, which take a while
    started = time.time()
    base = from_hf(cfg.base).eval()
    short = base.config.max_seq_len
    scaling = resolve_model_config(cfg)[0].rope_scaling  # the run's own RoPE: the trainer's factor rule
    factor = scaling["factor"] if scaling else 1.0
    lengths = sorted({short, 2 * short, cfg.seq_len} if cfg.seq_len >= 2 * short else {short, cfg.seq_len})
    docs = corpus_documents("validation")
    interpolated = from_hf(cfg.base, rope_scaling=scaling).eval()
    print(f"LongLoRA context extension: {cfg.base} (context {short}) -> {cfg.seq_len} tokens "
          f"(position interpolation x{factor:g}, attention {cfg.attention}/{cfg.s2_variant}, method {cfg.method})")
    rows = {"base": evaluate_lengths(base, docs, lengths, max_windows=max_windows),
            f"base + PI x{factor:g}, no fine-tuning": evaluate_lengths(interpolated, docs, lengths,
                                                                        max_windows=max_windows)}
    result = train(cfg, resume=resume, overwrite=overwrite)
    extended = from_hf(result["final"]).eval()
    rows["LongLoRA (S2-Attn + LoRA+ + PI)"] = evaluate_lengths(extended, docs, lengths, max_windows=max_windows)
    models = {"base": base, f"base + PI x{factor:g}": interpolated, "LongLoRA": extended}
    plots = _report(cfg, rows, lengths, models, docs, short, max_windows)
    summary = {"recipe": recipe, "config": cfg.to_dict(), "lengths": lengths, "perplexity": rows,
               "train_loss": result["loss"], "seconds": round(time.time() - started, 1), "plots": plots}
    write_json(Path(cfg.out_dir) / "extension.json", summary)
    print(f"plots: {', '.join(plots)}; numbers: {Path(cfg.out_dir) / 'extension.json'}; {summary['seconds']:.0f} s "
          f"in all")
    return summary


def _report(cfg, rows: dict, lengths: list[int], models: dict, docs, short: int, max_windows: int) -> list[str]:
    """Print the perplexity table; plot it against length, and the loss against position at the target length."""
    out = Path(cfg.out_dir)
    header = f"{'perplexity (validation, sliding window)':<42}" + "".join(f"{n:>10}" for n in lengths)
    table = [header] + [f"{label:<42}" + "".join(f"{ppl[n]:>10.3f}" for n in lengths) for label, ppl in rows.items()]
    print("\n".join(table))
    plot_perplexity(rows, out / "extension.png", title=f"Before and after LongLoRA: {short} -> {cfg.seq_len} tokens",
                    contexts={"base": short, list(rows)[-1]: cfg.seq_len})  # each model's training context
    curves = {label: position_loss(model, docs, cfg.seq_len, max_windows=max_windows // 4, batch_size=4,
                                   check_context=False) for label, model in models.items()}
    plot_position_loss(curves, out / "position_loss.png", title=f"Loss against position at {cfg.seq_len} tokens",
                       contexts={"base": short})
    return [str(out / "extension.png"), str(out / "position_loss.png")]
