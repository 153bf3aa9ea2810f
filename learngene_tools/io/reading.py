"""Reading any state_dict checkpoint: format sniffing, pickle safety, and where the weights sit inside it.

Formats are told apart by content, not extension: safetensors (length-prefixed JSON header), torch zip
pickles and legacy torch pickles; a folder is a save_pretrained layout (`io.folders`). Pickles load with
``weights_only=True`` unless the caller trusts the file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from learngene_tools.errors import InvalidFileError, UnsafeInputError
from learngene_tools.io.checkpoint import (
    SAFETENSORS_SUFFIXES,
    STRIPPED_PREFIXES,
    WRAPPER_KEYS,
    Checkpoint,
    WeightCopy,
)
from learngene_tools.io.files import check_input, open_input, reading
from learngene_tools.io.folders import weight_files
from learngene_tools.io.header import looks_like_safetensors, read_header
from learngene_tools.io.tensors import ST_TO_TORCH


def _is_tensor_map(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
    )


def find_state_dict(obj: Any, depth: int = 3) -> tuple[dict[str, Any], tuple[str, ...]] | None:
    """Find the state_dict inside a loaded checkpoint: wrapper keys first, then the object itself."""
    if isinstance(obj, Mapping) and depth > 0:
        for k in WRAPPER_KEYS:
            if k in obj:
                found = find_state_dict(obj[k], depth - 1)
                if found is not None:
                    return found[0], (k, *found[1])
    if _is_tensor_map(obj):
        return obj, ()  # type: ignore[return-value]
    return None


def find_weight_copies(obj: Any, depth: int = 3) -> list[tuple[tuple[str, ...], Any]]:
    """Every copy of the weights in a loaded checkpoint: state_dicts and pickled models under wrapper keys
    (the model, its EMA copies), else the object itself; each with the keys leading to it."""
    if isinstance(obj, torch.nn.Module):
        return [((), obj)]
    found: list[tuple[tuple[str, ...], Any]] = []
    if isinstance(obj, Mapping) and depth > 0:
        for k in WRAPPER_KEYS:
            if k in obj:
                v = obj[k]
                inner = [((), v)] if isinstance(v, torch.nn.Module) else find_weight_copies(v, depth - 1)
                found += [((k, *path), x) for path, x in inner]
    if not found and _is_tensor_map(obj):
        return [((), obj)]
    unique: dict[int, tuple[tuple[str, ...], Any]] = {}
    for path, x in found:
        unique.setdefault(id(x), (path, x))  # a model saved as both `model` and `ema` is one copy
    return list(unique.values())


def common_prefix(keys: list[str]) -> str:
    """The `module.` / `_orig_mod.` prefixes shared by every key (stacked, e.g. `module._orig_mod.`)."""
    prefix = ""
    while True:
        for p in STRIPPED_PREFIXES:
            if keys and all(k.startswith(prefix + p) for k in keys):
                prefix += p
                break
        else:
            return prefix


def _unsafe_globals(path: Path, err: Exception) -> list[str]:
    """The globals a weights_only load refused, or [] when the failure was not about globals."""
    names: list[str] = re.findall(r"(?:Unsupported global: GLOBAL|GLOBAL) ([\w.]+)", str(err))
    if not names:
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    return sorted(set(names))


def torch_load(path: Path, trust_pickle: bool = False) -> Any:
    """torch.load with weights_only=True (or not, when trusted), mmap for zip files, errors as LgtError.

    torch's warnings (e.g. "Detected pickle protocol 5" on a damaged file) are held back: shown after a
    successful load, dropped when the load fails, so a failure stays one line.
    """
    check_input(path)
    with open_input(path) as f, reading(path):
        mmap = zipfile.is_zipfile(f)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=mmap)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, e) if not trust_pickle else []
        if names:
            raise UnsafeInputError(
                f"{path}: refusing to unpickle untrusted globals {', '.join(names)}; "
                "if you trust this file, pass --trust-pickle"
            ) from None
        raise InvalidFileError(f"{path}: not a readable PyTorch checkpoint (damaged or truncated pickle)") from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle fails in many ways; none is the user's to debug
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidFileError(f"{path}: not a readable PyTorch checkpoint ({msg[:200]})") from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return obj


def sniff_format(path: Path) -> str:
    """'safetensors' or 'pickle' by the file's first bytes; LgtError for anything else."""
    if looks_like_safetensors(path):
        return "safetensors"
    with open_input(path) as f, reading(path):
        head = f.read(4)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "pickle"
    if path.suffix in SAFETENSORS_SUFFIXES:
        read_header(path)  # raises the precise reason (truncated, bad JSON, ...)
    raise InvalidFileError(f"{path}: not a checkpoint (expected a .safetensors file or a torch.save pickle)")


def _check_file(path: Path) -> None:
    """A regular, non-empty file (a FIFO, device or socket is refused before it is opened)."""
    try:
        check_input(path)
    except InvalidFileError:
        if os.path.isdir(path):  # (never raises, unlike Path.is_dir on a name too long)
            raise InvalidFileError(f"{path}: is a directory, expected a checkpoint file") from None
        raise


def _explain_unsafe(path: Path, e: UnsafeInputError) -> UnsafeInputError:
    """The refusal of an ultralytics checkpoint, said precisely (its model is a pickled object)."""
    if "ultralytics." not in str(e):
        return e
    return UnsafeInputError(
        f"{path}: is an ultralytics checkpoint: its `model`/`ema` are pickled ultralytics model objects, and loading "
        "them runs ultralytics code (refused by the weights-only load); if you trust this file, pass --trust-pickle"
    )


def _load_safetensors(path: Path, strip_prefix: bool = True) -> Checkpoint:
    header = read_header(path)
    keys = list(header.tensors)
    prefix = common_prefix(keys) if strip_prefix else ""
    unknown = sorted({e.dtype for e in header.tensors.values()} - set(ST_TO_TORCH))
    if unknown:
        raise InvalidFileError(f"{path}: unsupported tensor dtypes {', '.join(unknown)}")
    return Checkpoint(
        source=str(path), fmt="safetensors", path=path, prefix=prefix, metadata=dict(header.metadata), _header=header,
        shapes={k[len(prefix):]: e.shape for k, e in header.tensors.items()},
        dtypes={k[len(prefix):]: ST_TO_TORCH[e.dtype] for k, e in header.tensors.items()},
    )


def load_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    """Open a checkpoint file or save_pretrained folder: safetensors headers only (tensors load on demand),
    pickles whole (mmap)."""
    path = Path(path)
    if os.path.isdir(path):  # (never raises, unlike Path.is_dir on a name too long)
        return load_folder(path, trust_pickle)
    _check_file(path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        return _load_safetensors(path)
    try:
        obj = torch_load(path, trust_pickle)
    except UnsafeInputError as e:
        raise _explain_unsafe(path, e) from None
    found = find_weight_copies(obj)
    if not found:
        top = ", ".join(map(repr, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise InvalidFileError(
            f"{path}: no state_dict found (looked at the top level and under {', '.join(WRAPPER_KEYS)}; top level has {top})"
        )
    copies = []
    for wrapper, x in found:
        module = x if isinstance(x, torch.nn.Module) else None
        state = module.state_dict(keep_vars=True) if module is not None else x
        prefix = common_prefix([k for k, v in state.items() if isinstance(v, torch.Tensor)])
        copies.append(WeightCopy(wrapper, prefix, state, module))
    first = copies[0]
    return Checkpoint(
        source=str(path), fmt="pickle", path=path, prefix=first.prefix, wrapper=first.path, _container=obj,
        _state=None if first.module is not None else first.state, copies=copies,
        shapes=first.shapes(), dtypes={k: first.get(k).dtype for k in first.shapes()},
    )


def load_folder(path: Path, trust_pickle: bool = False) -> Checkpoint:
    """Open a save_pretrained folder: every weight set (safetensors first), each maybe sharded."""
    sets = weight_files(path)
    if not sets:
        raise InvalidFileError(f"{path}: is a folder without weights (no *.safetensors, pytorch_model.bin or "
                               "*.index.json); give the checkpoint file or a save_pretrained folder")
    loaded: list[list[Checkpoint]] = []
    for files in sets:
        members = [_load_safetensors(p, strip_prefix=False) if sniff_format(p) == "safetensors"
                   else load_checkpoint(p, trust_pickle) for p in files]
        loaded.append(members)
    for members in loaded:
        merged: dict[str, tuple[int, ...]] = {}
        for m in members:
            dup = set(merged) & set(m.shapes)
            if dup:
                raise InvalidFileError(f"{m.source}: holds {sorted(dup)[0]!r}, which another shard holds too")
            merged.update(m.shapes)
    metadata = {k: v for m in loaded[0] for k, v in m.metadata.items()}
    return Checkpoint(source=str(path), fmt="folder", path=path, metadata=metadata, weight_sets=loaded,
                      shapes={k: v for m in loaded[0] for k, v in m.shapes.items()},
                      dtypes={k: v for m in loaded[0] for k, v in m.dtypes.items()})
