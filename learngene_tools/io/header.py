"""Read and validate a safetensors header without importing torch.

This is the one reader every path uses before a file reaches safetensors (or torch): it accepts
no file that safetensors' own reader (safetensors/src/tensor.rs, `SafeTensors::read_metadata`,
0.4 to 0.8) rejects, and it is stricter where the two would otherwise disagree:

- header length at most 100,000,000 bytes (safetensors' MAX_HEADER_SIZE) and inside the file;
- UTF-8 JSON; numbers are non-negative integers below 2**64 (no floats, no `1e400`, no `-0`,
  no NaN); strings are valid Unicode (no lone surrogates); no duplicate keys;
- every tensor entry has exactly `dtype` (a safetensors dtype), `shape` and `data_offsets`
  (two integers); the element count times the dtype's bits fits in 64 bits, ends on a byte,
  and matches the byte count;
- the data regions are contiguous from offset 0 and end exactly at the end of the file.

`lgt inspect` describes a bundle from its header alone; this module is the only thing that
path needs, so it uses the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Collection, Iterable

from learngene_tools.errors import InvalidFileError, LgtError
from learngene_tools.io.files import open_input, reading

# Bits per element of every safetensors dtype (safetensors 0.8 `Dtype::bitsize`).
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
DTYPE_SIZES = {k: v // 8 for k, v in DTYPE_BITS.items() if v % 8 == 0}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_HEADER_BYTES = 100_000_000  # safetensors' MAX_HEADER_SIZE: a larger header is refused by safetensors itself
MAX_USIZE = 2**64 - 1  # safetensors reads shapes and offsets as usize
_CHUNK = 1 << 20  # a multiple of every element size, so chunks of a tensor hold whole elements


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's place in a safetensors file (offsets are absolute file offsets)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed, validated header of a safetensors file."""

    source: str
    data_start: int
    file_size: int
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]  # in file order


class _Bad(Exception):
    """A header value safetensors would refuse (raised from inside the JSON parser's hooks)."""


def _text(s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad("a string holds a lone surrogate escape") from None
    return s


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Bad(f"duplicate key {k[:60]!r}")
        out[_text(k)] = _text(v) if isinstance(v, str) else v
    return out


def _int(s: str) -> int:
    if s.startswith("-"):
        raise _Bad(f"negative number {s[:30]}")
    if len(s) > 20 or int(s) > MAX_USIZE:
        raise _Bad(f"number {s[:30]}{'…' if len(s) > 30 else ''} does not fit in 64 bits")
    return int(s)


def _float(s: str) -> float:
    raise _Bad(f"number {s[:30]} is not a non-negative integer")


def _constant(s: str) -> float:
    raise _Bad(f"{s} is not JSON")


def _load_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("header is not UTF-8 text") from None
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise _Bad(f"header is not JSON: {e.msg} at char {e.pos}") from None
    except RecursionError:
        raise _Bad("header JSON is nested too deeply") from None
    except ValueError as e:
        raise _Bad(f"header is not valid JSON: {str(e)[:80]}") from None


def _is_uint(x: Any) -> bool:
    return type(x) is int  # JSON true/false parse to bool, a subclass of int


def _entry(name: str, info: Any, data_start: int, source: str) -> TensorEntry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _Bad(f"header entry of tensor {name[:60]!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _Bad(f"tensor {name[:60]!r} has unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise _Bad(f"tensor {name[:60]!r} has a shape that is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(x) for x in offsets):
        raise _Bad(f"tensor {name[:60]!r} has data_offsets that are not two non-negative integers")
    begin, end = offsets
    if end < begin:
        raise _Bad(f"tensor {name[:60]!r} ends before it begins")
    n = 1
    for d in shape:  # in safetensors' order: an overflow on the way counts even if a later 0 would cancel it
        n *= d
        if n > MAX_USIZE:
            raise _Bad(f"the shape of tensor {name[:60]!r} overflows 64 bits")
    bits = n * DTYPE_BITS[dtype]
    if bits > MAX_USIZE:
        raise _Bad(f"the shape of tensor {name[:60]!r} overflows 64 bits")
    if bits % 8:
        raise _Bad(f"tensor {name[:60]!r} ({dtype}{shape}) does not end on a byte boundary")
    if end - begin != bits // 8:
        raise InvalidFileError(
            f"{source}: corrupted safetensors file: tensor {name[:60]!r} has {end - begin} bytes "
            f"but {dtype}{shape} needs {bits // 8}"
        )
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, data_start + end)


def parse_header(raw: bytes, file_size: int, source: str) -> SafetensorsHeader:
    """Validate the JSON header `raw` (the bytes after the 8-byte length) of a file of `file_size` bytes."""
    data_start = 8 + len(raw)
    try:
        obj = _load_json(raw)
        if not isinstance(obj, dict):
            raise _Bad("header is not a JSON object")
        metadata = obj.pop("__metadata__", None)
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise _Bad("__metadata__ must map strings to strings")
        entries = [_entry(name, info, data_start, source) for name, info in obj.items()]
    except _Bad as e:
        raise InvalidFileError(f"{source}: not a valid safetensors file ({e})") from None
    entries.sort(key=lambda e: (e.start, e.end))
    pos = data_start
    for e in entries:
        if e.start != pos:
            raise InvalidFileError(
                f"{source}: corrupted safetensors file: tensor {e.name[:60]!r} overlaps or leaves a gap in the data")
        pos = e.end
    if pos > file_size:
        raise InvalidFileError(
            f"{source}: truncated safetensors file: the header needs {pos} bytes but the file has {file_size}; "
            "download or write it again"
        )
    if pos < file_size:
        raise InvalidFileError(
            f"{source}: not a valid safetensors file ({file_size - pos} bytes after the last tensor's data); "
            "it was damaged or appended to: download or write it again"
        )
    return SafetensorsHeader(source, data_start, file_size, metadata, {e.name: e for e in entries})


def header_length(first8: bytes, file_size: int, source: str) -> int:
    """Decode and sanity-check the 8-byte little-endian header length that opens a safetensors file."""
    if len(first8) < 8:
        raise InvalidFileError(f"{source}: not a safetensors file (only {len(first8)} bytes)")
    (n,) = struct.unpack("<Q", first8)
    if n > MAX_HEADER_BYTES:
        raise InvalidFileError(f"{source}: not a valid safetensors file (header length {n:,} is above safetensors' "
                               f"limit of {MAX_HEADER_BYTES:,} bytes)")
    if n < 2 or n + 8 > file_size:
        raise InvalidFileError(f"{source}: not a valid safetensors file (header length {n} does not fit a file of "
                               f"{file_size} bytes)")
    return n


def read_header(path: str | Path) -> SafetensorsHeader:
    """Read and validate the header of a local safetensors file (a regular file; never blocks on a FIFO)."""
    with open_input(path) as f, reading(path):
        size = os.fstat(f.fileno()).st_size
        n = header_length(f.read(8), size, str(path))
        raw = f.read(n)
    if len(raw) != n:
        raise InvalidFileError(f"{path}: truncated safetensors file (it ended inside its header); write it again")
    return parse_header(raw, size, str(path))


def looks_like_safetensors(path: str | Path) -> bool:
    """True when the file starts like a safetensors file (length prefix then '{'); False for anything unreadable."""
    try:
        with open_input(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(9)
    except (LgtError, OSError):
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= min(MAX_HEADER_BYTES, size - 8) and head[8:9] == b"{"


# --- tensor bytes: hash and non-finite values --------------------------------------------------------------

# (element bytes, [(byte, mask)]): an element whose masked bytes are all set has an all-ones exponent (inf or NaN)
_EXPONENT = {
    "F16": (2, ((1, 0x7C),)), "BF16": (2, ((1, 0x7F), (0, 0x80))),
    "F32": (4, ((3, 0x7F), (2, 0x80))), "F64": (8, ((7, 0x7F), (6, 0xF0))),
}
_TABLES = {mask: bytes(1 if b & mask == mask else 0 for b in range(256)) for mask in (0x7C, 0x7F, 0x80, 0xF0)}


def has_nonfinite(data: bytes, dtype: str) -> bool:
    """True when little-endian float data of `dtype` (F16/BF16/F32/F64) holds an inf or NaN (C-speed byte scans)."""
    size, parts = _EXPONENT[dtype]
    hit = -1
    for index, mask in parts:
        hit &= int.from_bytes(data[index::size].translate(_TABLES[mask]), "little")
    return hit != 0


def hash_entry_prefix(h: Any, name: str, dtype: str, shape: Iterable[int]) -> None:
    """Feed one tensor's name, dtype and shape to the tensor hash (its bytes follow)."""
    h.update(json.dumps([name, dtype, list(shape)]).encode())


def tensor_hash(f: BinaryIO, header: SafetensorsHeader, finite: Collection[str] = ()) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes in name order (metadata excluded).

    Tensors named in `finite` (of a float dtype) are also checked for inf/NaN on the way.
    """
    h = hashlib.sha256()
    with reading(header.source):
        for name in sorted(header.tensors):
            e = header.tensors[name]
            hash_entry_prefix(h, name, e.dtype, e.shape)
            check = name in finite and e.dtype in _EXPONENT
            f.seek(e.start)
            left = e.nbytes
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise InvalidFileError(f"{header.source}: truncated safetensors file (data ends inside tensor {name!r})")
                if check and has_nonfinite(chunk, e.dtype):
                    raise InvalidFileError(f"{header.source}: invalid bundle: tensor {name!r} holds inf or NaN values; "
                                           "the file is damaged or was exported from a diverged model")
                h.update(chunk)
                left -= len(chunk)
    return "sha256:" + h.hexdigest()


def encode_header(entries: Iterable[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str]) -> bytes:
    """Length prefix + JSON header for tensors laid out back to back in the given order.

    `entries` are (name, dtype, shape, nbytes). Keys are sorted, so equal inputs give equal bytes
    (safetensors' own writer orders metadata by a hash map). The JSON is space-padded to 8 bytes.
    """
    obj: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    pos = 0
    for name, dtype, shape, nbytes in entries:
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw
