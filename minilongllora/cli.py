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
import sys
import typing

from .commands import (cmd_demo, cmd_eval, cmd_export, cmd_flops, cmd_longlora, cmd_merge, cmd_passkey,
                       cmd_reproduce, cmd_train)
from .errors import UserInputError, finite_float


# ------------------------------------------------------------------------------------------------ TrainConfig flags
def _field_help() -> dict[str, str]:
    """TrainConfig's field help (its `metadata["help"]`), reused as --help text."""
    from .trainconfig import TrainConfig

    return {f.name: f.metadata.get("help", "").replace("%", "%%") for f in dataclasses.fields(TrainConfig)}


def _finite_float(text: str) -> float:
    """The argparse type of every float option: a finite number (NaN and infinity are refused)."""
    try:
        return finite_float(float(text), "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}") from None


def _optional(convert):
    def parse(text: str):
        return None if text.lower() in ("none", "auto") else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error messages
    return parse


def _add_train_fields(p: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field; flags left out keep the recipe's value (default=SUPPRESS)."""
    from .trainconfig import TrainConfig

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

    _add_training(command)
    _add_model_commands(command)
    _add_reproduce(command)
    return parser


def _add_training(command) -> None:
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
    p.add_argument("--lr", type=float, default=None, help="override the recipe's peak learning rate")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT_DIR (then evaluate as usual)")
    p.add_argument("--overwrite", action="store_true", help="start again in an OUT_DIR that holds a run")


def _add_model_commands(command) -> None:
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


class _HelpWithEstimates(argparse.Action):
    """--help of `reproduce`: the help, then the estimated full-run times, computed only when they are asked for."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="show this help message and the estimated full-run times, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from .reproduce import STEPS, TOKENS_PER_STEP
        from .reproduce.cost import estimate_text

        parser.print_help()
        print(f"\nestimated full-run times (1 seed, 2 quiet cores; budget: {STEPS} steps x {TOKENS_PER_STEP} tokens "
              f"per run):\n{estimate_text()}")
        parser.exit()


def _add_reproduce(command) -> None:
    import textwrap

    from . import reproduce as rep

    p = command("reproduce", cmd_reproduce, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False,
                epilog="tables:\n" + "\n".join(textwrap.fill(d, 118, initial_indent=f"  {n:<9}",
                                                              subsequent_indent=" " * 11)
                                                for n, d in rep.DESCRIPTIONS.items()))
    p.add_argument("-h", "--help", action=_HelpWithEstimates)
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
