"""Command line: `python -m minilongllora COMMAND --help`.

    longlora   the main job: the shipped tiny base extended 4x with LongLoRA, perplexity before / after, plots
    demo       a preset's parameter table and a (random-weight) generation
    pretrain   train a model (default recipe: pretrain-tiny)              } --recipe NAME, any TrainConfig field as
    extend     LongLoRA context extension (default recipe: extend-tiny-4x) } --flag (--steps 10 --seq-len 512), --resume
    eval       perplexity of a HF directory or a run at several --lengths
    passkey    passkey retrieval accuracy at several --lengths, and its plot
    merge      base HF directory + peft adapter -> HF directory with LoRA merged and the RoPE scaling kept
    export     a run's latest checkpoint -> HF directory
    flops      the paper's Table 11 (TFLOPs by kind, full attention vs S2-Attn) for a preset

Bad input (a missing file, a corrupted checkpoint, a context beyond the model's, an indivisible group size, a NaN
option, a run directory that already holds a run) prints one line `error: ...` on stderr and exits with code 2; a
diverged training run exits with code 1. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import typing
from pathlib import Path

import torch

from .errors import UserInputError, finite_float


# ------------------------------------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> None:
    """Build a model from a preset, print its parameter table, and generate from it (random weights)."""
    from .config import LlamaConfig
    from .model import Llama

    torch.manual_seed(args.seed)
    config = LlamaConfig.from_preset(args.preset)
    model = Llama(config)
    print(f"preset {args.preset!r}: {config}")
    print(model.summary())
    prompt = torch.tensor([list(args.prompt.encode())], dtype=torch.long)
    out = model.generate(prompt, args.max_new_tokens, temperature=args.temperature,
                         generator=torch.Generator().manual_seed(args.seed))
    text = bytes(out[0, prompt.shape[1]:].tolist()).decode("utf-8", errors="replace")
    print(f"generated (untrained weights, so noise): {text!r}")


# ------------------------------------------------------------------------------------------------ pretrain, extend
def _field_help() -> dict[str, str]:
    """TrainConfig's field comments (`name: type = default  # comment`), reused as --help text."""
    from .train import TrainConfig

    source = inspect.getsource(TrainConfig)
    return {m[1]: m[2].strip().replace("%", "%%") for m in re.finditer(r"^    (\w+): [^#\n]*#(.*)$", source, re.M)}


def _finite_float(text: str) -> float:
    """The argparse type of every float option: a finite number (NaN and infinity are refused)."""
    try:
        return finite_float(float(text), "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}") from None


def _parse_value(text: str):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"--model-overrides takes KEY=VALUE pairs (n_layers=2 dim=128), got {item!r}")
        out[key] = _parse_value(value)
    return out


def _optional(convert):
    def parse(text: str):
        return None if text.lower() in ("none", "auto") else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error messages
    return parse


def _add_train_fields(p: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field; flags left out keep the recipe's value (default=SUPPRESS)."""
    from .train import TrainConfig

    helps = _field_help()
    hints = typing.get_type_hints(TrainConfig)
    group = p.add_argument_group("TrainConfig fields (override the recipe)")
    for f in dataclasses.fields(TrainConfig):
        flag, kind, text = "--" + f.name.replace("_", "-"), hints[f.name], helps.get(f.name, "")
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=text)
        args = typing.get_args(kind)
        if kind is bool or (bool in args):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name == "betas":
            group.add_argument(flag, nargs=2, type=_finite_float, metavar=("BETA1", "BETA2"), **kw)
        elif f.name == "model_overrides":
            group.add_argument(flag, nargs="+", metavar="KEY=VALUE", **kw)
        else:
            base = next((t for t in (int, float, str) if kind is t or t in args), str)
            convert = _finite_float if base is float else base
            if type(None) in args:  # Optional: "none" gives None (rope_factor: automatic; precision: by device)
                kw["help"] = f"{text} ('none': None)"
                group.add_argument(flag, type=_optional(convert), metavar=base.__name__.upper(), **kw)
            else:
                group.add_argument(flag, type=convert, metavar=base.__name__.upper(), **kw)


def cmd_train(args: argparse.Namespace) -> None:
    """Train from a recipe, with any TrainConfig field overridden on the command line."""
    from .recipes import get_recipe
    from .train import TrainConfig, train

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if "model_overrides" in overrides:
        overrides["model_overrides"] = _parse_overrides(overrides["model_overrides"])
    cfg = get_recipe(args.recipe, **overrides)
    if args.show_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if result["final"] is not None:  # rank 0 only, under torchrun
        print(f"done: step {result['step']}, loss {result['loss']:.4f}; checkpoint {result['checkpoint']}; "
              f"HF model {result['final']}" + (f"; adapter {result['adapter']}" if result["adapter"] else ""))


def cmd_longlora(args: argparse.Namespace) -> None:
    """The main job: extend the shipped tiny base model 4x with LongLoRA, with perplexity before and after."""
    from .longlora import run_context_extension
    from .train import TrainConfig

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    overrides.pop("model_overrides", None)
    run_context_extension(args.recipe, max_windows=args.max_windows, resume=args.resume, overwrite=args.overwrite,
                          **overrides)


# ---------------------------------------------------------------------------------------------- loading for eval
def _rope_scaling(factor: float) -> dict | None:
    """--rope-factor F as a RoPE scaling: linear position interpolation by F, None for F = 1."""
    if factor < 1:
        raise UserInputError(f"--rope-factor must be >= 1 (1 = no interpolation), got {factor}")
    return {"rope_type": "linear", "factor": float(factor)} if factor > 1 else None


def _load_model(path: str, rope_factor: float | None = None):
    """A HF directory, or a run directory (its final/ HF model, else its latest checkpoint), in eval mode."""
    from .hf import from_hf
    from .lora import merge_lora
    from .train import find_checkpoint, load_run

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no model at {p} (expected a Hugging Face directory or a run directory)")
    overrides = {} if rope_factor is None else {"rope_scaling": _rope_scaling(rope_factor)}
    if (p / "config.json").is_file():
        return from_hf(p, **overrides).eval()
    if (p / "final" / "config.json").is_file():
        return from_hf(p / "final", **overrides).eval()
    if find_checkpoint(p) is not None:
        model, _, _ = load_run(p)
        merge_lora(model)
        if overrides:
            model.config = model.config.replace(**overrides)  # RoPE is computed from the model's config
        return model.eval()
    raise FileNotFoundError(f"{p} holds neither config.json (a Hugging Face model) nor final/ or checkpoint/ (a run)")


def _check_lengths(model, lengths: list[int], extrapolate: bool) -> None:
    cfg = model.config
    for n in lengths:
        if n < 2:
            raise UserInputError(f"--lengths must be >= 2 tokens, got {n}")
        if n > cfg.max_seq_len and cfg.rope_scaling is None and not extrapolate:
            raise UserInputError(f"length {n} exceeds the model's context of {cfg.max_seq_len} tokens and it has no "
                                 f"RoPE scaling: pass --rope-factor F (position interpolation) or --extrapolate")


def _eval_tokens(data: str, split: str, vocab_size: int):
    """Documents of the pystdlib split (each windowed separately), or the flat stream of a token .bin whose ids are
    checked against the model's vocabulary."""
    import numpy as np

    from .data import ByteTokenizer, load_corpus, load_token_bin
    from .errors import check_token_ids

    if data == "pystdlib":
        tok = ByteTokenizer()
        docs = [torch.from_numpy(tok.encode_array(doc).astype(np.int64)) for doc in load_corpus(split)]
        for doc in docs:
            check_token_ids(doc, vocab_size, f"the pystdlib {split} split (byte tokens)")
        return docs
    tokens = load_token_bin(data).tokens
    check_token_ids(tokens, vocab_size, data)
    return tokens


def cmd_eval(args: argparse.Namespace) -> None:
    """Perplexity of a model (HF directory or run directory) at each --lengths, full attention."""
    from .evaluate import perplexity, plot_perplexity

    model = _load_model(args.path, args.rope_factor)
    _check_lengths(model, args.lengths, args.extrapolate)
    tokens = _eval_tokens(args.data, args.split, model.config.vocab_size)
    rows = []
    for n in args.lengths:
        r = perplexity(model, tokens, n, stride=min(args.stride, n), protocol=args.protocol,
                       max_windows=args.max_windows, check_context=not args.extrapolate, progress=args.progress)
        rows.append(r)
        if not args.json:
            print(f"length {n:>7}  ppl {r['ppl']:10.4f}  loss {r['loss']:.4f}  windows {r['windows']}  "
                  f"tokens {r['tokens_scored']}  ({r['protocol']}, stride {r['stride']})")
    if args.plot:
        plot_perplexity({args.label or Path(args.path).name: rows}, args.plot)
    if args.json:
        print(json.dumps(rows))


def cmd_passkey(args: argparse.Namespace) -> None:
    """Passkey retrieval accuracy (Figure 4) of a model at each --lengths (prompt tokens), optionally plotted."""
    from .data import ByteTokenizer, load_hf_tokenizer
    from .evaluate import passkey_accuracy, plot_passkey

    model = _load_model(args.path, args.rope_factor)
    _check_lengths(model, args.lengths, args.extrapolate)
    if args.tokenizer:
        tokenizer = load_hf_tokenizer(args.tokenizer)
    elif model.config.vocab_size == 256:
        tokenizer = ByteTokenizer()
    else:
        tokenizer = load_hf_tokenizer(args.path)
    filler = None
    if args.format == "code":
        from .data import load_corpus
        filler = load_corpus(args.split)
    rows = passkey_accuracy(model, tokenizer, args.lengths, trials=args.trials, seed=args.seed,
                            check_context=not args.extrapolate, progress=args.progress, format=args.format,
                            filler_docs=filler)
    if args.plot:
        plot_passkey({args.label or Path(args.path).name: rows}, args.plot)
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"target {r['target']:>7}  length {r['length']:9.1f}  accuracy {100 * r['accuracy']:5.1f}%  "
                  f"({r['trials']} trials)")


# ----------------------------------------------------------------------------------------------- merge, export
def _dtype(name: str | None):
    return {None: None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def cmd_merge(args: argparse.Namespace) -> None:
    """Base HF directory + peft adapter directory -> HF directory with LoRA merged, config.json keeping the RoPE
    scaling (from --rope-factor, else from the run the adapter came from: ADAPTER/../run.json)."""
    from .config import read_json
    from .hf import from_hf, to_hf
    from .lora import load_peft_adapter, merge_lora

    adapter = Path(args.adapter)
    if args.rope_factor is not None:
        scaling, source = _rope_scaling(args.rope_factor), "--rope-factor"
    elif (adapter.parent / "run.json").is_file():
        source = str(adapter.parent / "run.json")
        run = read_json(source)
        if not isinstance(run, dict) or "rope_scaling" not in run:
            raise UserInputError(f"{source} has no rope_scaling: not a minilongllora run.json (pass --rope-factor)")
        scaling = run["rope_scaling"]
    else:
        scaling, source = "base", None
    model = from_hf(args.base) if scaling == "base" else from_hf(args.base, rope_scaling=scaling)
    if source is None:
        print(f"note: no --rope-factor and no run.json next to {adapter}: keeping the base's RoPE setting "
              f"{model.config.rope_scaling}", file=sys.stderr)
    load_peft_adapter(model, adapter)
    merge_lora(model)
    path = to_hf(model, args.out, dtype=_dtype(args.dtype))
    print(f"merged {adapter} into {args.base} -> {path} (RoPE scaling {model.config.rope_scaling}"
          + (f", from {source})" if source else ")"))


def cmd_export(args: argparse.Namespace) -> None:
    """A run directory's latest checkpoint -> HF directory (LoRA merged; RoPE scaling in config.json)."""
    from .hf import to_hf
    from .lora import merge_lora
    from .train import load_run

    model, cfg, state = load_run(args.run)
    merge_lora(model)
    path = to_hf(model.eval(), args.out, dtype=_dtype(args.dtype))
    print(f"exported {args.run} (step {state['step']}, {cfg.method}) -> {path} "
          f"(RoPE scaling {model.config.rope_scaling})")


def cmd_flops(args: argparse.Namespace) -> None:
    """TFLOPs of one forward pass by kind at each --context, full attention vs S2-Attn (the paper's Table 11)."""
    from .config import LlamaConfig
    from .flops import flops_breakdown, format_flops_table

    config = LlamaConfig.from_preset(args.preset)
    ratio = args.group_size_ratio
    if ratio is not None and not 0 < ratio <= 1:
        raise UserInputError(f"--group-size-ratio must be in (0, 1], got {ratio}")
    rows = [flops_breakdown(config, n, group_size_ratio=ratio) for n in args.context]
    print(json.dumps(rows) if args.json else format_flops_table(rows))


def cmd_reproduce(args: argparse.Namespace) -> None:
    """Re-run one of the paper's tables or figures at CPU scale and write OUT/NAME.json (minilongllora/reproduce.py).
    Runs are cached under --cache-dir by their exact TrainConfig, so tables that share a setting share the run.
    --quick checks the mechanics in seconds (2 steps, tiny evaluations, short contexts): OUT/NAME.quick.json."""
    from .reproduce import reproduce, result_path

    reproduce(args.name, quick=args.quick, seeds=args.seeds, out=args.out, base=args.base, cache_dir=args.cache_dir,
              precision=args.precision)
    print(f"results: {result_path(args.out, args.name, args.quick)}")


# ---------------------------------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported like every other bad input: one line `error: ...`, exit code 2."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m minilongllora", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, **kw):
        p = sub.add_parser(name, help=func.__doc__.splitlines()[0], description=func.__doc__, **kw)
        p.set_defaults(func=func)
        return p

    p = command("demo", cmd_demo)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--prompt", default="def main(")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=_finite_float, default=1.0)
    p.add_argument("--seed", type=int, default=0)

    from .recipes import RECIPES

    for name, default in (("pretrain", "pretrain-tiny"), ("extend", "extend-tiny-4x")):
        p = command(name, cmd_train)
        p.add_argument("--recipe", default=default, help=f"one of {', '.join(RECIPES)} (default {default})")
        p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint, exactly")
        p.add_argument("--overwrite", action="store_true", help="start again in an OUT_DIR that holds a run (its "
                       "run.json, metrics.jsonl, checkpoint/, adapter/ and final/ are deleted)")
        p.add_argument("--show-config", action="store_true", help="print the resolved TrainConfig and exit")
        _add_train_fields(p)

    p = command("longlora", cmd_longlora)
    p.add_argument("--recipe", default="extend-tiny-4x", help="an extension recipe (default extend-tiny-4x)")
    p.add_argument("--max-windows", type=int, default=96, help="validation windows per evaluation length")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    p.add_argument("--out-dir", default=None, help="override the recipe's run directory")
    p.add_argument("--base", default=None, help="override the recipe's base model directory")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="override the recipe's training precision (bf16: CPU bf16 autocast, the recipe's default)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT_DIR (then evaluate as usual)")
    p.add_argument("--overwrite", action="store_true", help="start again in an OUT_DIR that holds a run")

    def model_args(p, lengths_default):
        p.add_argument("path", help="a Hugging Face directory, or a run directory (its final/ or checkpoint/)")
        p.add_argument("--lengths", type=int, nargs="+", default=lengths_default, help="context lengths in tokens")
        p.add_argument("--rope-factor", type=_finite_float, default=None,
                       help="load with linear position interpolation by this factor (1 = none; default: as saved)")
        p.add_argument("--extrapolate", action="store_true",
                       help="allow lengths beyond the context of a model without RoPE scaling")
        p.add_argument("--json", action="store_true", help="print only a JSON list of results")
        p.add_argument("--plot", default=None, help="save a PNG plot here")
        p.add_argument("--label", default=None, help="the model's name in the plot")
        p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())

    p = command("eval", cmd_eval)
    model_args(p, [256, 512, 1024])
    p.add_argument("--protocol", choices=("sliding", "official"), default="sliding")
    p.add_argument("--stride", type=int, default=256, help="window stride (capped at the length)")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--data", default="pystdlib", help="'pystdlib' or a token .bin file (official eval layout)")
    p.add_argument("--split", choices=("validation", "test"), default="test", help="pystdlib split")

    p = command("passkey", cmd_passkey)
    model_args(p, [256, 512, 1024])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="HF tokenizer directory (default: bytes for vocab 256)")
    p.add_argument("--format", choices=("paper", "code"), default="paper",
                   help="paper: Figure 4's English prompt; code: a key line, real code, `assert KEY == ` (passkey.py)")
    p.add_argument("--split", choices=("validation", "test"), default="validation",
                   help="pystdlib split whose code is the filler of --format code")

    p = command("merge", cmd_merge)
    p.add_argument("--base", required=True, help="base Hugging Face directory")
    p.add_argument("--adapter", required=True, help="peft adapter directory (a run's adapter/)")
    p.add_argument("--out", required=True, help="output Hugging Face directory")
    p.add_argument("--rope-factor", type=_finite_float, default=None, help="linear RoPE factor for config.json")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="default: the weights' dtype")

    p = command("export", cmd_export)
    p.add_argument("run", help="a run directory (holding checkpoint/)")
    p.add_argument("--out", required=True, help="output Hugging Face directory")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="default: the weights' dtype")

    from .config import PRESETS

    p = command("flops", cmd_flops)
    p.add_argument("--preset", default="llama2-7b", choices=list(PRESETS))
    p.add_argument("--context", type=int, nargs="+", required=True, help="context lengths in tokens")
    p.add_argument("--group-size-ratio", type=_finite_float, default=None, help="S2-Attn group / context (default 1/4)")
    p.add_argument("--json", action="store_true", help="print only a JSON list, one object per context")

    import textwrap

    from . import reproduce as rep

    p = command("reproduce", cmd_reproduce, formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="tables:\n" + "\n".join(textwrap.fill(d, 118, initial_indent=f"  {n:<9}",
                                                              subsequent_indent=" " * 11)
                                                for n, d in rep.DESCRIPTIONS.items())
                + f"\n\nestimated full-run times (1 seed, 2 quiet cores; budget: {rep.STEPS} steps x "
                  f"{rep.TOKENS_PER_STEP} tokens per run):\n" + rep.estimate_text())
    p.add_argument("name", help=f"one of {', '.join(rep.TABLES)}")
    p.add_argument("--quick", action="store_true", help="a couple of steps, 1-2 eval windows, short contexts: the "
                   "mechanics in seconds; writes NAME.quick.json")
    p.add_argument("--seeds", type=int, default=1, help="repeat every row with seeds 0..N-1 (default 1)")
    p.add_argument("--out", default="notebooks/results", help="folder for NAME.json (default notebooks/results)")
    p.add_argument("--base", default=rep.DEFAULT_BASE, help=f"base HF directory (default {rep.DEFAULT_BASE})")
    p.add_argument("--cache-dir", default=rep.DEFAULT_CACHE, help=f"trained runs and their evaluations, reused "
                   f"across tables and invocations (default {rep.DEFAULT_CACHE})")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=rep.PRECISION,
                   help=f"training precision of every run (default {rep.PRECISION}: bf16 autocast)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from .train import TrainingDiverged

    try:
        args.func(args)
    except TrainingDiverged as e:  # one line, exit 1: the run itself went wrong, the input was fine
        print(f"error: {e}".replace("\n", " "), file=sys.stderr)
        sys.exit(1)
    # bad input, or a file the system refused (missing, unreadable, disk full): one line. Any other exception is a
    # bug and keeps its traceback.
    except (UserInputError, OSError) as e:
        print(f"error: {e}".replace("\n", " "), file=sys.stderr)
        sys.exit(2)
