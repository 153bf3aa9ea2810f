"""Checkpoint I/O: read any state_dict checkpoint, write it back in its own format and wrapper.

Formats are told apart by content, not extension: safetensors (length-prefixed JSON
header), torch zip pickles and legacy torch pickles. Pickles load with
``weights_only=True`` unless the caller trusts the file. Outputs are written to a
temporary file in the destination folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import torch

from learngene_tools.errors import InvalidFileError, OutputError, UnsafeInputError
from learngene_tools.io.files import atomic_path, check_input, open_input, reading
from learngene_tools.io.header import SafetensorsHeader, encode_header, looks_like_safetensors, read_header
from learngene_tools.io.tensors import ST_TO_TORCH, TORCH_TO_ST, tensor_bytes, write_safetensors

WRAPPER_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema", "module", "net", "network")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)

@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors by unprefixed key, plus what is needed to write it back as it was."""

    source: str
    fmt: str  # "safetensors" | "pickle" | "model"
    shapes: dict[str, tuple[int, ...]]  # unprefixed key -> shape, in checkpoint order
    dtypes: dict[str, torch.dtype]
    prefix: str = ""
    wrapper: tuple[str, ...] = ()
    path: Path | None = None
    arch: str | None = None  # set when the checkpoint was built from a model spec
    metadata: dict[str, str] = field(default_factory=dict)
    _header: SafetensorsHeader | None = None
    _container: Any = None  # pickle: the whole loaded object
    _state: dict[str, Any] | None = None  # pickle/model: the state dict inside it

    def tensor(self, key: str) -> torch.Tensor:
        """Load one tensor by its unprefixed key."""
        if self._state is not None:
            return self._state[self.prefix + key]
        from safetensors import safe_open

        with _safetensors_errors(self.path):
            with safe_open(str(self.path), framework="pt") as f:
                return f.get_tensor(self.prefix + key)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors by unprefixed key (loads a safetensors file whole: use `tensor` for big ones)."""
        if self._state is not None:
            return {k: self._state[self.prefix + k] for k in self.shapes}
        from safetensors.torch import load_file

        with _safetensors_errors(self.path):
            sd = load_file(str(self.path))
        return {k: sd[self.prefix + k] for k in self.shapes}

    @property
    def container(self) -> Any:
        """The whole loaded object of a pickle (the dict around the state_dict), None for other formats."""
        return self._container

    @property
    def wrapper_desc(self) -> str:
        """Human description of the wrapper and prefix, e.g. "['model'], prefix 'module.'"."""
        parts = []
        if self.wrapper:
            parts.append("under " + "".join(f"[{k!r}]" for k in self.wrapper))
        if self.prefix:
            parts.append(f"prefix {self.prefix!r}")
        return ", ".join(parts) or "bare state_dict"


@contextlib.contextmanager
def _safetensors_errors(path: Path | None) -> Any:
    """safetensors reads a file our reader already accepted; if it changed since, that is one line, not a crash."""
    from safetensors import SafetensorError

    check_input(path)  # type: ignore[arg-type]  (never hand a FIFO swapped in meanwhile to safetensors)
    try:
        yield
    except (SafetensorError, OSError) as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InvalidFileError(f"{path}: cannot read the safetensors file ({msg}); did it change while lgt ran?") from None


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


def load_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    """Open a checkpoint file: safetensors headers only (tensors load on demand), pickles whole (mmap)."""
    path = Path(path)
    _check_file(path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        header = read_header(path)
        keys = list(header.tensors)
        prefix = common_prefix(keys)
        unknown = sorted({e.dtype for e in header.tensors.values()} - set(ST_TO_TORCH))
        if unknown:
            raise InvalidFileError(f"{path}: unsupported tensor dtypes {', '.join(unknown)}")
        return Checkpoint(
            source=str(path), fmt=fmt, path=path, prefix=prefix, metadata=dict(header.metadata), _header=header,
            shapes={k[len(prefix):]: e.shape for k, e in header.tensors.items()},
            dtypes={k[len(prefix):]: ST_TO_TORCH[e.dtype] for k, e in header.tensors.items()},
        )
    obj = torch_load(path, trust_pickle)
    if isinstance(obj, torch.nn.Module):
        raise InvalidFileError(f"{path}: holds a whole pickled nn.Module; save `model.state_dict()` instead and pass that")
    found = find_state_dict(obj)
    if found is None:
        top = ", ".join(map(repr, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise InvalidFileError(
            f"{path}: no state_dict found (looked at the top level and under {', '.join(WRAPPER_KEYS)}; top level has {top})"
        )
    state, wrapper = found
    tensor_keys = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    prefix = common_prefix(tensor_keys)
    return Checkpoint(
        source=str(path), fmt="pickle", path=path, prefix=prefix, wrapper=wrapper, _container=obj, _state=state,
        shapes={k[len(prefix):]: tuple(state[k].shape) for k in tensor_keys},
        dtypes={k[len(prefix):]: state[k].dtype for k in tensor_keys},
    )


def checkpoint_from_state_dict(state: dict[str, torch.Tensor], source: str, arch: str | None = None) -> Checkpoint:
    """Wrap an in-memory state_dict (e.g. of a freshly built model) as a Checkpoint."""
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return Checkpoint(
        source=source, fmt="model", arch=arch, _state=state,
        shapes={k: tuple(v.shape) for k, v in state.items()},
        dtypes={k: v.dtype for k, v in state.items()},
    )


def output_format(ckpt: Checkpoint, out: Path) -> str:
    """The format `out` will be written in: the target's own, or by extension for a built model."""
    by_ext = "safetensors" if out.suffix in SAFETENSORS_SUFFIXES else "pickle" if out.suffix in PICKLE_SUFFIXES else None
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


def _torch_save(obj: Any, tmp: Path, zip_format: bool = True) -> None:
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
    updates: Mapping[str, torch.Tensor],
    out: Path,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `ckpt` with `updates` applied to `out`, atomically, in the checkpoint's own format and wrapper.

    `metadata` is added to a safetensors header (pickles have nowhere neutral to hold it).
    """
    for key, t in updates.items():
        if key not in ckpt.shapes or tuple(t.shape) != ckpt.shapes[key] or t.dtype != ckpt.dtypes[key]:
            raise AssertionError(f"update for {key} does not match the target's key/shape/dtype")
    fmt = output_format(ckpt, out)
    meta = {**ckpt.metadata, **(metadata or {})}
    with atomic_path(out) as tmp:
        if ckpt.fmt == "safetensors":
            _patch_safetensors(ckpt, updates, tmp, meta)
        elif ckpt.fmt == "pickle":
            assert ckpt._state is not None
            originals = {k: ckpt._state[ckpt.prefix + k] for k in updates}
            try:
                for k, t in updates.items():
                    ckpt._state[ckpt.prefix + k] = t
                _torch_save(ckpt._container, tmp, zip_format=zipfile.is_zipfile(ckpt.path))
            finally:
                ckpt._state.update({ckpt.prefix + k: v for k, v in originals.items()})
        else:
            state = {**ckpt.state_dict(), **updates}
            if fmt == "safetensors":
                with open(tmp, "wb") as f:
                    write_safetensors(state, meta, f)
            else:
                _torch_save(state, tmp)
