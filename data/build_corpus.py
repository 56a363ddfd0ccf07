"""Rebuild the `pystdlib` corpus: the long `.py` files of this interpreter's standard library, split by document.

    python data/build_corpus.py            # writes data/pystdlib/{train,validation,test}.jsonl.xz + manifest.json
    python data/build_corpus.py --out DIR  # somewhere else (e.g. to compare with the committed reference)

Deterministic for a given CPython version: files are taken in sorted relative-path order and each one goes to a
split by a hash of its relative path alone, so adding or removing a file never moves any other. A different Python
version has a different standard library and so gives a different corpus: the committed files are the reference.

Selection rules (also written into manifest.json):
  * `*.py` files under `sysconfig.get_paths()["stdlib"]` of at least MIN_BYTES bytes (long documents);
  * skipped: `site-packages/` (third-party), every `test`/`tests`/`idle_test` package (the regression suites are
    125 MB of mostly test fixtures), `idlelib/` and `lib2to3/` (an application and a deprecated tool with their own
    fixtures), and generated or machine-specific files: `encodings/` (codec tables from gencodec.py),
    `pydoc_data/` (a generated dump of the documentation), `_sysconfigdata_*` and `config-*/` (build paths);
  * text decoded as strict UTF-8 (undecodable files skipped) and never containing NUL, which the byte-level
    tokenizer uses as the document separator (files with NUL are skipped; the build reports it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import sys
import sysconfig
from pathlib import Path

MIN_BYTES = 4096
SKIP_TOP = {"site-packages", "idlelib", "lib2to3", "encodings", "pydoc_data"}
SKIP_ANYWHERE = {"test", "tests", "idle_test", "__pycache__"}
SPLITS = (("train", 90), ("validation", 95), ("test", 100))  # cumulative percent of hash buckets
XZ_PRESET = 6


def split_of(rel: str) -> str:
    """train / validation / test (≈ 90 / 5 / 5) from the first 8 bytes of sha256(relative path), mod 100."""
    bucket = int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "big") % 100
    return next(name for name, upper in SPLITS if bucket < upper)


def skipped(rel_parts: tuple[str, ...]) -> bool:
    top, name = rel_parts[0], rel_parts[-1]
    return (top in SKIP_TOP or top.startswith("config-") or name.startswith("_sysconfigdata_")
            or any(p in SKIP_ANYWHERE for p in rel_parts[:-1]))


def collect(stdlib: Path) -> tuple[list[dict], dict]:
    docs, rejected = [], {"undecodable": [], "contains_nul": []}
    for path in sorted(stdlib.rglob("*.py"), key=lambda p: p.relative_to(stdlib).as_posix()):
        rel = path.relative_to(stdlib)
        if not path.is_file() or skipped(rel.parts):
            continue
        raw = path.read_bytes()
        if len(raw) < MIN_BYTES:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            rejected["undecodable"].append(rel.as_posix())
            continue
        if "\0" in text:
            rejected["contains_nul"].append(rel.as_posix())
            continue
        docs.append({"path": rel.as_posix(), "text": text})
    return docs, rejected


def write_xz_jsonl(path: Path, docs: list[dict]) -> bytes:
    """One JSON object per line, xz-compressed, written to a temp file and renamed. Returns the uncompressed bytes."""
    payload = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(lzma.compress(payload, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET))
    os.replace(tmp, path)
    return payload


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "pystdlib")
    args = parser.parse_args(argv)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    args.out.mkdir(parents=True, exist_ok=True)

    docs, rejected = collect(stdlib)
    manifest = {
        "name": "pystdlib",
        "description": "Long .py files of the CPython standard library, one document per file",
        "python_version": sys.version.split()[0],
        "python_implementation": sys.implementation.name,
        "license": "PSF License Version 2 (see LICENSE-PSF.txt); (c) Python Software Foundation and contributors",
        "rebuild": "python data/build_corpus.py",
        "selection": {
            "glob": "<stdlib>/**/*.py, sorted by relative path",
            "min_bytes": MIN_BYTES,
            "skip_top_level": sorted(SKIP_TOP) + ["config-*/", "_sysconfigdata_*.py"],
            "skip_packages_named": sorted(SKIP_ANYWHERE),
            "encoding": "strict UTF-8; undecodable files and files containing NUL are skipped",
            "split": "sha256(relative path)[:8 bytes] big-endian mod 100: <90 train, <95 validation, else test",
            "format": "xz-compressed JSON lines {\"path\": relative path, \"text\": file text}",
        },
        "rejected": rejected,
        "splits": {},
    }
    for name, _ in SPLITS:
        part = [d for d in docs if split_of(d["path"]) == name]
        out = args.out / f"{name}.jsonl.xz"
        payload = write_xz_jsonl(out, part)
        lengths = sorted(len(d["text"].encode("utf-8")) for d in part)
        manifest["splits"][name] = {
            "file": out.name,
            "documents": len(part),
            "text_bytes": sum(lengths),
            "median_document_bytes": lengths[len(lengths) // 2] if lengths else 0,
            "jsonl_bytes": len(payload),
            "jsonl_sha256": hashlib.sha256(payload).hexdigest(),
            "xz_bytes": out.stat().st_size,
            "sha256": sha256_file(out),
        }
    shutil.copyfile(stdlib / "LICENSE.txt", args.out / "LICENSE-PSF.txt")
    manifest["license_file"] = {"file": "LICENSE-PSF.txt", "sha256": sha256_file(args.out / "LICENSE-PSF.txt")}
    tmp = args.out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, args.out / "manifest.json")

    for name, s in manifest["splits"].items():
        print(f"{name:>10}: {s['documents']:4d} docs  {s['text_bytes']:>10,d} text bytes  "
              f"{s['xz_bytes']:>9,d} xz bytes  median {s['median_document_bytes']:,d} B")
    print(f"{'total':>10}: {len(docs):4d} docs  {sum(len(d['text'].encode()) for d in docs):>10,d} text bytes  "
          f"{sum(s['xz_bytes'] for s in manifest['splits'].values()):>9,d} xz bytes  -> {args.out}")
    if any(rejected.values()):
        print("rejected:", rejected)
    return manifest


if __name__ == "__main__":
    main()
