"""Bundles shipped inside the package, referenced as `lgt:NAME` (`lgt:default` is the embedded default)."""

from __future__ import annotations

from pathlib import Path

from learngene_tools.errors import LgtError

PREFIX = "lgt:"
BUNDLE_DIR = Path(__file__).parent / "bundles"
DEFAULT_NAME = "mobilenetv2-imagenet-synthetic"


def is_builtin_ref(text: object) -> bool:
    """True for `lgt:NAME` references."""
    return isinstance(text, str) and text.startswith(PREFIX)


def available() -> list[str]:
    """Names of the shipped bundles."""
    return sorted(p.stem for p in BUNDLE_DIR.glob("*.safetensors"))


def builtin_path(ref: str) -> Path:
    """The file of a shipped bundle; `lgt:default` is DEFAULT_NAME."""
    name = ref[len(PREFIX):] if ref.startswith(PREFIX) else ref
    name = DEFAULT_NAME if name in ("", "default") else name
    path = BUNDLE_DIR / f"{name}.safetensors"
    if not path.is_file():
        raise LgtError(f"{ref}: no such built-in bundle; shipped: {', '.join('lgt:' + n for n in available()) or 'none'}")
    return path
