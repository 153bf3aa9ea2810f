"""The bundles at hand: those shipped with the package (`lgt:NAME`) and those in the Hugging Face cache (pulled).

Only safetensors headers are read (no tensor is loaded, nothing is downloaded). A cached file that is not
a bundle (a model's weights) is left out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from learngene_tools.refs import BUILTIN_PREFIX, BUNDLE_DIR, DEFAULT_NAME, available


def _entry(path: Path, ref: str, source: str, **extra: Any) -> dict[str, Any] | None:
    from learngene_tools.errors import LgtError
    from learngene_tools.io.bundle import read_bundle_header

    try:
        b = read_bundle_header(path, verify=False)
    except LgtError:
        return None
    h = str(b.provenance.get("tensor_hash", ""))
    return {"ref": ref, "source": source, "path": str(path), "hash": h, "layers": len(b.layers),
            "stages": sorted({r.stage for r in b.layers}), "ancestry": (b.provenance.get("ancestry") or {}).get("arch"),
            "size_bytes": path.stat().st_size, **extra}


def shipped_bundles() -> list[dict[str, Any]]:
    """The bundles shipped with the package (`lgt:default` is the one marked default)."""
    out = []
    for name in available():
        e = _entry(BUNDLE_DIR / f"{name}.safetensors", BUILTIN_PREFIX + name, "shipped",
                   default=name == DEFAULT_NAME)
        if e is not None:
            out.append(e)
    return out


def cached_bundles() -> list[dict[str, Any]]:
    """The bundles in the Hugging Face cache (`HF_HUB_CACHE`), one per repo, file and cached revision."""
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    if not os.path.isdir(cache):
        return []
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(cache)
    except Exception:  # noqa: BLE001 - an unreadable cache holds no bundle lgt can list
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.commit_hash):
            refs = sorted(rev.refs)
            for f in sorted(rev.files, key=lambda f: f.file_name):
                if not f.file_name.endswith(".safetensors"):
                    continue
                name = str(f.file_path.relative_to(rev.snapshot_path))
                at = refs[0] if refs else rev.commit_hash[:10]
                e = _entry(f.file_path, f"hf://{repo.repo_id}/{name}@{at}", "hub cache", commit=rev.commit_hash,
                           refs=refs)
                if e is not None:
                    out.append(e)
    return out


def list_bundles() -> list[dict[str, Any]]:
    """Every bundle at hand: the shipped ones, then those in the Hugging Face cache."""
    return shipped_bundles() + cached_bundles()
