"""`hf://` references: parsed and checked (repo id, file path, revision) before any request."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

from learngene_tools.errors import SettingsError

HF_SCHEME = "hf://"
DEFAULT_FILENAME = "learngene.safetensors"
NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pkl", ".npz", ".h5", ".onnx")
_MAX_NAME = 96  # the Hub's limit for an owner or repo name
MAX_PART = 255  # bytes in one path component (NAME_MAX of common file systems)
_MAX_REVISION = 256
_MAX_FILENAME = 1024
_REF_FORBIDDEN = set(" ~^:?*[\\")  # what `git check-ref-format` refuses in a branch or tag name
COMMIT_ID = re.compile(r"[0-9a-f]{40}")


# --- references -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HfRef:
    """A file in a Hub model repo, at a revision (None: the default branch); checked when made."""

    repo_id: str
    filename: str = DEFAULT_FILENAME
    revision: str | None = None

    def __post_init__(self) -> None:
        _check_repo_id(self.repo_id)
        _check_filename(self.filename)
        if self.revision is not None:
            _check_revision(self.revision)

    def __str__(self) -> str:
        return f"{HF_SCHEME}{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")



def is_hf_ref(text: str | os.PathLike[str]) -> bool:
    """True when `text` is an `hf://` reference rather than a local path."""
    return isinstance(text, str) and text.startswith(HF_SCHEME)


def shown(value: str, limit: int = 80) -> str:
    """`value` quoted for a one-line message: control characters escaped, long values cut."""
    text = repr(value[:limit])
    return text + ("…" if len(value) > limit else "")


def _has_control(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def _check_repo_id(repo_id: str) -> str:
    parts = repo_id.split("/")
    ok = len(parts) == 2 and all(
        NAME_PART.match(p) and len(p) <= _MAX_NAME and ".." not in p and "--" not in p for p in parts
    )
    if not ok:
        raise SettingsError(
            f"{shown(repo_id)} is not a Hub repo id; write OWNER/REPO (letters, digits, '-', '_', '.'), "
            "e.g. `lgt pull owner/repo` or hf://owner/repo/learngene.safetensors"
        )
    return repo_id


def path_problem(value: str, limit: int) -> str | None:
    """Why `value` cannot be a relative path inside a repo or the cache (None when it can)."""
    if not value:
        return "it is empty"
    if len(value) > limit or any(len(p.encode()) > MAX_PART for p in value.split("/")):
        return f"it is longer than {limit} characters or has a part longer than {MAX_PART} bytes"
    if _has_control(value):
        return "it contains a control character"
    if "\\" in value:
        return "it contains a backslash"
    if value.startswith("/"):
        return "it is an absolute path"
    if any(p in ("", ".", "..") for p in value.split("/")):
        return "it has an empty, '.' or '..' part"
    return None


def _check_filename(filename: str) -> str:
    problem = path_problem(filename, _MAX_FILENAME)
    if problem:
        raise SettingsError(
            f"{shown(filename)} is not a file path inside a repo ({problem}); write hf://OWNER/REPO/FILE[@REVISION] "
            "or --filename DIR/FILE"
        )
    return filename


def _revision_problem(revision: str) -> str | None:
    """Why `revision` is not a branch, tag or commit name (git's rules for ref names), None when it is one."""
    problem = path_problem(revision, _MAX_REVISION)
    if problem:
        return problem
    if _REF_FORBIDDEN & set(revision) or "@{" in revision or revision == "@":
        return "it contains a character git does not allow in a ref name (space ~ ^ : ? * [ or @{)"
    if any(p.startswith(".") or p.endswith((".", ".lock")) for p in revision.split("/")):
        return "a part of it starts or ends with '.' or ends with '.lock'"
    return None


def _check_revision(revision: str) -> str:
    problem = _revision_problem(revision)
    if problem:
        raise SettingsError(
            f"{shown(revision)} is not a revision ({problem}); give a branch, tag or commit, e.g. main, v1, refs/pr/1"
        )
    return revision


def parse_hf_ref(ref: str, default_filename: str = DEFAULT_FILENAME) -> HfRef:
    """Parse `hf://OWNER/REPO[/PATH][@REVISION]` (or `hf://OWNER/REPO@REVISION[/PATH]`) into a checked HfRef."""
    if not is_hf_ref(ref):
        raise SettingsError(f"{shown(ref)} is not a Hub reference; write hf://OWNER/REPO/FILE[@REVISION]")
    rest = ref[len(HF_SCHEME):]
    if rest.startswith("models/"):
        rest = rest[len("models/"):]
    elif rest.startswith(("datasets/", "spaces/")):
        raise SettingsError(f"{shown(ref)}: learngene bundles live in model repos; write hf://OWNER/REPO/FILE")
    parts = rest.split("/", 2)
    if len(parts) < 2:
        raise SettingsError(f"{shown(ref)} names no repo; write hf://OWNER/REPO/FILE[@REVISION]")
    owner, repo = parts[0], parts[1]
    path = parts[2] if len(parts) == 3 else ""
    revision: str | None = None
    if "@" in repo:  # huggingface_hub's form: hf://owner/repo@rev/path (a '/' in rev is written %2F)
        repo, revision = repo.split("@", 1)
        revision = unquote(revision)
    if "@" in path:  # the form in lgt's docs: hf://owner/repo/path@rev (rev may contain '/')
        path, rev2 = path.rsplit("@", 1)
        if revision is not None:
            raise SettingsError(f"{shown(ref)} gives two revisions; write hf://OWNER/REPO/FILE@REVISION")
        revision = rev2
    if revision is not None and not revision:
        raise SettingsError(f"{shown(ref)} has an empty revision after '@'; give a branch, tag or commit, or drop the '@'")
    return HfRef(f"{owner}/{repo}", path.strip("/") or default_filename, revision)


def ref_from(repo: str, filename: str | None, revision: str | None) -> HfRef:
    """`owner/repo` or an hf:// reference, with --filename / --revision taking precedence."""
    base = parse_hf_ref(repo) if is_hf_ref(repo) else HfRef(repo.strip("/"))
    return HfRef(base.repo_id, filename if filename is not None else base.filename,
                 revision if revision is not None else base.revision)


def as_ref(ref: str | HfRef) -> HfRef:
    """`ref` as a checked HfRef (parsed when it is a string)."""
    return ref if isinstance(ref, HfRef) else parse_hf_ref(ref)


