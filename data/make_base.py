"""Ship a pretraining run as `data/tiny-base`: the model, its metrics, and the evidence that it is a base worth extending.

    python -m minilongllora pretrain --recipe pretrain-tiny           # ~50 min on 2 cores (resumable: --resume)
    python data/make_base.py runs/pretrain-tiny --out data/tiny-base   # ~2 min; --overwrite to replace a base

Writes into --out: the run's final model (config.json, model.safetensors: the HF directory the trainer exported),
`pretrain_run.json` (the run's configuration), `pretrain_metrics.json` and two figures:
* the validation curve (mean loss over `eval_windows` whole windows of 256 validation tokens, every `eval_every`
  steps) and the training loss, and the two convergence checks of the base-model issue: the validation loss of the
  last tenth of the run improves by less than 1% (`last_tenth_improvement`), and the final validation loss is within
  0.5% of the best (`final_over_best`, no overfitting);
* the loss by position over the model's own 256-token context on the whole validation split, and its last sixteenth
  against the sixteenth before (`last_sixteenth_rise`: ≤ 0 means no rise at the end of the context);
* passkey retrieval within the 256-token context (prompts of at most 250 tokens, so that the answer fits), 100 trials each: the code format (passkey.py) with validation and with test
  filler, and the paper's English format (Figure 4's prompt, which a model trained on code has never read).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from minilongllora.data import ByteTokenizer, corpus_documents, corpus_tokens, load_corpus  # noqa: E402
from minilongllora.evaluate import plot_position_loss, position_loss  # noqa: E402
from minilongllora.hf import from_hf  # noqa: E402
from minilongllora.passkey import passkey_accuracy  # noqa: E402

CONTEXT = 256
PASSKEY = CONTEXT - 6  # prompt tokens: the prompt and the 5 or 6 answer tokens all fit in the model's context
TRIALS = 100


def validation_curve(metrics: list[dict]) -> list[dict]:
    """(step, val_loss) of every evaluation in metrics.jsonl: the trainer's whole-window validation loss,
    `val_window_loss` (`val_loss` in runs made before its rename)."""
    return [{"step": m["step"], "val_loss": m.get("val_window_loss", m.get("val_loss"))} for m in metrics
            if "val_window_loss" in m or "val_loss" in m]


def convergence(curve: list[dict], steps: int) -> dict:
    """The base-model issue's two checks on the validation curve."""
    tenth = [c for c in curve if c["step"] >= 0.9 * steps]
    before = [c for c in curve if c["step"] <= 0.9 * steps][-1]
    best = min(c["val_loss"] for c in curve)
    last = curve[-1]["val_loss"]
    return {"val_loss_at_90pct": before["val_loss"], "val_loss_final": last, "val_loss_best": best,
            "last_tenth_improvement": (before["val_loss"] - last) / before["val_loss"],
            "final_over_best": (last - best) / best, "evaluations_in_last_tenth": len(tenth)}


def plot_curve(metrics: list[dict], curve: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    train = [(m["step"], m["loss"]) for m in metrics]
    k = 50  # the training loss, averaged over 50 steps
    smooth = [(train[i][0], sum(v for _, v in train[i - k + 1:i + 1]) / k) for i in range(k - 1, len(train), k)]
    ax.plot(*zip(*smooth), label="train loss (mean of 50 steps)", color="tab:blue", alpha=0.7)
    ax.plot([c["step"] for c in curve], [c["val_loss"] for c in curve], marker="o", ms=3, label="validation loss",
            color="tab:orange")
    ax.set(xlabel="optimizer step", ylabel="loss (nats per byte)", title="Pretraining the tiny base at 256 tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the pretraining run directory (runs/pretrain-tiny)")
    p.add_argument("--out", type=Path, default=Path("data/tiny-base"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing base in --out")
    args = p.parse_args(argv)
    final = args.run / "final"
    if not (final / "model.safetensors").is_file():
        sys.exit(f"{final} holds no model: finish the run first (python -m minilongllora pretrain --recipe "
                 f"pretrain-tiny --resume)")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        sys.exit(f"{args.out} already holds a base; pass --overwrite to replace it")
    run = json.loads((args.run / "run.json").read_text())
    metrics = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    steps = run["train_config"]["steps"]
    if metrics[-1]["step"] != steps:
        sys.exit(f"the run stopped at step {metrics[-1]['step']} of {steps}: resume it first")

    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(final / name, tmp / name)
    (tmp / "pretrain_run.json").write_text(json.dumps(run, indent=1) + "\n")

    model = from_hf(tmp).eval()
    n_params = sum(p.numel() for p in model.parameters())
    tokens = steps * run["global_batch"] * run["train_config"]["seq_len"]
    curve = validation_curve(metrics)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        loss = position_loss(model, corpus_documents("validation"), CONTEXT, batch_size=32, progress=True)
    sixteenth = CONTEXT // 16
    tok = ByteTokenizer()
    passkey = {
        "code_validation_filler": passkey_accuracy(model, tok, [PASSKEY], TRIALS, format="code",
                                                   filler_docs=load_corpus("validation"))[0],
        "code_test_filler": passkey_accuracy(model, tok, [PASSKEY], TRIALS, format="code",
                                             filler_docs=load_corpus("test"))[0],
        "paper": passkey_accuracy(model, tok, [PASSKEY], TRIALS)[0],
    }
    report = {
        "tokens": tokens, "parameters": n_params, "tokens_per_parameter": tokens / n_params,
        "epochs_of_train_split": tokens / corpus_tokens("train", CONTEXT).numel(),
        "schedule": {k: run["train_config"][k] for k in ("lr", "lr_schedule", "min_lr_ratio", "warmup_steps",
                                                         "weight_decay", "betas", "passkey_share")},
        "passkey_placement": run["train_config"].get("passkey_placement", "packed"),
        "train_seconds": metrics[-1].get("seconds"), "final_train_loss": metrics[-1]["loss"],
        "convergence": convergence(curve, steps),
        "val_curve": [{**c, "val_window_ppl": round(math.exp(c["val_loss"]), 4)} for c in curve],
        "train_loss_every_100": [(m["step"], round(m["loss"], 4)) for m in metrics if m["step"] % 100 == 0],
        "position_loss": {"windows": "every whole 256-token window of each validation document",
                          "first_sixteenth": loss[:sixteenth].mean().item(),
                          "second_to_last_sixteenth": loss[-2 * sixteenth:-sixteenth].mean().item(),
                          "last_sixteenth": loss[-sixteenth:].mean().item(),
                          "last_sixteenth_rise": (loss[-sixteenth:].mean() - loss[-2 * sixteenth:-sixteenth].mean())
                          .item()},
        "passkey_within_256": passkey,
    }
    (tmp / "pretrain_metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_curve(metrics, curve, tmp / "pretrain_curve.png")
    plot_position_loss({"tiny-base": loss}, tmp / "position_loss.png",
                       title="The base's loss by position over its own context (validation)")
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.rename(args.out)
    c = report["convergence"]
    print(f"{args.out}: {n_params:,} parameters, {tokens:,} tokens ({report['tokens_per_parameter']:.1f} per "
          f"parameter, {report['epochs_of_train_split']:.2f} epochs)\n"
          f"validation loss {c['val_loss_final']:.4f} (best {c['val_loss_best']:.4f}, final over best "
          f"{100 * c['final_over_best']:+.2f}%), last tenth improved {100 * c['last_tenth_improvement']:.2f}%\n"
          f"loss by position: last sixteenth {report['position_loss']['last_sixteenth']:.4f} vs "
          f"{report['position_loss']['second_to_last_sixteenth']:.4f} before it\n"
          f"passkey, prompts of at most {PASSKEY} tokens: " + ", ".join(f"{k} {100 * v['accuracy']:.0f}%" for k, v in passkey.items()))


if __name__ == "__main__":
    main()
