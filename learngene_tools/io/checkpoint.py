"""Checkpoint I/O: read any state_dict checkpoint, write it back in its own format and wrapper.

Formats are told apart by content, not extension: safetensors (length-prefixed JSON
header), torch zip pickles and legacy torch pickles; a folder is a save_pretrained layout
(config and other files beside one or more weight sets, maybe sharded with an index).
Pickles load with ``weights_only=True`` unless the caller trusts the file. A checkpoint may
hold several copies of the weights (the model and its EMA, a folder's safetensors and .bin
files, ultralytics' pickled `model` and `ema`): all are read, checked to agree, and written
with the same updates. Outputs are written to a temporary file (or folder) beside the
destination and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Sequence

import torch

from learngene_tools.errors import InvalidFileError, NotFoundError, OutputError, UnsafeInputError
from learngene_tools.io.files import atomic_path, check_input, open_input, reading
from learngene_tools.io.header import SafetensorsHeader, encode_header, looks_like_safetensors, read_header
from learngene_tools.io.tensors import ST_TO_TORCH, TORCH_TO_ST, tensor_bytes, write_safetensors

WRAPPER_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema", "ema", "module", "net", "network")
EMA_KEYS = frozenset({"model_ema", "state_dict_ema", "ema"})
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_states")
FOLDER_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)

@dataclass
class WeightCopy:
    """One copy of the weights inside a pickled checkpoint (the model, an EMA), found under `path`."""

    path: tuple[str, ...]  # keys from the top of the container, () for a bare state_dict
    prefix: str
    state: dict[str, Any]  # prefixed key -> tensor (a pickled module's: its live parameters and buffers)
    module: torch.nn.Module | None = None  # a whole pickled model (ultralytics), written back as one

    @property
    def label(self) -> str:
        """E.g. "['state_dict_ema']", "['ema'] (DetectionModel)" or "bare state_dict"."""
        text = "".join(f"[{k!r}]" for k in self.path) or "bare state_dict"
        return text + (f" ({type(self.module).__name__})" if self.module is not None else "")

    @property
    def is_ema(self) -> bool:
        """True for an exponential-moving-average copy."""
        return bool(set(self.path) & EMA_KEYS)

    def get(self, key: str) -> torch.Tensor:
        """The tensor of an unprefixed key."""
        t = self.state[self.prefix + key]
        return t.detach() if self.module is not None else t

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Unprefixed key -> shape of every tensor."""
        n = len(self.prefix)
        return {k[n:]: tuple(v.shape) for k, v in self.state.items() if isinstance(v, torch.Tensor)}

    @contextlib.contextmanager
    def updated(self, updates: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """The copy holds `updates` (cast to its own dtypes) inside the block, its original tensors after it."""
        originals = {k: self.get(k) for k in updates}
        try:
            for k, t in updates.items():
                self._set(k, t.to(originals[k].dtype))
            yield
        finally:
            for k, t in originals.items():
                self._set(k, t)

    def _set(self, key: str, t: torch.Tensor) -> None:
        if self.module is not None:
            self.state[self.prefix + key].data = t
        else:
            self.state[self.prefix + key] = t


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors by unprefixed key, plus what is needed to write it back as it was."""

    source: str
    fmt: str  # "safetensors" | "pickle" | "model" | "folder"
    shapes: dict[str, tuple[int, ...]]  # unprefixed key -> shape, in checkpoint order
    dtypes: dict[str, torch.dtype]
    prefix: str = ""
    wrapper: tuple[str, ...] = ()
    path: Path | None = None
    arch: str | None = None  # set when the checkpoint was built from a model spec
    metadata: dict[str, str] = field(default_factory=dict)
    copies: list[WeightCopy] = field(default_factory=list)  # pickle/model: every copy, the first is the one read
    weight_sets: list[list[Checkpoint]] = field(default_factory=list)  # folder: each copy's files (shards)
    _header: SafetensorsHeader | None = None
    _container: Any = None  # pickle: the whole loaded object
    _state: dict[str, Any] | None = None  # pickle/model: the state dict inside it

    def tensor(self, key: str) -> torch.Tensor:
        """Load one tensor by its unprefixed key."""
        if self.copies:
            return self.copies[0].get(key)
        if self._state is not None:
            return self._state[self.prefix + key]
        if self.weight_sets:
            return next(c for c in self.weight_sets[0] if key in c.shapes).tensor(key)
        from safetensors import safe_open

        with _safetensors_errors(self.path):
            with safe_open(str(self.path), framework="pt") as f:
                return f.get_tensor(self.prefix + key)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors by unprefixed key (loads a safetensors file whole: use `tensor` for big ones)."""
        if self.copies or self._state is not None:
            return {k: self.tensor(k) for k in self.shapes}
        if self.weight_sets:
            return {k: v for c in self.weight_sets[0] for k, v in c.state_dict().items()}
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
        if self.fmt == "folder":
            return "folder with " + " and ".join(self.copy_labels)
        parts = []
        if self.wrapper:
            parts.append("under " + "".join(f"[{k!r}]" for k in self.wrapper))
        if self.prefix:
            parts.append(f"prefix {self.prefix!r}")
        if len(self.copies) > 1:
            parts.append("copies " + ", ".join(c.label for c in self.copies))
        elif self.copies and self.copies[0].module is not None:
            parts.append(f"a pickled {type(self.copies[0].module).__name__}")
        return ", ".join(parts) or "bare state_dict"

    @property
    def copy_labels(self) -> list[str]:
        """Every copy of the weights a transplant writes, in words."""
        if self.weight_sets:
            return [_set_label(s) for s in self.weight_sets]
        if self.copies:
            return [c.label for c in self.copies]
        return [Path(self.source).name if self.path is not None else "state_dict"]

    def check_copies_agree(self) -> None:
        """Raise InvalidFileError unless every copy of the weights has the same keys and shapes (each gets the
        same plan)."""
        if self.weight_sets:
            shapes = [{k: v for m in members for k, v in m.shapes.items()} for members in self.weight_sets]
        else:
            shapes = [c.shapes() for c in self.copies]
        labels = self.copy_labels
        for label, other in zip(labels[1:], shapes[1:]):
            if other != shapes[0]:
                diff = sorted(set(other) ^ set(shapes[0])) or [k for k in other if other[k] != shapes[0][k]]
                raise InvalidFileError(
                    f"{self.source}: its weight copies differ ({labels[0]}: {len(shapes[0])} tensors, {label}: "
                    f"{len(other)}; e.g. {diff[0]}); lgt writes every copy with the same plan and cannot do so here"
                )

    @property
    def optimizer_state(self) -> list[str]:
        """Entries holding optimizer state (top-level keys of a pickle, files of a folder)."""
        if self.fmt == "folder" and self.path is not None:
            return [n for n in FOLDER_OPTIMIZER_FILES if (self.path / n).is_file()]
        if isinstance(self._container, Mapping):
            return [k for k in OPTIMIZER_KEYS if self._container.get(k) is not None]
        return []


def _set_label(files: list[Checkpoint]) -> str:
    names = [Path(c.source).name for c in files]
    return names[0] if len(names) == 1 else f"{len(names)} shards ({names[0]} …)"


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


def _weight_files(folder: Path) -> list[list[Path]]:
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


FOLDER_WEIGHT_PICKLES = ("pytorch_model.bin", "model.bin")


def load_folder(path: Path, trust_pickle: bool = False) -> Checkpoint:
    """Open a save_pretrained folder: every weight set (safetensors first), each maybe sharded."""
    sets = _weight_files(path)
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


def copy_readers(ckpt: Checkpoint) -> list[Callable[[str], torch.Tensor]]:
    """For each copy of the weights (`copy_labels`' order), a function reading one of its tensors."""
    if ckpt.copies:
        return [c.get for c in ckpt.copies]
    if ckpt.weight_sets:
        def reader(members: list[Checkpoint]) -> Callable[[str], torch.Tensor]:
            return lambda key: next(m for m in members if key in m.shapes).tensor(key)
        return [reader(members) for members in ckpt.weight_sets]
    return [ckpt.tensor]


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
    replace: bool = False,
) -> None:
    """Write `ckpt` with `updates` applied to every copy of its weights to `out`, atomically, in the checkpoint's
    own format and wrapper.

    `updates` is one mapping for every copy, or one per copy (`copy_readers` order). `metadata` is added to a
    safetensors header (pickles have nowhere neutral to hold it). `drop` names entries to leave out: optimizer
    state (`ckpt.optimizer_state`). An existing `out` is replaced only with `replace` (--force); without it, one
    that appears while this runs makes the write fail instead of being overwritten.
    """
    n = max(1, len(ckpt.copies) or len(ckpt.weight_sets))
    per_copy = list(updates) if isinstance(updates, (list, tuple)) else [updates] * n
    if len(per_copy) != n:
        raise AssertionError(f"{len(per_copy)} update sets for {n} weight copies")
    for u in per_copy:
        for key, t in u.items():
            if key not in ckpt.shapes or tuple(t.shape) != ckpt.shapes[key] or t.dtype != ckpt.dtypes[key]:
                raise AssertionError(f"update for {key} does not match the target's key/shape/dtype")
    fmt = output_format(ckpt, out)
    if fmt == "folder":
        from learngene_tools.io.folders import atomic_folder

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
