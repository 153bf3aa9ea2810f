"""Writing a checkpoint back in its own format and wrapper, with a transplant's updates applied to every copy.

Outputs are written to a temporary file (or folder) beside the destination and renamed into place; a
safetensors target is streamed (its unchanged bytes copied, the updated tensors rewritten).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Sequence

import torch

from learngene_tools.errors import InvalidFileError, OutputError
from learngene_tools.io.checkpoint import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, Checkpoint
from learngene_tools.io.files import atomic_path, open_input, reading
from learngene_tools.io.folders import FOLDER_OPTIMIZER_FILES, atomic_folder
from learngene_tools.io.header import encode_header
from learngene_tools.io.tensors import TORCH_TO_ST, tensor_bytes, write_safetensors


def output_format(ckpt: Checkpoint, out: Path) -> str:
    """The format `out` will be written in: the target's own, or by extension for a built model."""
    by_ext = "safetensors" if out.suffix in SAFETENSORS_SUFFIXES else "pickle" if out.suffix in PICKLE_SUFFIXES else None
    if ckpt.fmt == "folder":
        if by_ext is not None:
            raise OutputError(f"{out}: the target is a save_pretrained folder and is written back as one; "
                              "give a folder name")
        return "folder"
    if ckpt.fmt == "model":
        if by_ext is None:
            raise OutputError(f"{out}: choose an output name ending in .safetensors, .pt, .pth or .bin")
        return by_ext
    if by_ext is not None and by_ext != ckpt.fmt:
        want = ".safetensors" if ckpt.fmt == "safetensors" else ".pt/.pth/.bin"
        raise OutputError(f"{out}: the target is a {ckpt.fmt} checkpoint and is written back as one; name the output {want}")
    return ckpt.fmt


def _copy_range(src: BinaryIO, dst: BinaryIO, offset: int, length: int) -> None:
    """Append `length` bytes of `src` from `offset` to `dst`, in the kernel where the OS can (no user-space copy)."""
    dst.flush()
    copy_file_range = getattr(os, "copy_file_range", None)
    if copy_file_range is not None:
        try:
            while length > 0:
                n = copy_file_range(src.fileno(), dst.fileno(), min(length, 1 << 30), offset)
                if n == 0:
                    raise InvalidFileError(f"{src.name}: file ended early; it may have been truncated while being read")
                offset, length = offset + n, length - n
            dst.seek(0, os.SEEK_END)
            return
        except OSError:  # e.g. a filesystem without copy_file_range: fall back to a buffered copy
            pass
    with reading(src.name):
        src.seek(offset)
    dst.seek(0, os.SEEK_END)
    while length > 0:
        with reading(src.name):
            chunk = src.read(min(length, 16 << 20))
        if not chunk:
            raise InvalidFileError(f"{src.name}: file ended early; it may have been truncated while being read")
        dst.write(chunk)
        length -= len(chunk)


def _patch_safetensors(ckpt: Checkpoint, updates: Mapping[str, torch.Tensor], tmp: Path, metadata: dict[str, str]) -> None:
    """Copy the source file's data region unchanged, then overwrite only the updated tensors' bytes."""
    header = ckpt._header
    assert header is not None and ckpt.path is not None
    head = encode_header([(e.name, e.dtype, e.shape, e.nbytes) for e in header.tensors.values()], metadata)
    with open_input(ckpt.path) as src, open(tmp, "wb") as dst:
        dst.write(head)
        _copy_range(src, dst, header.data_start, os.fstat(src.fileno()).st_size - header.data_start)
        for key, t in updates.items():
            e = header.tensors[ckpt.prefix + key]
            data = tensor_bytes(t)
            if TORCH_TO_ST.get(t.dtype) != e.dtype or tuple(t.shape) != e.shape or len(data) != e.nbytes:
                raise AssertionError(f"update for {key} does not match the target's dtype/shape")
            dst.seek(len(head) + e.start - header.data_start)
            dst.write(data)


Updates = Mapping[str, torch.Tensor]


def torch_save(obj: Any, tmp: Path, zip_format: bool = True) -> None:
    """torch.save into a file object, so that a full disk is the OSError it is (one line), not a RuntimeError.

    torch's zip writer reports a failed write as "unexpected pos" while closing; the OSError is its context.
    """
    with open(tmp, "wb") as f:
        try:
            torch.save(obj, f, _use_new_zipfile_serialization=zip_format)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def save_checkpoint(
    ckpt: Checkpoint,
    updates: Updates | Sequence[Updates],
    out: Path,
    metadata: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
    fmt: str | None = None,
    replace: bool = False,
) -> None:
    """Write `ckpt` with `updates` applied to every copy of its weights to `out`, atomically, in the checkpoint's
    own format and wrapper.

    `updates` is one mapping for every copy, or one per copy (`copy_readers` order). `metadata` is added to a
    safetensors header (pickles have nowhere neutral to hold it). `drop` names entries to leave out: optimizer
    state (`ckpt.optimizer_state`). `fmt` is `output_format(ckpt, out)` when the caller has it. An existing `out`
    is replaced only with `replace` (--force); without it, one that appears while this runs makes the write fail
    instead of being overwritten.
    """
    n = max(1, len(ckpt.copies) or len(ckpt.weight_sets))
    per_copy = list(updates) if isinstance(updates, (list, tuple)) else [updates] * n
    if len(per_copy) != n:
        raise AssertionError(f"{len(per_copy)} update sets for {n} weight copies")
    for u in per_copy:
        for key, t in u.items():
            if key not in ckpt.shapes or tuple(t.shape) != ckpt.shapes[key] or t.dtype != ckpt.dtypes[key]:
                raise AssertionError(f"update for {key} does not match the target's key/shape/dtype")
    fmt = fmt or output_format(ckpt, out)
    if fmt == "folder":
        with atomic_folder(out, replace) as tmp:
            _write_folder(ckpt, per_copy, tmp, metadata or {}, drop)
        return
    with atomic_path(out, replace) as tmp:
        _write_file(ckpt, per_copy, tmp, fmt, {**ckpt.metadata, **(metadata or {})}, drop)


def _write_file(ckpt: Checkpoint, per_copy: list[Updates], tmp: Path, fmt: str, meta: dict[str, str],
                drop: tuple[str, ...] = ()) -> None:
    updates = per_copy[0]
    if ckpt.fmt == "safetensors":
        _patch_safetensors(ckpt, updates, tmp, meta)
    elif ckpt.fmt == "pickle":
        if not drop and zipfile.is_zipfile(ckpt.path):  # stream it: unchanged storages copied, changed ones rewritten
            from learngene_tools.io.torchzip import patch_torch_zip

            if patch_torch_zip(ckpt.path, ckpt.copies, per_copy, tmp, _copy_range):
                return
        container = ckpt._container
        if drop and isinstance(container, dict):
            container = {k: v for k, v in container.items() if k not in drop}
        with contextlib.ExitStack() as stack:
            for c, u in zip(ckpt.copies, per_copy):
                stack.enter_context(c.updated(u))
            torch_save(container, tmp, zip_format=zipfile.is_zipfile(ckpt.path))
    else:
        state = {**ckpt.state_dict(), **updates}
        if fmt == "safetensors":
            with open(tmp, "wb") as f:
                write_safetensors(state, meta, f)
        else:
            torch_save(state, tmp)


def _write_folder(ckpt: Checkpoint, per_copy: list[Updates], tmp: Path, metadata: dict[str, str],
                  drop: tuple[str, ...]) -> None:
    """Other files copied as they are; a weights file rewritten only when one of its tensors changed."""
    import shutil

    assert ckpt.path is not None
    weights = {Path(m.source).resolve(): (m, u) for members, u in zip(ckpt.weight_sets, per_copy) for m in members}
    for p in sorted(ckpt.path.rglob("*")):
        dst = tmp / p.relative_to(ckpt.path)
        if p.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif p.resolve() in weights:
            m, u = weights[p.resolve()]
            mine = {k: t.to(m.dtypes[k]) for k, t in u.items() if k in m.shapes}
            if not mine:
                shutil.copyfile(p, dst)
            else:
                _write_file(m, [mine] * max(1, len(m.copies)), dst, m.fmt,
                            {**m.metadata, **metadata} if m.fmt == "safetensors" else {})
        elif drop and p.parent == ckpt.path and p.name in FOLDER_OPTIMIZER_FILES:
            continue
        else:
            shutil.copyfile(p, dst)
