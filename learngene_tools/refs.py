"""References to files, resolved in one place: a local path, a shipped bundle `lgt:NAME`, or `hf://OWNER/REPO/FILE[@REV]`.

Every command and API function that takes a file takes any of these. Model specs
(`timm:NAME`, `pkg.module:factory`) are not files: `resolve_target` passes them through.
"""

from __future__ import annotations

import os
from pathlib import Path

from learngene_tools.errors import NotFoundError
from learngene_tools.hub import is_hf_ref
from learngene_tools.io.files import check_input

BUILTIN_PREFIX = "lgt:"
BUNDLE_DIR = Path(__file__).parent / "bundles"
DEFAULT_NAME = "mobilenetv2-imagenet-synthetic"

Ref = str | os.PathLike  # a path, `lgt:NAME` or `hf://…`


def is_builtin_ref(text: object) -> bool:
    """True for `lgt:NAME` references."""
    return isinstance(text, str) and text.startswith(BUILTIN_PREFIX)


def available() -> list[str]:
    """Names of the shipped bundles."""
    return sorted(p.stem for p in BUNDLE_DIR.glob("*.safetensors"))


def builtin_path(ref: str) -> Path:
    """The file of a shipped bundle; `lgt:default` is DEFAULT_NAME."""
    name = ref[len(BUILTIN_PREFIX):] if ref.startswith(BUILTIN_PREFIX) else ref
    name = DEFAULT_NAME if name in ("", "default") else name
    path = BUNDLE_DIR / f"{name}.safetensors"
    if "/" in name or "\\" in name or not path.is_file():
        shipped = ", ".join(BUILTIN_PREFIX + n for n in available()) or "none"
        raise NotFoundError(f"{ref}: no such built-in bundle; shipped: {shipped}")
    return path


def resolve(ref: Ref, *, expect_bundle: bool = False, progress: bool | None = None) -> Path:
    """The local file a reference names: a path as is, a shipped bundle, or a Hub file downloaded into the HF cache.

    A local path that exists must be a regular file or a folder (InvalidFileError otherwise: nothing opens a FIFO).

    With `expect_bundle`, a Hub download is validated as a bundle (tensor hash included) and removed
    from the cache when it is not one, so that the next call downloads it again.
    """
    if is_builtin_ref(ref):
        return builtin_path(str(ref))
    if is_hf_ref(ref):
        from learngene_tools.hub import download

        return download(str(ref), expect_bundle=expect_bundle, progress=progress)
    path = Path(ref)
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return path  # a missing file is the reader's to report
    except (OSError, ValueError):
        pass  # a name too long, a symlink loop, ...: check_input says which, in one line
    check_input(path, allow_dir=True)  # a FIFO, device or socket is refused here, before anything opens it
    return path


def resolve_target(ref: Ref, *, progress: bool | None = None) -> str | Path:
    """A transplant target: a model spec as is, any file reference resolved to its local path."""
    from learngene_tools.architectures.specs import is_model_spec

    if isinstance(ref, str) and not is_builtin_ref(ref) and not is_hf_ref(ref) and is_model_spec(ref):
        return ref
    return resolve(ref, progress=progress)
