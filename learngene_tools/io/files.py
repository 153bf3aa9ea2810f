"""Files: atomic writes, output-path checks and whole-file hashes (standard library only)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator

from learngene_tools.errors import OutputError

_CHUNK = 1 << 20


def check_output(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse to clobber an input, or an existing output without --force, before any work is done."""
    for p in inputs:
        if out.exists() and p.exists() and out.resolve() == p.resolve():
            raise OutputError(f"{out}: is an input; inputs are never modified, choose another output path")
    if out.is_dir():
        raise OutputError(f"{out}: is a directory; give a file name")
    if out.exists() and not force:
        raise OutputError(f"{out}: already exists; pass --force to overwrite it")
    if not out.parent.exists():
        raise OutputError(f"{out.parent}: output folder does not exist")


@contextlib.contextmanager
def atomic_path(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside `out`; on success it is fsynced and renamed onto `out`, else removed."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fdatasync(f.fileno()) if hasattr(os, "fdatasync") else os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def file_sha256(path: str | Path) -> str:
    """sha256 of a whole file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
