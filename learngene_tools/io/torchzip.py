"""Writing a transplanted torch zip checkpoint without loading it: copy the file, rewrite only the changed storages.

`torch.save`'s zip format stores every storage uncompressed as its own record (`<archive>/data/<key>`) beside the
pickle (`<archive>/data.pkl`) that says which tensor views which storage. A transplant changes tensor values, never
shapes, dtypes or which storage a tensor views, so the pickle can stay as it is: the output is the input file,
copied in the kernel, with the changed tensors' bytes written over their place in their storage records and those
records' CRC-32 fields recomputed. Peak memory is the changed tensors, not the checkpoint.

The pickle is read here with an unpickler that imports and calls nothing: every global becomes an inert
placeholder except the few torch functions that rebuild tensors, which become records of (storage key, offset,
size, stride). So a checkpoint whose pickle needs --trust-pickle is handled the same way, without running it again.

Whenever the result could differ from loading, updating and `torch.save`-ing the checkpoint (a changed tensor
shares bytes with one that keeps its values, a storage the pickle hands to something other than a tensor rebuild,
a compressed record, a big-endian file, a legacy non-zip pickle, ...), `patch_torch_zip` declines and the caller
writes the file the old way.
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from learngene_tools.io.files import open_input, reading

_CD_SIG, _LOCAL_SIG, _DESC_SIG = 0x02014B50, 0x04034B50, 0x08074B50
_EOCD_SIG, _EOCD64_LOC_SIG, _EOCD64_SIG = 0x06054B50, 0x07064B50, 0x06064B50
_CHUNK = 1 << 20
_PICKLE_LIMIT = 1 << 30  # a data.pkl larger than this is not a weights pickle we patch


class NotPatchable(Exception):
    """The checkpoint cannot be patched in place with the same result as a full save; the reason is the message."""


# --- reading the pickle without running it -----------------------------------------------------------------


@dataclass(eq=False)
class StorageRef:
    key: str
    dtype: torch.dtype
    numel: int  # in elements of `dtype`


@dataclass(eq=False)
class TensorRef:
    """One tensor view as the pickle rebuilds it: offset and strides in elements of `dtype`."""

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    def span(self) -> tuple[int, int]:
        """The [first, last) bytes of its storage that the view can touch (empty for no elements)."""
        isz = torch.empty((), dtype=self.dtype).element_size()
        if any(s == 0 for s in self.size):
            return (self.offset * isz, self.offset * isz)
        last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
        return (self.offset * isz, (last + 1) * isz)

    def contiguous(self) -> bool:
        expected = 1
        for s, st in zip(reversed(self.size), reversed(self.stride)):
            if s != 1 and st != expected:
                return False
            expected *= s
        return True


class _Stub:
    """Any object of the pickle other than a tensor: keeps what it was built from, runs nothing."""

    _lgt_name = "?"
    _lgt_escaped: list[StorageRef] = []  # each unpickler's placeholder classes get their own list

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        obj = object.__new__(cls)
        obj._lgt_args = args
        obj._lgt_state = None
        obj._lgt_items = {}
        obj._lgt_list = []
        _note_storages(cls._lgt_escaped, args, kwargs)
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        _note_storages(self._lgt_escaped, state)
        self._lgt_state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        _note_storages(self._lgt_escaped, key, value)
        self._lgt_items[key] = value

    def append(self, value: Any) -> None:
        _note_storages(self._lgt_escaped, value)
        self._lgt_list.append(value)

    def extend(self, values: Any) -> None:
        for v in values:
            self.append(v)


def _note_storages(escaped: list[StorageRef], *values: Any, depth: int = 4) -> None:
    """Remember every storage passed to a placeholder: its bytes may mean something we do not model."""
    for v in values:
        if isinstance(v, StorageRef):
            escaped.append(v)
        elif depth > 0 and isinstance(v, (tuple, list)):
            _note_storages(escaped, *v, depth=depth - 1)
        elif depth > 0 and isinstance(v, dict):
            _note_storages(escaped, *v.keys(), *v.values(), depth=depth - 1)


class _InertUnpickler(pickle.Unpickler):
    def __init__(self, f: Any) -> None:
        super().__init__(f)
        self.storages: dict[str, StorageRef] = {}
        self.tensors: list[TensorRef] = []
        self.consumed: collections.Counter[str] = collections.Counter()
        self.loaded: collections.Counter[str] = collections.Counter()
        self._classes: dict[tuple[str, str], type] = {}
        self.escaped: list[StorageRef] = []  # storages handed to something other than a tensor rebuild

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise NotPatchable(f"unknown persistent id {str(pid)[:60]}")
        _, storage_type, key, _location, numel = pid
        key = str(key)
        if isinstance(storage_type, torch.dtype):
            dtype = storage_type
        elif isinstance(storage_type, _StorageType):
            dtype = storage_type.dtype
        else:
            raise NotPatchable(f"unknown storage type {storage_type!r}")
        ref = self.storages.setdefault(key, StorageRef(key, dtype, int(numel)))
        if ref.dtype != dtype or ref.numel != int(numel):
            raise NotPatchable(f"storage {key} is described twice differently")
        self.loaded[key] += 1
        return ref

    def _rebuild(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None) -> TensorRef:
        if not isinstance(storage, StorageRef):
            raise NotPatchable("a tensor rebuilt from something other than a stored storage")
        self.consumed[storage.key] += 1
        t = TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride),
                      dtype or storage.dtype)
        self.tensors.append(t)
        return t

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils":
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return lambda storage, offset, size, stride, *rest: self._rebuild(storage, offset, size, stride)
            if name == "_rebuild_tensor_v3":
                return lambda storage, offset, size, stride, rg, hooks, dtype, *rest: self._rebuild(
                    storage, offset, size, stride, dtype)
            if name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
                return lambda data, *rest: data
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return lambda func, new_type, args, state: func(*args)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
            try:
                return _StorageType(torch.storage._get_dtype_from_pickle_storage_type(name))
            except Exception:  # noqa: BLE001 - an unknown storage type: not ours to patch
                raise NotPatchable(f"unknown storage type torch.{name}") from None
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "copyreg" and name == "_reconstructor":
            return lambda cls, base, state: cls.__new__(cls) if isinstance(cls, type) and issubclass(cls, _Stub) \
                else self._stub("copyreg", "_reconstructor")(cls, base, state)
        return self._stub(module, name)

    def _stub(self, module: str, name: str) -> type:
        if (module, name) not in self._classes:
            self._classes[(module, name)] = type(name, (_Stub,), {"_lgt_name": f"{module}.{name}",
                                                                  "_lgt_escaped": self.escaped})
        return self._classes[(module, name)]


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def read_pickle(data: bytes) -> tuple[Any, _InertUnpickler, list[StorageRef]]:
    """The pickle's object tree with placeholders, the unpickler (its storages and tensor views), escaped storages."""
    import io

    u = _InertUnpickler(io.BytesIO(data))
    try:
        root = u.load()
    except NotPatchable:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the pickle holds, an odd one is simply not patched
        raise NotPatchable(f"pickle not readable inertly ({type(e).__name__}: {str(e)[:80]})") from None
    return root, u, u.escaped


# --- the zip file's layout --------------------------------------------------------------------------------


@dataclass
class _Record:
    name: str
    local_offset: int  # of the local file header
    data_offset: int
    size: int
    crc: int
    flags: int
    cd_offset: int  # of its central directory entry


def _read_at(f: Any, offset: int, n: int) -> bytes:
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise NotPatchable("zip file ended early")
    return data


def _zip_records(f: Any, file_size: int) -> dict[str, _Record]:
    """Every record of an (uncompressed, unencrypted) zip file by name, located from its central directory."""
    tail_len = min(file_size, 22 + 65535)
    tail = _read_at(f, file_size - tail_len, tail_len)
    at = tail.rfind(struct.pack("<I", _EOCD_SIG))
    if at < 0:
        raise NotPatchable("no end of central directory")
    _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack("<IHHHHIIH", tail[at:at + 22])
    eocd_pos = file_size - tail_len + at
    if count == 0xFFFF or cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:  # zip64
        loc = _read_at(f, eocd_pos - 20, 20)
        sig, _, eocd64_pos, _ = struct.unpack("<IIQI", loc)
        if sig != _EOCD64_LOC_SIG:
            raise NotPatchable("zip64 locator missing")
        rec = _read_at(f, eocd64_pos, 56)
        sig, _, _, _, _, _, _, count, cd_size, cd_offset = struct.unpack("<IQHHIIQQQQ", rec)
        if sig != _EOCD64_SIG:
            raise NotPatchable("zip64 end record missing")
    cd = _read_at(f, cd_offset, cd_size)
    records: dict[str, _Record] = {}
    pos = 0
    for _ in range(count):
        (sig, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, _, _, _, local) = struct.unpack(
            "<IHHHHHHIIIHHHHHII", cd[pos:pos + 46])
        if sig != _CD_SIG:
            raise NotPatchable("damaged central directory")
        name = cd[pos + 46:pos + 46 + nlen].decode("utf-8", "replace")
        extra = cd[pos + 46 + nlen:pos + 46 + nlen + elen]
        usize, csize, local = _zip64_fields(extra, usize, csize, local)
        if method != 0 or flags & 0x1 or csize != usize:
            raise NotPatchable(f"record {name} is compressed or encrypted")
        records[name] = _Record(name, local, -1, usize, crc, flags, cd_offset + pos)
        pos += 46 + nlen + elen + clen
    for r in records.values():
        head = _read_at(f, r.local_offset, 30)
        sig, nlen, elen = struct.unpack("<I", head[:4])[0], *struct.unpack("<HH", head[26:30])
        if sig != _LOCAL_SIG:
            raise NotPatchable(f"record {r.name}: no local header")
        r.data_offset = r.local_offset + 30 + nlen + elen
        if r.data_offset + r.size > file_size:
            raise NotPatchable(f"record {r.name} runs past the end of the file")
    return records


def _zip64_fields(extra: bytes, usize: int, csize: int, local: int) -> tuple[int, int, int]:
    """Sizes and local header offset, taking the zip64 extra field where the 32-bit ones overflowed."""
    pos = 0
    while pos + 4 <= len(extra):
        hid, hlen = struct.unpack("<HH", extra[pos:pos + 4])
        body = extra[pos + 4:pos + 4 + hlen]
        if hid == 0x0001:
            vals, at = [], 0
            for present in (usize == 0xFFFFFFFF, csize == 0xFFFFFFFF, local == 0xFFFFFFFF):
                if present:
                    vals.append(struct.unpack("<Q", body[at:at + 8])[0])
                    at += 8
                else:
                    vals.append(None)
            usize = vals[0] if vals[0] is not None else usize
            csize = vals[1] if vals[1] is not None else csize
            local = vals[2] if vals[2] is not None else local
        pos += 4 + hlen
    return usize, csize, local


# --- the patch ------------------------------------------------------------------------------------------


def _lookup(node: Any, key: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(key)
    if isinstance(node, _Stub):
        if key in node._lgt_items:
            return node._lgt_items[key]
        if isinstance(node._lgt_state, Mapping):
            return node._lgt_state.get(key)
    return None


def _module_tensor(module: Any, key: str) -> Any:
    """A pickled module's parameter or buffer by state_dict key, through `_modules`, `_parameters`, `_buffers`."""
    *path, last = key.split(".")
    node = module
    for part in path:
        node = _lookup(_lookup(node, "_modules"), part)
        if node is None:
            return None
    for where in ("_parameters", "_buffers"):
        t = _lookup(_lookup(node, where), last)
        if t is not None:
            return t
    return None


def _count_uses(root: Any) -> collections.Counter[int]:
    """How many places of the object tree hold each tensor view (by id): a view held twice is tied."""
    uses: collections.Counter[int] = collections.Counter()
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, TensorRef):
            uses[id(node)] += 1
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Mapping):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            stack.extend(node)
        elif isinstance(node, _Stub):
            stack.extend((node._lgt_args, node._lgt_state, node._lgt_items, node._lgt_list))
    return uses


def _new_bytes(ref: TensorRef, t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu", ref.dtype).contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _plan_writes(root: Any, unpickler: _InertUnpickler, escaped: list[StorageRef], copies: Sequence[Any],
                 per_copy: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, list[tuple[TensorRef, torch.Tensor]]]:
    """Storage key -> the views to rewrite and their new values; NotPatchable where a full save would differ."""
    chosen: dict[int, tuple[TensorRef, torch.Tensor, int]] = {}  # id(view) -> view, value, places updated
    for copy, updates in zip(copies, per_copy):
        node = root
        for k in copy.path:
            node = _lookup(node, k)
            if node is None:
                raise NotPatchable(f"wrapper {copy.label} not found in the pickle")
        for key, value in updates.items():
            full = copy.prefix + key
            ref = _module_tensor(node, full) if copy.module is not None else _lookup(node, full)
            if not isinstance(ref, TensorRef):
                raise NotPatchable(f"{copy.label} {full}: not a plain stored tensor")
            live = copy.state[full]
            if (tuple(live.shape) != ref.size or live.dtype != ref.dtype or tuple(live.stride()) != ref.stride
                    or live.storage_offset() != ref.offset):
                raise NotPatchable(f"{copy.label} {full}: the pickle's view differs from the loaded tensor")
            value = value.to(ref.dtype)
            if id(ref) in chosen:
                other, other_value, n = chosen[id(ref)]
                if not torch.equal(other_value, value):
                    raise NotPatchable(f"{full}: one tensor, two different new values")
                chosen[id(ref)] = (ref, other_value, n + 1)
            else:
                chosen[id(ref)] = (ref, value, 1)
    if not chosen:
        return {}
    uses = _count_uses(root)
    escaped_keys = {s.key for s in escaped}
    by_storage: dict[str, list[TensorRef]] = collections.defaultdict(list)
    for t in unpickler.tensors:
        by_storage[t.storage.key].append(t)
    writes: dict[str, list[tuple[TensorRef, torch.Tensor]]] = collections.defaultdict(list)
    for ref, value, places in chosen.values():
        key = ref.storage.key
        if key in escaped_keys or unpickler.loaded[key] != unpickler.consumed[key]:
            raise NotPatchable(f"storage {key} is used by more than tensor views")
        if uses[id(ref)] != places:
            raise NotPatchable(f"storage {key}: a changed tensor is also held unchanged elsewhere (tied)")
        lo, hi = ref.span()
        if hi > ref.storage.numel * torch.empty((), dtype=ref.storage.dtype).element_size():
            raise NotPatchable(f"storage {key}: a view runs past its storage")
        for other in by_storage[key]:
            if other is ref or id(other) in chosen and other.span() == (lo, hi) and other.size == ref.size \
                    and other.stride == ref.stride and torch.equal(chosen[id(other)][1], value):
                continue
            olo, ohi = other.span()
            if olo < hi and lo < ohi:
                raise NotPatchable(f"storage {key}: a changed tensor overlaps another view of the same storage")
        writes[key].append((ref, value))
    return writes


def _crc_of(f: Any, offset: int, size: int) -> int:
    crc = 0
    f.seek(offset)
    while size > 0:
        chunk = f.read(min(size, _CHUNK))
        if not chunk:
            raise OSError("output ended early")
        crc = zlib.crc32(chunk, crc)
        size -= len(chunk)
    return crc


def _crc_places(f: Any, r: _Record) -> list[int]:
    """Where the zip states a record's CRC-32: its central directory entry, its local header (unless a data
    descriptor holds it there as 0) and its data descriptor ([signature] crc sizes after the data)."""
    places = [r.cd_offset + 16]
    if struct.unpack("<I", _read_at(f, r.local_offset + 14, 4))[0] == r.crc:
        places.append(r.local_offset + 14)
    if r.flags & 0x8:
        first, second = struct.unpack("<II", _read_at(f, r.data_offset + r.size, 8))
        if first == _DESC_SIG and second == r.crc:
            places.append(r.data_offset + r.size + 4)
        elif first == r.crc:
            places.append(r.data_offset + r.size)
        else:
            raise NotPatchable(f"record {r.name}: data descriptor not found")
    elif len(places) == 1:
        raise NotPatchable(f"record {r.name}: local header and central directory disagree")
    return places


def _set_crc(f: Any, r: _Record, places: list[int]) -> None:
    """Recompute a rewritten record's CRC-32 (kept 0 where the file was written without CRCs)."""
    f.flush()
    new = _crc_of(f, r.data_offset, r.size) if r.crc != 0 else 0
    for at in places:
        f.seek(at)
        f.write(struct.pack("<I", new))


def _plan(src: Any, size: int, copies: Sequence[Any], per_copy: Sequence[Mapping[str, torch.Tensor]]) -> tuple:
    """What to rewrite and where (NotPatchable when the checkpoint cannot be patched), read from the input."""
    records = _zip_records(src, size)
    pkl = [r for n, r in records.items() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise NotPatchable("no single <archive>/data.pkl")
    archive = pkl[0].name[: -len("data.pkl")]
    order = records.get(archive + "byteorder")
    if order is not None and _read_at(src, order.data_offset, order.size) != b"little":
        raise NotPatchable("big-endian storages")
    if pkl[0].size > _PICKLE_LIMIT:
        raise NotPatchable("data.pkl too large")
    root, unpickler, escaped = read_pickle(_read_at(src, pkl[0].data_offset, pkl[0].size))
    writes = _plan_writes(root, unpickler, escaped, copies, per_copy)
    targets = {}
    for key in writes:
        r = records.get(f"{archive}data/{key}")
        if r is None:
            raise NotPatchable(f"storage record data/{key} missing")
        s = unpickler.storages[key]
        if r.size != s.numel * torch.empty((), dtype=s.dtype).element_size():
            raise NotPatchable(f"storage record data/{key} has an unexpected size")
        targets[key] = (r, _crc_places(src, r))
    sid = records.get(archive + ".data/serialization_id")
    sid_places = _crc_places(src, sid) if sid is not None and sid.size > 0 else None
    return writes, targets, sid, sid_places


def patch_torch_zip(path: Path, copies: Sequence[Any], per_copy: Sequence[Mapping[str, torch.Tensor]], tmp: Path,
                    copy_range: Callable[[Any, Any, int, int], None]) -> bool:
    """Write `path` with `per_copy` updates applied to each of `copies` (io.checkpoint.WeightCopy) to `tmp`.

    Returns False, having written nothing that matters, when this checkpoint cannot be patched with the same
    result as a full `torch.save` (the caller then saves it the old way); the reason is in the `lgt.torchzip`
    debug log. `copy_range(src, dst, offset, length)` appends bytes of `src` to `dst` (the kernel-side copy).
    """
    with open_input(path) as src:
        try:
            with reading(path):
                size = os.fstat(src.fileno()).st_size
                writes, targets, sid, sid_places = _plan(src, size, copies, per_copy)
        except NotPatchable as e:
            import logging

            logging.getLogger("lgt.torchzip").debug("%s: saved in full (%s)", path, e)
            return False
        with open(tmp, "wb") as dst:
            copy_range(src, dst, 0, size)
    with open(tmp, "r+b") as f:
        for key, views in writes.items():
            r, places = targets[key]
            for ref, value in views:
                if ref.contiguous():
                    f.seek(r.data_offset + ref.offset * value.element_size())
                    f.write(_new_bytes(ref, value))
                else:  # a strided view: rewrite the bytes it spans
                    lo, hi = ref.span()
                    f.seek(r.data_offset + lo)
                    buf = bytearray(f.read(hi - lo))
                    region = torch.frombuffer(buf, dtype=torch.uint8).view(ref.dtype)
                    region.as_strided(ref.size, ref.stride, 0).copy_(value.to(ref.dtype))
                    f.seek(r.data_offset + lo)
                    f.write(bytes(buf))
            _set_crc(f, r, places)
        if sid is not None and sid_places is not None and writes:
            # torch derives the id from the content: other content, another id; the same content, the same id
            f.seek(sid.data_offset)
            h = hashlib.sha256(f.read(sid.size))
            for key in sorted(writes):
                r = targets[key][0]
                f.seek(r.cd_offset + 16)
                h.update(key.encode() + f.read(4))  # the record's new CRC-32
            digits = str(int(h.hexdigest(), 16) % 10**sid.size).zfill(sid.size)
            f.seek(sid.data_offset)
            f.write(digits.encode())
            _set_crc(f, sid, sid_places)
    return True
