"""What each command of `python -m minilongllora` does (cli.py builds the parser and reports errors)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from .errors import UserInputError


# ------------------------------------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> None:
    """Build a model from a preset, print its parameter table, and generate from it (random weights)."""
    from .config import LlamaConfig
    from .lora import format_parameter_report
    from .model import Llama

    torch.manual_seed(args.seed)
    config = LlamaConfig.from_preset(args.preset)
    model = Llama(config)
    print(f"preset {args.preset!r}: {config}")
    print(format_parameter_report(model))
    prompt = torch.tensor([list(args.prompt.encode())], dtype=torch.long)
    out = model.generate(prompt, args.max_new_tokens, temperature=args.temperature,
                         generator=torch.Generator().manual_seed(args.seed))
    text = bytes(out[0, prompt.shape[1]:].tolist()).decode("utf-8", errors="replace")
    print(f"generated (untrained weights, so noise): {text!r}")


# ------------------------------------------------------------------------------------------------ pretrain, extend
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


def cmd_train(args: argparse.Namespace) -> None:
    """Train from a recipe, with any TrainConfig field overridden on the command line."""
    from .recipes import get_recipe
    from .train import train
    from .trainconfig import TrainConfig

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
    from .trainconfig import TrainConfig

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    overrides.pop("model_overrides", None)
    run_context_extension(args.recipe, max_windows=args.max_windows, resume=args.resume, overwrite=args.overwrite,
                          **overrides)


# ---------------------------------------------------------------------------------------------- loading for eval
def _rope_scaling(factor: float) -> dict | None:
    """--rope-factor F as a RoPE scaling: linear position interpolation by F, None for F = 1."""
    from .rope import linear_scaling

    if factor < 1:
        raise UserInputError(f"--rope-factor must be >= 1 (1 = no interpolation), got {factor}")
    return linear_scaling(factor)


def _load_model(path: str, rope_factor: float | None = None):
    """A HF directory, or a run directory (its final/ HF model, else its latest checkpoint), in eval mode."""
    from .checkpoint import find_checkpoint, load_run
    from .hf import from_hf
    from .lora import merge_lora

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
    from .data import corpus_documents, load_token_bin
    from .errors import check_token_ids

    if data == "pystdlib":
        docs = corpus_documents(split)
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
    from .evaluate import plot_passkey
    from .passkey import passkey_accuracy

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
    from .adapter import load_peft_adapter
    from .hf import from_hf, to_hf
    from .lora import merge_lora

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
    from .checkpoint import load_run
    from .hf import to_hf
    from .lora import merge_lora

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
    """Re-run one of the paper's tables or figures at CPU scale and write OUT/NAME.json (minilongllora/reproduce/).
    Runs are cached under --cache-dir by their exact TrainConfig, so tables that share a setting share the run.
    --quick checks the mechanics in seconds (2 steps, tiny evaluations, short contexts): OUT/NAME.quick.json."""
    from .reproduce import reproduce, result_path

    reproduce(args.name, quick=args.quick, seeds=args.seeds, out=args.out, base=args.base, cache_dir=args.cache_dir,
              precision=args.precision)
    print(f"results: {result_path(args.out, args.name, args.quick)}")


