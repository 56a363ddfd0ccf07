"""Writing files so that a crash never leaves a half-written one behind a valid name: the one atomic writer.

Every file the project writes (HF checkpoints, adapters, token files, run.json and metrics.jsonl, results, the
reproduction cache) goes through `atomic_write`: the data goes to a temporary file in the same directory, is fsynced,
renamed over the target (`os.replace`, atomic on POSIX), and the directory is fsynced so that the rename itself
survives a power cut. Readers see the old file or the whole new one, never a mix. Outputs get the mode a plain
`open()` would give them (`file_mode`): temporary files are private (0o600) until their rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def file_mode(directory: bool = False) -> int:
    """The mode a plain `open()` (`mkdir`) gives a new file (directory): 0o666 (0o777) minus the process's umask."""
    umask = os.umask(0)  # the only way to read the umask is to set it: put it back at once
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Make the entries of directory `path` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write) -> Path:
    """Call write(tmp_path), fsync it, then rename tmp_path → path and fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_file(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj, indent: int = 1, default=None) -> Path:
    """`obj` as JSON (one trailing newline), atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")
