"""Command line: `python -m minilongllora COMMAND --help`."""

from __future__ import annotations

import argparse
import sys

import torch


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minilongllora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--prompt", default="def main(")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
