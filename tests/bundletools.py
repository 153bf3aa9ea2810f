"""Helpers for tests that build damaged or forged bundles from a good one (no learngene_tools writer involved)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch

from learngene_tools.io.bundle import HASH_KEY, LAYERS_KEY, PROVENANCE_KEY, SCHEMA_KEY
from learngene_tools.io.header import encode_header, read_header
from learngene_tools.io.tensors import TORCH_TO_ST, tensor_bytes


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A bundle's tensors and metadata, read with safetensors."""
    from safetensors.torch import load_file

    return load_file(str(path)), dict(read_header(path).metadata)


def write(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """Write tensors (name order) and metadata exactly as given: no validation, no hashing."""
    names = sorted(tensors)
    entries = [(n, TORCH_TO_ST[tensors[n].dtype], tuple(tensors[n].shape), len(tensor_bytes(tensors[n]))) for n in names]
    path.write_bytes(encode_header(entries, meta) + b"".join(tensor_bytes(tensors[n]) for n in names))
    return path


def raw_metadata_hash(records: list, provenance: dict) -> str:
    """learngene.hash as README defines it, computed here independently of the package (records as JSON values)."""
    doc = {"schema": "2", "layers": records, "provenance": provenance}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(b"learngene bundle metadata\n" + text.encode("ascii")).hexdigest()


def tensor_hash_of(tensors: dict[str, torch.Tensor]) -> str:
    """The tensor hash a bundle records for these tensors."""
    from learngene_tools.io.header import hash_entry_prefix

    h = hashlib.sha256()
    for n in sorted(tensors):
        hash_entry_prefix(h, n, TORCH_TO_ST[tensors[n].dtype], tuple(tensors[n].shape))
        h.update(tensor_bytes(tensors[n]))
    return "sha256:" + h.hexdigest()


def rewrite(src: Path, dst: Path, *, tensors: Callable[[dict], Any] | None = None,
            layers: Callable[[list], Any] | None = None, meta: Callable[[dict], Any] | None = None,
            forge: bool = False) -> Path:
    """Copy `src` to `dst` after editing its tensors, layer records (as JSON) or raw metadata.

    `forge=True` recomputes the tensor hash and the metadata hash afterwards, as an attacker who
    knows the format would: only checks on the values themselves can then catch the edit.
    """
    t, m = load(src)
    if tensors:
        tensors(t)
    if layers:
        recs = json.loads(m[LAYERS_KEY])
        layers(recs)
        m[LAYERS_KEY] = json.dumps(recs, sort_keys=True)
    if forge:
        prov = json.loads(m[PROVENANCE_KEY])
        prov["tensor_hash"] = tensor_hash_of(t)
        m[PROVENANCE_KEY] = json.dumps(prov, sort_keys=True)
        if m.get(SCHEMA_KEY) == "2":
            m[HASH_KEY] = raw_metadata_hash(json.loads(m[LAYERS_KEY]), prov)
    if meta:
        meta(m)
    return write(dst, t, m)


def as_schema_1(src: Path, dst: Path) -> Path:
    """The same bundle as the schema-1 format wrote it: no metadata hash."""
    def edit(m: dict) -> None:
        m[SCHEMA_KEY] = "1"
        m.pop(HASH_KEY, None)

    return rewrite(src, dst, meta=edit)


def change_one_norm_digit(text: str) -> str:
    """The layers JSON with one digit of the first l2_norms value changed (same length)."""
    i = text.index('"l2_norms": [') + len('"l2_norms": [')
    j = i + next(k for k, c in enumerate(text[i:]) if c.isdigit() and text[i + k - 1] != "e" and k > 2)
    return text[:j] + str((int(text[j]) + 1) % 10) + text[j + 1:]
