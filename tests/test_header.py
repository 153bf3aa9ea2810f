"""The one safetensors header reader: it accepts nothing that safetensors' own reader refuses.

Hand-written cases cover every header fault named in issue 9; a property test generates
headers (valid ones and mutated ones) and checks the reader against safetensors itself:
whatever `read_header` accepts, `safe_open` opens, and every refusal is one `InvalidFileError`.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from learngene_tools.errors import InvalidFileError
from learngene_tools.io.header import DTYPE_BITS, MAX_HEADER_BYTES, has_nonfinite, read_header

FUZZ_EXAMPLES = int(os.environ.get("LGT_FUZZ_EXAMPLES", "400"))  # more for a longer hunt
OK_ENTRY = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'


def _file(path: Path, header: bytes, data: bytes = b"\0" * 4) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def safetensors_accepts(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
        return True
    except Exception:  # noqa: BLE001 - any refusal
        return False


def lgt_accepts(path: Path) -> bool:
    try:
        read_header(path)
        return True
    except InvalidFileError:
        return False


# header bytes -> a fragment of the error line; every one of them safetensors refuses too
REFUSED = {
    "deep_nesting": (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    "1e400_offset": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,1e400]}}', "not a non-negative integer"),
    "1e400_shape": (b'{"a":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}}', "not a non-negative integer"),
    "huge_int_offset": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,' + b"9" * 5000 + b"]}}",
                        "does not fit in 64 bits"),
    "2**64_shape": (b'{"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,4]}}', "64 bits"),
    "string_offsets": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}}', "data_offsets"),
    "string_shape": (b'{"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}', "shape"),
    "float_shape": (b'{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', "not a non-negative integer"),
    "bool_shape": (b'{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', "shape"),
    "negative_zero": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[-0,4]}}', "negative"),
    "nan_literal": (b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}', "not json"),
    "unknown_dtype": (b'{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,4]}}', "unknown dtype"),
    "dtype_byte_count": (b'{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,4]}}', "needs 8"),
    "sub_byte_end": (b'{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,4]}}', "byte boundary"),
    "overflow_then_zero": (b'{"a":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,4]}}',
                           "overflows 64 bits"),
    "duplicate_metadata": (b'{"__metadata__":{},"__metadata__":{},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
                           "duplicate key"),
    "lone_surrogate": (b'{"\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "surrogate"),
    "control_char": (b'{"a\x01":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "not json"),
    "three_offsets": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}', "data_offsets"),
    "missing_shape": (b'{"a":{"dtype":"F32","data_offsets":[0,4]}}', "exactly dtype, shape and data_offsets"),
    "metadata_int": (b'{"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
                     "strings to strings"),
    "top_level_list": (b"[]", "not a json object"),
    "bom": (b"\xef\xbb\xbf" + OK_ENTRY, "not json"),
    "not_utf8": (b'{"\xff":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "not utf-8"),
    "nul_after_json": (OK_ENTRY + b"\0", "not json"),
    "gap": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', "gap"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_headers_are_refused_by_safetensors_too(tmp_path: Path, name: str) -> None:
    header, fragment = REFUSED[name]
    path = _file(tmp_path / f"{name}.safetensors", header, b"\0" * 8 if name == "gap" else b"\0" * 4)
    with pytest.raises(InvalidFileError) as e:
        read_header(path)
    line = str(e.value)
    assert "\n" not in line and fragment in line.lower(), line
    assert not safetensors_accepts(path), name


def test_trailing_bytes_after_the_data_are_refused(tmp_path: Path) -> None:
    path = _file(tmp_path / "t.safetensors", OK_ENTRY, b"\0" * 5)
    with pytest.raises(InvalidFileError, match="1 bytes after the last tensor"):
        read_header(path)
    assert not safetensors_accepts(path)


def test_header_size_limit_is_safetensors_own(tmp_path: Path) -> None:
    """100,000,000 bytes: safetensors' MAX_HEADER_SIZE (the reader used to allow 100 MiB = 104,857,600)."""
    assert MAX_HEADER_BYTES == 100_000_000
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:  # sparse: nothing but the length is read
        f.write(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{")
        f.truncate(8 + MAX_HEADER_BYTES + 1)
    with pytest.raises(InvalidFileError, match="above safetensors' limit of 100,000,000 bytes"):
        read_header(big)
    assert not safetensors_accepts(big)
    edge = tmp_path / "edge.safetensors"
    edge.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES) + b"{}" + b" " * (MAX_HEADER_BYTES - 2))
    assert read_header(edge).tensors == {} and safetensors_accepts(edge)


def test_what_safetensors_accepts_and_lgt_refuses_is_only_the_stricter_rules(tmp_path: Path) -> None:
    """Duplicate tensor names (safetensors keeps the last) and unknown entry fields are refused on purpose."""
    dup = _file(tmp_path / "dup.safetensors",
                b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
    extra = _file(tmp_path / "extra.safetensors", b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}')
    for path, fragment in ((dup, "duplicate key"), (extra, "exactly dtype")):
        assert safetensors_accepts(path)
        with pytest.raises(InvalidFileError, match=fragment):
            read_header(path)


def test_accepted_edge_cases(tmp_path: Path) -> None:
    for name, header, data in [
        ("ws", b"  " + OK_ENTRY + b"   ", b"\0" * 4),
        ("null_metadata", b'{"__metadata__":null}', b""),
        ("scalar", b'{"s":{"dtype":"I64","shape":[],"data_offsets":[0,8]}}', b"\0" * 8),
        ("empty_tensor", b'{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}}', b""),
        ("f4_pair", b'{"q":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}', b"\0"),
        ("escaped", b'{"\\u0061":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
    ]:
        path = _file(tmp_path / f"{name}.safetensors", header, data)
        read_header(path)
        assert safetensors_accepts(path), name


# --- generated headers: the reader against safetensors ------------------------------------------------------

DTYPES = sorted(DTYPE_BITS)


@st.composite
def header_files(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(file bytes, built valid): a valid header and data, then maybe one mutation of the text or the bytes."""
    n = draw(st.integers(0, 4))
    obj: dict = {}
    if draw(st.booleans()):
        obj["__metadata__"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=3))
    pos = 0
    for i in range(n):
        dtype = draw(st.sampled_from(DTYPES))
        bits = DTYPE_BITS[dtype]
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        numel = 1
        for d in shape:
            numel *= d
        while numel * bits % 8:  # sub-byte dtypes (F4, F6): whole bytes only
            shape = shape + [2]
            numel *= 2
        size = numel * bits // 8
        obj[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + size]}
        pos += size
    text = json.dumps(obj)
    data = bytes(pos)
    valid = True
    mutation = draw(st.sampled_from(["none", "text", "json", "length", "data"]))
    if mutation == "text" and text:
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + draw(st.sampled_from(["1e400", "-0", '"4"', "1.5", "NaN", "[", "]", "{", "}", ",", "\\ud800",
                                                "99999999999999999999999", "true", " ", '"x":1,'])) + text[i + 1:]
        valid = False
    elif mutation == "json" and n:
        name = f"t{draw(st.integers(0, n - 1))}"
        key = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        obj[name][key] = draw(st.one_of(st.integers(-2, 2**65), st.text(max_size=4), st.lists(st.integers(-1, 9), max_size=3),
                                        st.sampled_from(DTYPES), st.none(), st.floats(allow_nan=False)))
        text = json.dumps(obj)
        valid = False
    raw = text.encode("utf-8", "surrogatepass")
    length = len(raw)
    if mutation == "length":
        length = draw(st.sampled_from([0, 1, length - 1, length + 1, 2**63, MAX_HEADER_BYTES + 1]))
        valid = length == len(raw)
    blob = struct.pack("<Q", max(0, length)) + raw + data
    if mutation == "data":
        cut = draw(st.integers(-3, 3))
        blob = blob[: len(blob) + cut] if cut < 0 else blob + bytes(cut)
        valid = valid and cut == 0
    return blob, valid


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=header_files())
def test_generated_headers_agree_with_safetensors(tmp_path: Path, case: tuple[bytes, bool]) -> None:
    blob, built_valid = case
    path = tmp_path / "g.safetensors"
    path.write_bytes(blob)
    try:
        read_header(path)
        ours = True
    except InvalidFileError as e:
        assert "\n" not in str(e)
        ours = False
    if ours:
        assert safetensors_accepts(path), blob[:300]
    if built_valid:
        assert ours, blob[:300]


def test_nonfinite_scan_finds_every_kind_of_inf_and_nan() -> None:
    import torch

    for dtype, st_name in ((torch.float16, "F16"), (torch.bfloat16, "BF16"), (torch.float32, "F32"),
                           (torch.float64, "F64")):
        clean = torch.tensor([0.0, -1.5, 3e-3, 65000.0 if dtype == torch.float16 else 1e30], dtype=dtype)
        assert not has_nonfinite(clean.view(torch.uint8).numpy().tobytes(), st_name)
        for bad in (float("inf"), float("-inf"), float("nan")):
            t = torch.cat([clean, torch.tensor([bad], dtype=dtype), clean])
            assert has_nonfinite(t.view(torch.uint8).numpy().tobytes(), st_name), (st_name, bad)
