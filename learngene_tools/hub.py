"""Learngene bundles on the Hugging Face Hub: resolve `hf://` references, pull, push, read a remote header.

A file argument is either a local path or `hf://OWNER/REPO/PATH[@REVISION]` (huggingface_hub's
own form `hf://OWNER/REPO@REVISION/PATH` is accepted too; `hf://OWNER/REPO` means the repo's
`learngene.safetensors`). Downloads go through `huggingface_hub.hf_hub_download` into its
standard cache. HF_ENDPOINT, HF_HUB_CACHE / HF_HOME, HF_HUB_OFFLINE and HF_TOKEN are read
when a function is called (not when huggingface_hub was imported), so they can change within
one process. Every failure is an `LgtError` with one actionable line.

Works with huggingface_hub 0.34+, 1.x (httpx) and 2.x (httpx2): only public functions and
exception classes are used, looked up by name where they differ between versions.
Importing this module does not import huggingface_hub.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NoReturn
from urllib.parse import unquote, urlsplit

from learngene_tools import __version__
from learngene_tools.errors import LgtError
from learngene_tools.extraction.bundle import Bundle, read_bundle_header
from learngene_tools.io.header import SafetensorsHeader, header_length, parse_header, read_header

HF_SCHEME = "hf://"
DEFAULT_FILENAME = "learngene.safetensors"
DEFAULT_ENDPOINT = "https://huggingface.co"
CARD_FILENAME = "README.md"
CARD_TAGS = ("learngene", "clkg", "transfer-learning", "knowledge-distillation", "safetensors")
_HEADER_PREFETCH = 32 * 1024  # first range request; a second one fetches the rest of a bigger header
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pkl", ".npz", ".h5", ".onnx")


@dataclass(frozen=True)
class HfRef:
    """A file in a Hub model repo, at a revision (None: the default branch)."""

    repo_id: str
    filename: str = DEFAULT_FILENAME
    revision: str | None = None

    def __str__(self) -> str:
        return f"{HF_SCHEME}{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class PushResult:
    """What `push` did: where the bundle went, the commit, and whether the model card was written."""

    repo_id: str
    filename: str
    revision: str
    commit: str
    commit_url: str
    pr_url: str | None
    card: str  # "written" | "kept"
    repo_created: bool
    changed: bool  # False when the repo already had these exact files (no commit was made)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


# --- references -----------------------------------------------------------------------------


def is_hf_ref(text: str | os.PathLike[str]) -> bool:
    """True when `text` is an `hf://` reference rather than a local path."""
    return isinstance(text, str) and text.startswith(HF_SCHEME)


def _check_repo_id(repo_id: str, given: str) -> str:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_NAME.match(p) and ".." not in p for p in parts):
        raise LgtError(
            f"{given!r} is not a Hub repo id; write OWNER/REPO (letters, digits, '-', '_', '.'), "
            "e.g. `lgt pull owner/repo` or hf://owner/repo/learngene.safetensors"
        )
    return repo_id


def _check_filename(filename: str, given: str) -> str:
    if not filename or filename.startswith("/") or any(p in ("", ".", "..") for p in filename.split("/")):
        raise LgtError(f"{given!r}: {filename!r} is not a file path inside a repo; write hf://OWNER/REPO/FILE[@REVISION]")
    return filename


def parse_hf_ref(ref: str, default_filename: str = DEFAULT_FILENAME) -> HfRef:
    """Parse `hf://OWNER/REPO[/PATH][@REVISION]` (or `hf://OWNER/REPO@REVISION[/PATH]`) into an HfRef."""
    if not is_hf_ref(ref):
        raise LgtError(f"{ref!r} is not a Hub reference; write hf://OWNER/REPO/FILE[@REVISION]")
    rest = ref[len(HF_SCHEME):]
    if rest.startswith("models/"):
        rest = rest[len("models/"):]
    elif rest.startswith(("datasets/", "spaces/")):
        raise LgtError(f"{ref!r}: learngene bundles live in model repos; write hf://OWNER/REPO/FILE")
    parts = rest.split("/", 2)
    if len(parts) < 2:
        raise LgtError(f"{ref!r} names no repo; write hf://OWNER/REPO/FILE[@REVISION]")
    owner, repo = parts[0], parts[1]
    path = parts[2] if len(parts) == 3 else ""
    revision: str | None = None
    if "@" in repo:  # huggingface_hub's form: hf://owner/repo@rev/path (a '/' in rev is written %2F)
        repo, revision = repo.split("@", 1)
        revision = unquote(revision)
    if "@" in path:  # the form in lgt's docs: hf://owner/repo/path@rev (rev may contain '/')
        path, rev2 = path.rsplit("@", 1)
        if revision is not None:
            raise LgtError(f"{ref!r} gives two revisions; write hf://OWNER/REPO/FILE@REVISION")
        revision = rev2
    if revision is not None and not revision:
        raise LgtError(f"{ref!r} has an empty revision after '@'; give a branch, tag or commit, or drop the '@'")
    repo_id = _check_repo_id(f"{owner}/{repo}", ref)
    filename = _check_filename(path.strip("/") or default_filename, ref)
    return HfRef(repo_id, filename, revision)


def _ref_from(repo: str, filename: str | None, revision: str | None) -> HfRef:
    """`owner/repo` or an hf:// reference, with --filename / --revision taking precedence."""
    if is_hf_ref(repo):
        base = parse_hf_ref(repo)
    else:
        base = HfRef(_check_repo_id(repo.strip("/"), repo))
    return HfRef(
        base.repo_id,
        _check_filename(filename, filename) if filename else base.filename,
        revision if revision else base.revision,
    )


# --- configuration, read at call time ---------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_endpoint() -> str:
    """The Hub's base URL: HF_ENDPOINT, or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for cache-only use."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def cache_dir() -> str:
    """The huggingface_hub cache folder: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def _token() -> str | None:
    """The token huggingface_hub would send (HF_TOKEN, then the stored login), or None."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - a broken token store means "no token"
        return os.environ.get("HF_TOKEN") or None


def _download_kwargs(ref: HfRef) -> dict[str, Any]:
    return dict(
        repo_id=ref.repo_id, filename=ref.filename, revision=ref.revision, cache_dir=cache_dir(),
        endpoint=hub_endpoint(), library_name="learngene_tools", library_version=__version__,
    )


@contextlib.contextmanager
def _quiet_hub_logs() -> Iterator[None]:
    """Silence huggingface_hub's own warnings (lgt reports the outcome itself)."""
    from huggingface_hub.utils import logging as hub_logging

    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logging.set_verbosity(level)


@contextlib.contextmanager
def _progress_bars(show: bool | None) -> Iterator[None]:
    """huggingface_hub's progress bars on a terminal only (or as `show` says)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if show is None:
        show = sys.stderr.isatty()
    was_disabled = are_progress_bars_disabled()
    if show or was_disabled:
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


# --- errors -----------------------------------------------------------------------------------


def _hub_classes(*names: str) -> tuple[type, ...]:
    """Exception classes of the installed huggingface_hub, by name (names and homes differ across 0.x/1.x/2.x)."""
    import huggingface_hub.utils as hub_utils

    try:
        import huggingface_hub.errors as hub_errors
    except ImportError:  # pragma: no cover - very old huggingface_hub
        hub_errors = hub_utils  # type: ignore[assignment]
    found = []
    for name in names:
        cls = getattr(hub_errors, name, None) or getattr(hub_utils, name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


_CONNECTION_ERRORS = {
    "ConnectError", "ConnectTimeout", "ConnectionError", "NetworkError", "TimeoutException", "ReadTimeout",
    "ProxyError", "SSLError", "ConnectionRefusedError", "ConnectionResetError", "OfflineModeIsEnabled", "timeout",
}


def _connection_cause(e: BaseException) -> BaseException | None:
    """The connection-level error in `e`'s chain (httpx, httpx2, requests or socket), if any."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if any(c.__name__ in _CONNECTION_ERRORS for c in type(cur).__mro__):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _server_message(e: BaseException) -> str:
    msg = getattr(e, "server_message", None) or ""
    return " ".join(str(msg).split())[:200]


def _repo_files(ref: HfRef) -> list[str]:
    """Files at the ref's revision (for error hints); empty when they cannot be listed."""
    try:
        from huggingface_hub import HfApi

        return sorted(HfApi(endpoint=hub_endpoint()).list_repo_files(ref.repo_id, revision=ref.revision))
    except Exception:  # noqa: BLE001 - only a hint
        return []


def hub_error(e: BaseException, ref: HfRef | str, *, write: bool = False) -> LgtError | None:
    """The one-line LgtError for a huggingface_hub / network failure about `ref`, or None if `e` is not one."""
    if isinstance(e, LgtError):
        return e
    repo_id = ref.repo_id if isinstance(ref, HfRef) else str(ref)
    rev = (ref.revision if isinstance(ref, HfRef) else None) or "main"
    endpoint = hub_endpoint()
    gated = _hub_classes("GatedRepoError")
    repo_missing = _hub_classes("RepositoryNotFoundError")
    revision_missing = _hub_classes("RevisionNotFoundError")
    local_missing = _hub_classes("LocalEntryNotFoundError", "OfflineModeIsEnabled")
    entry_missing = _hub_classes("RemoteEntryNotFoundError", "EntryNotFoundError")
    http_error = _hub_classes("HfHubHTTPError")
    status = _status(e)
    if write and (repo_missing and isinstance(e, repo_missing) or status in (401, 403)):
        msg = _server_message(e)
        return LgtError(
            f"{repo_id}: the Hub refused the upload (HTTP {status}{': ' + msg if msg else ''}); check the repo name "
            "and set HF_TOKEN to a token with write access to it"
        )
    if gated and isinstance(e, gated):
        return LgtError(
            f"{repo_id} is a gated repository: request access at {endpoint}/{repo_id}, then set HF_TOKEN to a "
            "token of an account that was granted access (or run `hf auth login`)"
        )
    if repo_missing and isinstance(e, repo_missing):
        if _token() is None:
            return LgtError(
                f"{repo_id}: repository not found on {endpoint}, or it is private or gated: check the name, or set "
                "HF_TOKEN to a token that can read it (`hf auth login`)"
            )
        return LgtError(
            f"{repo_id}: repository not found on {endpoint}, or the token in use cannot read it; check the name "
            "and the token's access"
        )
    if revision_missing and isinstance(e, revision_missing):
        return LgtError(f"{repo_id}: revision {rev!r} not found; give an existing branch, tag or commit (default: main)")
    if local_missing and isinstance(e, local_missing):
        if is_offline():
            return LgtError(
                f"{ref} is not in the local cache ({cache_dir()}) and HF_HUB_OFFLINE is set; run the command "
                "once online (or `lgt pull`) to cache it, or unset HF_HUB_OFFLINE"
            )
        return LgtError(
            f"cannot reach the Hugging Face Hub at {endpoint} for {ref} and it is not in the local cache; "
            "check your connection or proxy (or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use cached files"
        )
    if entry_missing and isinstance(e, entry_missing) and isinstance(ref, HfRef):
        files = [f for f in _repo_files(ref) if not f.startswith(".")]
        listing = f"; it has {', '.join(files[:8])}{', …' if len(files) > 8 else ''}" if files else ""
        return LgtError(
            f"{ref.repo_id}@{rev} has no file {ref.filename!r}{listing}; pass --filename, or name the file in "
            f"hf://{ref.repo_id}/FILE"
        )
    if http_error and isinstance(e, http_error) or status is not None:
        msg = _server_message(e)
        detail = f": {msg}" if msg else ""
        if status == 401:
            return LgtError(
                f"{repo_id}: the Hub refused the credentials (HTTP 401{detail}); set HF_TOKEN to a valid token "
                "(`hf auth login`)"
            )
        if status == 403:
            need = "write" if write else "read"
            return LgtError(f"{repo_id}: access denied (HTTP 403{detail}); use a token with {need} access to {repo_id}")
        if status is not None and status >= 500:
            return LgtError(f"{repo_id}: the Hub at {endpoint} answered HTTP {status}{detail}; try again later")
        if status is not None:
            return LgtError(f"{repo_id}: the Hub answered HTTP {status}{detail}")
    cause = _connection_cause(e)
    if cause is not None:
        return LgtError(
            f"cannot reach the Hugging Face Hub at {endpoint} ({type(cause).__name__}); check your connection or "
            "proxy (or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use cached files"
        )
    return None


def _raise_hub_error(e: BaseException, ref: HfRef | str, *, write: bool = False) -> NoReturn:
    err = hub_error(e, ref, write=write)
    if err is None:
        raise e
    raise err from None


# --- downloads --------------------------------------------------------------------------------


def _file_metadata(ref: HfRef) -> Any:
    """HEAD of the file on the Hub (one request, no retries): commit, etag, size, location."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(ref.repo_id, ref.filename, revision=ref.revision, endpoint=hub_endpoint())
    return get_hf_file_metadata(url, library_name="learngene_tools", library_version=__version__)


def _cached(ref: HfRef) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(**_download_kwargs(ref), local_files_only=True))


def _download(ref: HfRef, progress: bool | None) -> Path:
    """The file in the huggingface_hub cache, downloaded if needed."""
    from huggingface_hub import hf_hub_download

    if is_offline():
        try:
            return _cached(ref)
        except Exception as e:  # noqa: BLE001
            _raise_hub_error(e, ref)
    # One HEAD first: it fails fast with the Hub's own answer (huggingface_hub alone would retry an
    # unreachable Hub with backoff for ~20 s before saying so).
    try:
        _file_metadata(ref)
    except Exception as e:  # noqa: BLE001
        if isinstance(e, _hub_classes("RevisionNotFoundError", "RemoteEntryNotFoundError")) or (
            isinstance(e, _hub_classes("EntryNotFoundError")) and not isinstance(e, _hub_classes("LocalEntryNotFoundError"))
        ):
            _raise_hub_error(e, ref)
        try:  # like huggingface_hub: an unreachable or refusing Hub falls back to a cached copy
            return _cached(ref)
        except Exception:  # noqa: BLE001
            _raise_hub_error(e, ref)
    with _progress_bars(progress):
        try:
            return Path(hf_hub_download(**_download_kwargs(ref)))
        except Exception as e:  # noqa: BLE001
            _raise_hub_error(e, ref)


def _relabel(err: LgtError, path: Path, ref: HfRef) -> LgtError:
    return LgtError(str(err).replace(str(path), str(ref)))


def download(ref: str | HfRef, *, expect_bundle: bool = False, progress: bool | None = None) -> Path:
    """An `hf://` file in the huggingface_hub cache, downloaded if needed; `expect_bundle` validates it as a bundle."""
    hf_ref = ref if isinstance(ref, HfRef) else parse_hf_ref(ref)
    path = _download(hf_ref, progress)
    if expect_bundle:
        try:
            read_bundle_header(path, verify=True)
        except LgtError as e:
            raise _relabel(e, path, hf_ref) from None
    return path


def pull(
    repo: str, filename: str | None = None, revision: str | None = None, *, verify: bool = True,
    progress: bool | None = None,
) -> Path:
    """Download a bundle (`owner/repo` or an hf:// reference) into the HF cache and return its local path."""
    ref = _ref_from(repo, filename, revision)
    path = _download(ref, progress)
    if verify:
        try:
            read_bundle_header(path, verify=True)
        except LgtError as e:
            raise _relabel(e, path, ref) from None
    return path


def commit_of(path: str | os.PathLike[str]) -> str | None:
    """The commit a file in the huggingface_hub cache belongs to (its snapshot folder), if it is one."""
    p = Path(path)
    for parent in p.parents:
        if parent.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parent.name):
            return parent.name
    return None


# --- remote header ----------------------------------------------------------------------------


def _range_get(url: str, start: int, end: int, headers: dict[str, str]) -> bytes:
    """Bytes start..end (inclusive) of `url`, with one HTTP range request through huggingface_hub's session."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    response = get_session().get(url, headers={**headers, "Range": f"bytes={start}-{end}"})
    hf_raise_for_status(response)
    data = response.content
    if response.status_code != 206:  # the server ignored the Range header and sent the whole file
        data = data[start : end + 1]
    return data


def read_remote_header(ref: str | HfRef) -> SafetensorsHeader:
    """Read and validate a Hub safetensors file's header with HTTP range requests (the file is not downloaded)."""
    from huggingface_hub.utils import build_hf_headers

    hf_ref = ref if isinstance(ref, HfRef) else parse_hf_ref(ref)
    label = str(hf_ref)
    if is_offline():  # from the cache, if the file is there
        try:
            path = _cached(hf_ref)
        except Exception as e:  # noqa: BLE001
            _raise_hub_error(e, hf_ref)
        return dataclasses.replace(read_header(path), source=label)
    try:
        meta = _file_metadata(hf_ref)
        size = meta.size
        url = meta.location
        headers = build_hf_headers(library_name="learngene_tools", library_version=__version__)
        if urlsplit(url).netloc != urlsplit(hub_endpoint()).netloc:
            headers.pop("authorization", None)  # a signed CDN url: the token stays on the Hub
        elif meta.commit_hash:  # read the very commit the HEAD answered for, even if the branch moves meanwhile
            from huggingface_hub import hf_hub_url

            url = hf_hub_url(hf_ref.repo_id, hf_ref.filename, revision=meta.commit_hash, endpoint=hub_endpoint())
        if size is None:
            raise LgtError(f"{label}: the Hub did not say the file's size; use `lgt pull` to download it instead")
        first = _range_get(url, 0, min(size, _HEADER_PREFETCH) - 1, headers) if size > 0 else b""
        n = header_length(first[:8], size, label)
        raw = first[8 : 8 + n]
        if len(raw) < n:
            raw += _range_get(url, 8 + len(raw), 8 + n - 1, headers)
    except LgtError:
        raise
    except Exception as e:  # noqa: BLE001
        _raise_hub_error(e, hf_ref)
    if len(raw) != n:
        raise LgtError(f"{label}: the Hub sent {len(raw)} header bytes, expected {n}; try again")
    return parse_header(raw, size, label)


# --- push and model card ----------------------------------------------------------------------


def ancestry_hub_id(provenance: dict[str, Any]) -> str | None:
    """The ancestry's Hub model id (for the card's `base_model`), when the provenance names one."""
    anc = provenance.get("ancestry")
    if isinstance(anc, str):
        items = [("arch", anc)]
    elif isinstance(anc, dict):
        items = [(k, v) for k, v in anc.items() if isinstance(v, str)]
    else:
        return None
    prefixes = ("hf-hub:", "hf_hub:", HF_SCHEME, "https://huggingface.co/")
    for key, value in items:
        v = value.strip()
        prefixed = v.startswith(prefixes)
        for p in prefixes:
            if v.startswith(p):
                v = v[len(p):]
        v = v.removeprefix("models/")
        if prefixed:
            v = "/".join(v.split("@", 1)[0].split("/")[:2])
        elif key not in ("arch", "hub_id", "repo_id", "hf_repo", "model_id", "source", "pretrained"):
            continue
        parts = v.split("/")
        if len(parts) == 2 and all(_NAME.match(p) for p in parts) and not v.lower().endswith(_FILE_SUFFIXES):
            return v
    return None


def _yaml_str(s: str) -> str:
    return s if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_./-]*", s) else json.dumps(s)


def _provenance_lines(prov: dict[str, Any]) -> list[str]:
    anc = prov.get("ancestry")
    aux = prov.get("auxiliary") or {}
    sel = prov.get("selection") or {}
    dist = prov.get("distillation")
    lines = []
    if isinstance(anc, dict) and anc:
        desc = anc.get("arch") or anc.get("name") or "recorded"
        extra = ", ".join(f"{k} `{v}`" for k, v in sorted(anc.items()) if k != "arch" and v not in (None, "", [], {}))
        lines.append(f"- **Ancestry** (the large model distilled): `{desc}`" + (f" ({extra})" if extra else ""))
    else:
        lines.append("- **Ancestry**: not recorded (the auxiliary model was not distilled with `lgt extract`)")
    cfg = aux.get("config")
    lines.append(
        f"- **Auxiliary model**: 3×3 conv + BN + ReLU, config `{json.dumps(cfg, sort_keys=True)}`"
        + (f", checkpoint `{aux['checkpoint']}`" if aux.get("checkpoint") else "")
        + (f" (`{aux['checkpoint_sha256']}`)" if aux.get("checkpoint_sha256") else "")
    )
    if dist:
        lines.append(f"- **Distillation**: `{json.dumps(dist, sort_keys=True)}`")
    else:
        lines.append("- **Distillation**: not recorded")
    if sel:
        lines.append(
            f"- **Selection**: stages {sel.get('stages')}, run length {sel.get('run_length') or 'whole stage'}, "
            f"criteria {', '.join(sel.get('criteria') or []) or 'not recorded'}"
        )
    tool = prov.get("tool") or {}
    lines.append(f"- **Written by**: {tool.get('name', 'learngene_tools')} {tool.get('version', '?')}")
    lines.append(f"- **Tensor hash**: `{prov.get('tensor_hash')}` (checked by `lgt inspect` and `lgt pull`)")
    return lines


def model_card(
    bundle: Bundle | str | os.PathLike[str], repo_id: str, filename: str = DEFAULT_FILENAME,
    revision: str | None = None, license: str | None = None,
) -> str:
    """The README.md for a bundle's repo: YAML front matter, the layers, provenance and the `lgt` commands."""
    b = bundle if isinstance(bundle, Bundle) else read_bundle_header(bundle, verify=False)
    prov = b.provenance
    base = ancestry_hub_id(prov)
    front = ["---", "library_name: learngene_tools", "tags:"] + [f"- {t}" for t in CARD_TAGS]
    if base:
        front.append(f"base_model: {_yaml_str(base)}")
    if license:
        front.append(f"license: {_yaml_str(license)}")
    front.append("---")
    ref = str(HfRef(repo_id, filename, revision))
    pull_cmd = f"lgt pull {repo_id}" + (f" --filename {filename}" if filename != DEFAULT_FILENAME else "") + (
        f" --revision {revision}" if revision else ""
    )
    n_params = f"{b.num_params:,}"
    rows = ["| layer | stage (run edge) | shape (out×in×k×k) | stride | output stride | BN | source conv |",
            "|---|---|---|---|---|---|---|"]
    for r in b.layers:
        rows.append(
            f"| `{r.id}` | {r.stage} ({r.anchor}) | {'×'.join(map(str, r.shape))} | {r.stride} | {r.reduction} | "
            f"{'yes' if r.has_bn else 'no'} | `{r.source_key}` |"
        )
    name = repo_id.split("/")[-1]
    body = [
        "",
        f"# {name}: a learngene bundle",
        "",
        f"`{filename}` is a **learngene**: {len(b.layers)} convolution layers ({n_params} parameters) of a small "
        "3×3-kernel auxiliary CNN that was distilled from a large ancestry model, following CLKG (Zu et al., "
        "*Inheriting Generalized Learngene for Efficient Knowledge Transfer across Multiple Tasks*, AAAI 2025). "
        "Transplanted into a freshly initialised CNN of another architecture (ResNet, VGG, MobileViT, detection "
        "and segmentation backbones, …) it gives that model a better starting point than random initialisation. "
        "The file is a safetensors bundle that describes itself: `lgt inspect` shows everything below from its header.",
        "",
        "## What the learngene is",
        "",
        f"Stages {', '.join(map(str, b.stages))} of the auxiliary model; each stage gives one continuous run of layers "
        "(edge kernels: the first stage's run starts at its beginning, the last stage's ends at its end).",
        "",
        *rows,
        "",
        "## Provenance",
        "",
        *_provenance_lines(prov),
        "",
        "## How to use it",
        "",
        "With learngene_tools installed (it provides the `lgt` command):",
        "",
        "```",
        f"lgt inspect {ref}          # layers, shapes, provenance: reads the header only",
        f"{pull_cmd}          # into the Hugging Face cache; prints the local path",
        f"lgt transplant {ref} resnet50.pth -o resnet50_lg.pth --arch torchvision:resnet50",
        f"lgt transplant {ref} timm:vgg16_bn -o vgg16_lg.safetensors   # a fresh timm model as target",
        f"lgt transplant {ref} my_model.pth --dry-run   # the plan only, nothing written",
        "```",
        "",
        "From Python:",
        "",
        "```python",
        "from learngene_tools import transplant",
        "",
        f'plan = transplant("{ref}", "resnet50.pth", "resnet50_lg.pth", arch="torchvision:resnet50")',
        "```",
        "",
        "The descendant checkpoint has exactly the target's keys, shapes and dtypes; every tensor the plan does not "
        "name is byte-identical to the target's. Then train it as usual.",
        "",
    ]
    return "\n".join(front + body)


def push(
    bundle_path: str | os.PathLike[str], repo_id: str, *, filename: str | None = None, private: bool = False,
    revision: str | None = None, create_pr: bool = False, license: str | None = None,
    overwrite_card: bool = False, commit_message: str | None = None, progress: bool | None = None,
) -> PushResult:
    """Upload a bundle and its model card to `repo_id` (created if needed); an existing card is kept unless asked."""
    from huggingface_hub import CommitOperationAdd, HfApi

    path = Path(bundle_path)
    if not path.is_file():
        raise LgtError(f"{path}: no such file; give the bundle to push (made by `lgt select` or `lgt extract`)")
    bundle = read_bundle_header(path, verify=True)  # refuse a file that is not a valid bundle before any upload
    repo_id = _check_repo_id(repo_id.strip("/"), repo_id)
    filename = _check_filename(filename or path.name, filename or path.name)
    if is_offline():
        raise LgtError("HF_HUB_OFFLINE is set: pushing needs the network; unset HF_HUB_OFFLINE")
    if _token() is None:
        raise LgtError("pushing needs a Hugging Face token with write access: set HF_TOKEN or run `hf auth login`")
    api = HfApi(endpoint=hub_endpoint(), library_name="learngene_tools", library_version=__version__)
    ref = HfRef(repo_id, filename, revision)
    with _progress_bars(progress), _quiet_hub_logs():
        try:
            created = not api.repo_exists(repo_id)
            if created:
                api.create_repo(repo_id, private=private, exist_ok=True)
            if revision and not create_pr:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            head = api.repo_info(repo_id, revision=revision).sha
            has_card = api.file_exists(repo_id, CARD_FILENAME, revision=revision)
            ops = [CommitOperationAdd(path_in_repo=filename, path_or_fileobj=str(path))]
            card = "kept"
            if overwrite_card or not has_card:
                text = model_card(bundle, repo_id, filename, revision=revision, license=license)
                ops.append(CommitOperationAdd(path_in_repo=CARD_FILENAME, path_or_fileobj=text.encode()))
                card = "written"
            info = api.create_commit(
                repo_id, operations=ops, revision=revision, create_pr=create_pr,
                commit_message=commit_message or f"Upload learngene bundle {filename} with lgt",
            )
        except LgtError:
            raise
        except Exception as e:  # noqa: BLE001
            _raise_hub_error(e, ref, write=True)
    return PushResult(
        repo_id=repo_id, filename=filename, revision=revision or "main", commit=info.oid,
        commit_url=info.commit_url, pr_url=getattr(info, "pr_url", None), card=card, repo_created=created,
        changed=info.oid != head,
    )
