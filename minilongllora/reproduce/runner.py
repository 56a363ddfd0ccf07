"""The runner: trains (or reuses) runs and evaluates models, caching both.

Cache. Runs live in `--cache-dir` (default runs/reproduce) under the hash of their exact TrainConfig (out_dir aside),
the base's weights and the source code of the package a run depends on (every module of `minilongllora/` outside
this subpackage and the command line): a code change gets new keys, so a stale run is never reused. A finished run
(its result.json) is reused, an interrupted one resumes from its checkpoint (saved every 50 steps); evaluations are
cached beside it (evals.json), keyed by their settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

from ..checkpoint import find_checkpoint
from ..data import ByteTokenizer, corpus_documents
from ..evaluate import perplexity, position_loss
from ..files import write_json
from ..hf import from_hf
from ..passkey import passkey_accuracy
from ..rope import linear_scaling
from ..train import train, validation_loss, validation_rows
from ..trainconfig import TrainConfig, meta_model
from .plan import LOSS_BINS, STRIDE, Plan
from .record import jsonable, window_ppl
from .sinks import (KEY_TESTS, KeyMasked, distance_mass, far_reading, first_token_mass, graft, rotary_phase,
                    rotate_query_pair, score_by_frequency)

PACKAGE = Path(__file__).resolve().parent.parent
NOT_RUN_CODE = ("cli.py", "__main__.py", "longlora.py", "recipes.py", "plotting.py", "efficiency.py")  # never in a run


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _hash_files(files) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def base_fingerprint(base: str) -> str:
    """sha256 of the base's config.json and weight files: a remade base gets new cache keys."""
    path = Path(base)
    return _hash_files(sorted(path.glob("*.json")) + sorted(path.glob("*.safetensors")))


def code_fingerprint() -> str:
    """sha256 of the package's modules a run executes (model, attention, training, evaluation, ...)."""
    return _hash_files(sorted(f for f in PACKAGE.glob("*.py") if f.name not in NOT_RUN_CODE))


def run_key(cfg: TrainConfig, fingerprint: str) -> str:
    """The cache key of a run: its TrainConfig without out_dir, and the fingerprint of the base and the code."""
    d = cfg.to_dict()
    d.pop("out_dir")
    return _sha({"config": d, "base": fingerprint})


def _given(**fields) -> dict:
    """The fields that are not None: an evaluation's optional settings enter its cache key only when given, so the
    keys of evaluations made before a setting existed stay valid."""
    return {k: v for k, v in fields.items() if v is not None}


def run_fields(run: dict) -> dict:
    """The fields of a table row that say which run it comes from."""
    return {"run": run["key"], "train_loss": run["loss"], "train_seconds": run["train_seconds"],
            "reused": run["reused"]}


class Runner:
    """Trains (or reuses) runs and evaluates models, caching both under `cache_dir`."""

    def __init__(self, plan: Plan, cache_dir: str | Path):
        self.plan, self.cache = plan, Path(cache_dir)
        self.fingerprint = _sha({"base": base_fingerprint(plan.base), "code": code_fingerprint()})
        self.docs = corpus_documents("validation")  # every number of the tables; the test split on request
        self._split_docs = {"validation": self.docs}
        self.runs: dict[str, dict] = {}  # key -> {config, train_seconds, tokens, loss, curve, reused}

    # training ------------------------------------------------------------------------------------------------
    def train(self, cfg: TrainConfig) -> dict:
        key = run_key(cfg, self.fingerprint)
        out = self.cache / key
        cfg = cfg.replace(out_dir=str(out))
        done = out / "result.json"
        reused = done.is_file()
        if not reused:
            resume = find_checkpoint(out) is not None
            if not resume and out.exists():
                shutil.rmtree(out)
            started = time.time()
            result = train(cfg, resume=resume)
            write_json(done, {"config": cfg.to_dict(), "final": result["final"], "loss": result["loss"],
                              "metrics": result["metrics"], "train_seconds": result["metrics"][-1]["seconds"],
                              "wall_seconds": round(time.time() - started, 1)}, default=jsonable)
            shutil.rmtree(out / "checkpoint", ignore_errors=True)  # only needed to resume; final/ is the model
        summary = json.loads(done.read_text())
        self.runs.setdefault(key, {
            "config": summary["config"], "train_seconds": summary["train_seconds"],
            "wall_seconds": summary.get("wall_seconds"), "reused": reused,
            "tokens": summary["metrics"][-1]["tokens"], "final_train_loss": summary["loss"],
            "curve": [{"step": m["step"], "val_window_ppl": window_ppl(m)} for m in summary["metrics"]
                      if window_ppl(m) is not None]})
        return {"key": key, "config": cfg, "final": summary["final"], "loss": summary["loss"],
                "metrics": summary["metrics"], "train_seconds": summary["train_seconds"], "reused": reused,
                "dir": str(out)}

    def trainable(self, cfg: TrainConfig) -> int:
        return sum(p.numel() for p in meta_model(cfg).parameters() if p.requires_grad)

    # evaluation ----------------------------------------------------------------------------------------------
    def _cached(self, source, spec: dict, compute):
        folder = self.cache / "base-evals" / self.fingerprint if source == "base" else Path(source["dir"])
        path = folder / "evals.json"
        key = json.dumps(spec, sort_keys=True)
        cache = json.loads(path.read_text()) if path.is_file() else {}
        if key not in cache:
            cache[key] = compute()
            write_json(path, cache, default=jsonable)
        return cache[key]

    def _weights(self, source: str) -> str:
        """The weights of a run (by its key) or of "base"."""
        return self.plan.base if source == "base" else str(self.cache / source / "final")

    def _model(self, source, attention: str = "full", rope_factor: float | None = None,
               rotate: dict | list | None = None, grafted: dict | None = None, heads: list | None = None):
        """The model of a run (or "base") for testing: full attention; "train": its own training pattern; "local F":
        a sliding window of F x the evaluated length; a key test of sinks.py ("no_first K", "window_sinks F K", …).
        `rotate` ({"pair", "angles", …}, or a list of them): its queries at that rotary frequency turned
        (`sinks.rotate_query_pair`); `grafted` ({"donor": a run's key or "base", "names", "pairs", and "heads" where
        given}): the donor's weights put in place of its own (`sinks.graft`); `heads` ([layer, head] pairs): a key
        test in those heads only."""
        overrides = {} if rope_factor is None else {"rope_scaling": linear_scaling(rope_factor)}
        if source != "base" and attention == "train":
            cfg = source["config"]
            overrides.update(attention=cfg.attention, s2_variant=cfg.s2_variant,
                             group_size_ratio=cfg.group_size_ratio, n_sink=cfg.n_sink, eval_attention="train")
        elif attention.startswith("local "):  # "local F": a sliding window of F x the evaluated length
            overrides.update(attention="local", group_size_ratio=float(attention.split()[1]), eval_attention="train")
        model = from_hf(self._weights(source if source == "base" else source["key"]), **overrides).eval()
        if grafted is not None:
            donor = from_hf(self._weights(grafted["donor"])).state_dict()
            graft(model, donor, grafted["names"], grafted.get("pairs"), grafted.get("heads"))
        if rotate is not None:
            for edit in rotate if isinstance(rotate, list) else [rotate]:
                rotate_query_pair(model, edit["pair"], edit["angles"])
        if attention.split()[0] in KEY_TESTS and attention != "full":
            return KeyMasked(model, attention, heads).eval()
        if heads is not None:
            raise ValueError(f"heads= picks the heads of a key test; {attention!r} is none")
        return model

    def documents(self, split: str = "validation") -> list:
        if split not in self._split_docs:
            self._split_docs[split] = corpus_documents(split)
        return self._split_docs[split]

    def ppl(self, run, n: int, attention: str = "full", rope_factor: float | None = None,
            split: str = "validation", rotate: dict | list | None = None, grafted: dict | None = None,
            heads: list | None = None) -> dict:
        """Sliding-window perplexity of a run (or of "base", with linear PI by `rope_factor` where given; `rotate`,
        `grafted` and `heads`: see `_model`)."""
        spec = {"kind": "ppl", "n": n, "stride": min(STRIDE, n), "windows": self.plan.ppl_windows,
                "attention": attention,
                **_given(rope_factor=rope_factor, split=None if split == "validation" else split, rotate=rotate,
                         grafted=grafted, heads=heads)}

        def compute():
            r = perplexity(self._model(run, attention, rope_factor, rotate, grafted, heads), self.documents(split), n,
                           stride=min(STRIDE, n), max_windows=self.plan.ppl_windows, batch_size=4, progress=False)
            return {"ppl": r["ppl"], "ppl_tokens": r["tokens_scored"], "ppl_windows": r["windows"]}

        return self._cached(run, spec, compute)

    def last_quarter(self, run, n: int, attention: str = "full", rope_factor: float | None = None,
                     split: str = "validation", rotate: dict | list | None = None) -> dict:
        """exp of the mean loss at the last quarter of window positions, the loss of each quarter and of each 16th
        (`rotate`: see `_model`)."""
        spec = {"kind": "last_quarter", "n": n, "documents": self.plan.lq_documents, "attention": attention,
                "bins": LOSS_BINS,
                **_given(rope_factor=rope_factor, split=None if split == "validation" else split, rotate=rotate)}

        def compute():
            docs = [d[:n] for d in self.documents(split) if d.numel() >= n][:self.plan.lq_documents]
            if not docs:
                raise ValueError(f"no {split} document holds {n} tokens")
            curve = position_loss(self._model(run, attention, rope_factor, rotate), docs, n, batch_size=4).double()
            # entry i predicts token i + 1: the last quarter of positions is tokens 3n/4 … n−1
            quarters = [curve[max(0, q * n // 4 - 1):(q + 1) * n // 4 - 1].mean().item() for q in range(4)]
            bins = [curve[max(0, b * n // LOSS_BINS - 1):(b + 1) * n // LOSS_BINS - 1].mean().item()
                    for b in range(LOSS_BINS)]
            return {"ppl_last_quarter": math.exp(quarters[3]), "loss_quarters": quarters, "loss_bins": bins,
                    "lq_documents": len(docs)}

        return self._cached(run, spec, compute)

    def test_split(self, run, n: int, attention: str = "full", rope_factor: float | None = None) -> dict:
        """The row's two metrics on the test split, never read to choose a setting (issue 15 item 4: settings chosen
        on the validation split, the test split reported too): ppl_test and ppl_last_quarter_test."""
        return {"ppl_test": self.ppl(run, n, attention, rope_factor, split="test")["ppl"],
                "ppl_last_quarter_test": self.last_quarter(run, n, attention, rope_factor,
                                                           split="test")["ppl_last_quarter"]}

    def _first(self, n: int, documents: int) -> list:
        """The first n tokens of the first `documents` validation documents that hold n tokens."""
        return [d[:n] for d in self.docs if d.numel() >= n][:documents]

    def distance_mass(self, run, n: int, documents: int, rope_factor: float | None = None) -> dict:
        """sinks.distance_mass of a run (or "base", with linear PI by `rope_factor` where given) on the first n tokens
        of the first `documents` validation documents that hold n tokens, in LOSS_BINS distance bins."""
        spec = {"kind": "distance_mass", "n": n, "documents": documents, "bins": LOSS_BINS,
                **_given(rope_factor=rope_factor)}

        def compute():
            return distance_mass(self._model(run, "full", rope_factor), self._first(n, documents), LOSS_BINS)

        return self._cached(run, spec, compute)

    def far_reading(self, run, n: int, documents: int, test: str, rope_factor: float | None = None,
                    grafted: dict | None = None, heads: list | None = None) -> dict:
        """sinks.far_reading of a run (or "base", with linear PI by `rope_factor` where given; `grafted`: see
        `_model`; `heads`: those read under `test` in the forward pass) on the first n tokens of the first `documents`
        validation documents that hold n tokens: each head's attention on, and output from, the keys `test` hides."""
        spec = {"kind": "far_reading", "n": n, "documents": documents, "test": test,
                **_given(rope_factor=rope_factor, grafted=grafted, heads=heads)}

        def compute():
            return far_reading(self._model(run, "full", rope_factor, grafted=grafted), self._first(n, documents), test,
                               heads)

        return self._cached(run, spec, compute)

    def score_by_frequency(self, run, n: int, documents: int, near: int, far: int,
                           rope_factor: float | None = None) -> dict:
        """sinks.score_by_frequency of a run (or "base", with linear PI by `rope_factor` where given) on the first n
        tokens of the first `documents` validation documents that hold n tokens, in LOSS_BINS distance bins."""
        spec = {"kind": "score_by_frequency", "n": n, "documents": documents, "near": near, "far": far,
                "bins": LOSS_BINS, **_given(rope_factor=rope_factor)}

        def compute():
            return score_by_frequency(self._model(run, "full", rope_factor), self._first(n, documents), near, far,
                                      LOSS_BINS)

        return self._cached(run, spec, compute)

    def rotary_phase(self, run, n: int, documents: int, pair: int | None = None,
                     rope_factor: float | None = None) -> dict:
        """sinks.rotary_phase of a run (or "base", with linear PI by `rope_factor` where given) on the first n tokens
        of the first `documents` validation documents that hold n tokens."""
        spec = {"kind": "rotary_phase", "n": n, "documents": documents, "pair": pair, "bins": LOSS_BINS,
                **_given(rope_factor=rope_factor)}

        def compute():
            return rotary_phase(self._model(run, "full", rope_factor), self._first(n, documents), pair, LOSS_BINS)

        return self._cached(run, spec, compute)

    def first_token_mass(self, run, n: int, k: int, documents: int, rope_factor: float | None = None) -> dict:
        """sinks.first_token_mass of a run (or "base") on the first n tokens of the first `documents` validation
        documents that hold n tokens."""
        spec = {"kind": "first_token_mass", "n": n, "k": k, "documents": documents,
                **_given(rope_factor=rope_factor)}

        def compute():
            docs = self._first(n, documents)
            return first_token_mass(self._model(run, "full", rope_factor), docs, k, LOSS_BINS)

        return self._cached(run, spec, compute)

    def passkey(self, source, lengths: list[int], trials: int, rope_factor: float, format: str = "paper") -> list[dict]:
        """Passkey accuracy at each length (`passkey.passkey_accuracy`), in the paper's prompt or the code prompt
        (a key line, real code as filler, `assert KEY == `: what the base learned to retrieve, data/README.md)."""
        spec = {"kind": "passkey", "lengths": list(lengths), "trials": trials, "rope_factor": rope_factor,
                **({} if format == "paper" else {"format": format})}
        return self._cached(source, spec, lambda: passkey_accuracy(
            self._model(source, rope_factor=rope_factor), ByteTokenizer(), lengths, trials=trials,
            check_context=False, progress=False, format=format))

    def window_ppl_at_start(self, cfg: TrainConfig) -> float:
        """The trainer's validation (whole-window) perplexity of the base with the run's interpolation, before any
        step."""
        spec = {"kind": "val_start", "n": cfg.seq_len, "windows": cfg.eval_windows, "rope_factor": cfg.rope_factor}

        def compute():
            model = self._model("base", rope_factor=cfg.rope_factor)
            loss = validation_loss(model, validation_rows(cfg), cfg.batch_size, "cpu", contextlib.nullcontext)
            return math.exp(loss)

        return self._cached("base", spec, compute)
