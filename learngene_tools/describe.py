"""What `lgt inspect` reports: a bundle from its header alone, a checkpoint's conv layers and their roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learngene_tools.errors import LgtError
from learngene_tools.extraction.bundle import SCHEMA_KEY, Bundle, read_bundle_header
from learngene_tools.io.header import looks_like_safetensors, read_header


def _stats(xs: tuple[float, ...]) -> dict[str, float]:
    return {"min": min(xs), "mean": sum(xs) / len(xs), "max": max(xs)}


def bundle_summary(bundle: Bundle, verified: bool) -> dict[str, Any]:
    """JSON-ready description of a bundle (header data only)."""
    return {
        "kind": "learngene bundle",
        "file": bundle.source,
        "size_bytes": bundle.header.file_size if bundle.header else None,
        "schema": "1",
        "tensor_hash": bundle.provenance.get("tensor_hash"),
        "hash_verified": verified,
        "params": bundle.num_params,
        "stages": bundle.stages,
        "layers": [
            {"id": r.id, "stage": r.stage, "position": r.position, "run_length": r.run_length, "anchor": r.anchor,
             "shape": list(r.shape), "stride": r.stride, "reduction": r.reduction, "source_key": r.source_key,
             "has_bn": r.has_bn, "l2_norm": _stats(r.l2_norms)}
            for r in bundle.layers
        ],
        "provenance": bundle.provenance,
    }


def is_bundle_file(path: str | Path) -> bool:
    """True when `path` is a safetensors file whose metadata marks it as a learngene bundle."""
    return looks_like_safetensors(path) and SCHEMA_KEY in read_header(path).metadata


def describe_bundle(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Describe a local bundle from its header; `verify` also re-hashes the tensor bytes (no torch needed)."""
    return bundle_summary(read_bundle_header(path, verify=verify), verified=verify)


def describe_checkpoint(path: str, arch: str | None = None, trust_pickle: bool = False) -> dict[str, Any]:
    """Describe a checkpoint (or model spec): format, wrapper, and every conv with what a transplant does with it."""
    from learngene_tools.transplantation.target import open_target, target_convs

    ckpt, model = open_target(path, trust_pickle=trust_pickle)
    arch = arch or ckpt.arch
    convs = target_convs(ckpt, arch, model)
    if not convs:
        raise LgtError(f"{path}: has no conv layer (no 4-D weight); lgt transplants into CNN checkpoints")
    n_params = 0
    for shape in ckpt.shapes.values():
        size = 1
        for d in shape:
            size *= d
        n_params += size
    return {
        "kind": "checkpoint",
        "file": ckpt.source,
        "format": ckpt.fmt,
        "wrapper": ckpt.wrapper_desc,
        "tensors": len(ckpt.shapes),
        "params": n_params,
        "strides": "traced" if arch else "estimated",
        "arch": arch,
        "metadata": {k: v for k, v in ckpt.metadata.items() if k.startswith(("lgt.", "learngene."))},
        "convs": [
            {"key": c.key, "shape": list(c.shape), "reduction": c.reduction, "groups": c.groups, "bn": c.bn,
             "eligible": c.eligible, "role": ("can take learngene: " if c.eligible else "skipped: ") + c.reason}
            for c in convs
        ],
    }
