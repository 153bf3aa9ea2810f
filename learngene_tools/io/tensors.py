"""Tensors as safetensors stores them: dtype names, raw bytes, and whole files written deterministically."""

from __future__ import annotations

import io
from typing import BinaryIO, Mapping

import torch

from learngene_tools.io.header import encode_header

ST_TO_TORCH = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
}
TORCH_TO_ST = {v: k for k, v in ST_TO_TORCH.items()}



def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a tensor, as safetensors stores them."""
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def encode_safetensors(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A whole safetensors file in memory, tensors in name order: the same inputs give the same bytes."""
    buf = io.BytesIO()
    write_safetensors(tensors, metadata, buf)
    return buf.getvalue()


def write_safetensors(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str], f: BinaryIO) -> None:
    """Stream a safetensors file to `f` one tensor at a time (never the whole file in memory)."""
    names = sorted(tensors)
    entries = [(n, TORCH_TO_ST[tensors[n].dtype], tuple(tensors[n].shape),
                tensors[n].numel() * tensors[n].element_size()) for n in names]
    f.write(encode_header(entries, metadata))
    for n in names:
        f.write(tensor_bytes(tensors[n]))
