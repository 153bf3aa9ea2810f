"""Read and validate a safetensors header without importing torch.

`lgt inspect` describes a bundle from its header alone; this module is the only
thing that path needs, so it uses the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

from learngene_tools.errors import InvalidFileError

# Bytes per element of every safetensors dtype we know; unknown dtypes are accepted
# (newer safetensors may add some) but their sizes cannot be checked.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
_CHUNK = 1 << 20


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


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def parse_header(raw: bytes, file_size: int, source: str) -> SafetensorsHeader:
    """Validate the JSON header `raw` (the bytes after the 8-byte length) of a file of `file_size` bytes."""
    data_start = 8 + len(raw)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidFileError(f"{source}: not a valid safetensors file (header is not JSON: {e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(obj, dict):
        raise InvalidFileError(f"{source}: not a valid safetensors file (header is not a JSON object)")
    metadata = obj.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InvalidFileError(f"{source}: not a valid safetensors file (__metadata__ must map strings to strings)")
    entries = []
    for name, info in obj.items():
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise InvalidFileError(f"{source}: not a valid safetensors file (bad header entry for tensor {name!r})") from None
        if begin < 0 or end < begin or any(d < 0 for d in shape):
            raise InvalidFileError(f"{source}: not a valid safetensors file (bad offsets or shape for tensor {name!r})")
        size = DTYPE_SIZES.get(dtype)
        if size is not None and (end - begin) != _numel(shape) * size:
            raise InvalidFileError(
                f"{source}: corrupted safetensors file: tensor {name!r} has {end - begin} bytes "
                f"but {dtype}{list(shape)} needs {_numel(shape) * size}"
            )
        entries.append(TensorEntry(name, dtype, shape, data_start + begin, data_start + end))
    entries.sort(key=lambda e: (e.start, e.end))
    pos = data_start
    for e in entries:
        if e.start != pos:
            raise InvalidFileError(f"{source}: corrupted safetensors file: tensor {e.name!r} overlaps or leaves a gap in the data")
        pos = e.end
    if pos > file_size:
        raise InvalidFileError(
            f"{source}: truncated safetensors file: the header needs {pos} bytes but the file has {file_size}; "
            "download or write it again"
        )
    return SafetensorsHeader(source, data_start, file_size, metadata, {e.name: e for e in entries})


def header_length(first8: bytes, file_size: int, source: str) -> int:
    """Decode and sanity-check the 8-byte little-endian header length that opens a safetensors file."""
    if len(first8) < 8:
        raise InvalidFileError(f"{source}: not a safetensors file (only {len(first8)} bytes)")
    (n,) = struct.unpack("<Q", first8)
    if n > MAX_HEADER_BYTES or n + 8 > file_size:
        raise InvalidFileError(f"{source}: not a valid safetensors file (header length {n} does not fit a file of {file_size} bytes)")
    return n


def read_header(path: str | Path) -> SafetensorsHeader:
    """Read and validate the header of a local safetensors file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = header_length(f.read(8), size, str(path))
            raw = f.read(n)
    except OSError as e:
        raise InvalidFileError(f"{path}: cannot read ({e.strerror})") from None
    return parse_header(raw, size, str(path))


def looks_like_safetensors(path: str | Path) -> bool:
    """True when the file starts like a safetensors file (length prefix then '{')."""
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= min(MAX_HEADER_BYTES, size - 8) and head[8:9] == b"{"


def tensor_hash(f: BinaryIO, header: SafetensorsHeader) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes in name order (metadata excluded)."""
    h = hashlib.sha256()
    for name in sorted(header.tensors):
        e = header.tensors[name]
        h.update(json.dumps([name, e.dtype, list(e.shape)]).encode())
        f.seek(e.start)
        left = e.nbytes
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise InvalidFileError(f"{header.source}: truncated safetensors file (data ends inside tensor {name!r})")
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
