"""save_pretrained folders: which files hold the weights, the checks before writing one, and an all-or-nothing write."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from learngene_tools.errors import InvalidFileError, NotFoundError, OutputError
from learngene_tools.io.files import publish

FOLDER_WEIGHT_PICKLES = ("pytorch_model.bin", "model.bin")
FOLDER_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")


def weight_files(folder: Path) -> list[list[Path]]:
    """The weight sets of a save_pretrained folder: each index's shards, then every other weights file."""
    sets: list[list[Path]] = []
    used: set[str] = set()
    for index in sorted(folder.glob("*.index.json"), key=lambda p: (not p.name.endswith(".safetensors.index.json"),
                                                                     p.name)):
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except (OSError, ValueError, AttributeError):
            raise InvalidFileError(f"{index}: not a readable shard index (JSON with a weight_map)") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidFileError(f"{index}: has no weight_map")
        shards = sorted(set(map(str, weight_map.values())))
        for name in shards:
            if "/" in name or not (folder / name).is_file():
                raise NotFoundError(f"{folder / name}: shard named by {index.name} is missing")
        sets.append([folder / n for n in shards])
        used |= set(shards)
    for p in sorted(folder.glob("*.safetensors")) + [folder / n for n in FOLDER_WEIGHT_PICKLES]:
        if p.is_file() and p.name not in used:
            sets.append([p])
    return sets


def _inside(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_folder_output(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse an output folder that is, holds or sits inside an input, or exists without --force."""
    for p in inputs:
        if p.exists() and (_inside(out, p) if p.is_dir() else False):
            raise OutputError(f"{out}: is inside the input folder {p}; inputs are never modified, choose another path")
        if p.exists() and _inside(p, out):
            raise OutputError(f"{out}: holds the input {p}; inputs are never modified, choose another path")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file; the target is a folder and is written as one, give a folder name")
    if out.exists() and not force:
        raise OutputError(f"{out}: already exists; pass --force to replace it")
    if not out.parent.exists():
        raise OutputError(f"{out.parent}: output folder does not exist")


def fsync_file(path: Path) -> None:
    """Flush a written file to disk."""
    with open(path, "rb+") as f:
        os.fdatasync(f.fileno()) if hasattr(os, "fdatasync") else os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_folder(out: Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; on success it replaces `out` by renames, else it is removed.

    A crash leaves either the old `out` or the new one (never a half-written folder under that name). With
    `replace=False` (no --force) an `out` that exists by then, even an empty folder or a file another process
    made after the checks, is never replaced: the write fails with one OutputError line.
    """
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"  # distinct for every write, threads of one process too
    tmp, old = out.with_name(f".{out.name}.tmp-{tag}"), out.with_name(f".{out.name}.old-{tag}")
    tmp.mkdir()
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                fsync_file(p)
        if not replace:
            publish(tmp, out, replace=False)
            return
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        for p in (tmp, old):
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
