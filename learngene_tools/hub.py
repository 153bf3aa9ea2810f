"""Learngene bundles on the Hugging Face Hub: resolve `hf://` references, pull, push, read a remote header.

A file argument is either a local path or `hf://OWNER/REPO/PATH[@REVISION]` (huggingface_hub's
own form `hf://OWNER/REPO@REVISION/PATH` is accepted too; `hf://OWNER/REPO` means the repo's
`learngene.safetensors`). Downloads go through `huggingface_hub.hf_hub_download` into its
standard cache. The endpoint, cache folder, offline mode and timeouts are huggingface_hub's own
settings (`huggingface_hub.constants`: HF_ENDPOINT, HF_HUB_CACHE / HF_HOME, HF_HUB_OFFLINE,
HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT, read when huggingface_hub is imported); the token
is huggingface_hub's (HF_TOKEN or the stored login, read per call).

Every failure is a typed `LgtError` with one actionable line: `HubNotFoundError`, `HubAuthError`,
`HubConnectionError` or `HubError` for the Hub and the network, `SettingsError` for a bad
reference, `InvalidFileError` for a file that is not a valid bundle (removed from the cache, so
that the next pull downloads it again). Repo ids, file names and revisions are checked before any
request, and the Hub's answers before huggingface_hub builds cache paths from them, so no
reference and no server can make lgt write outside the cache.

Works with huggingface_hub 1.x (httpx) and 2.x (httpx2), through their public API.
Importing this module does not import huggingface_hub.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

from learngene_tools import __version__
from learngene_tools.errors import (
    HubAuthError,
    HubConnectionError,
    HubError,
    HubNotFoundError,
    InvalidFileError,
    LgtError,
    NotFoundError,
    OutputError,
    SettingsError,
)
from learngene_tools.extraction.bundle import Bundle, read_bundle_header
from learngene_tools.io.header import SafetensorsHeader, header_length, parse_header, read_header

HF_SCHEME = "hf://"
DEFAULT_FILENAME = "learngene.safetensors"
CARD_FILENAME = "README.md"
CARD_TAGS = ("learngene", "clkg", "transfer-learning", "knowledge-distillation", "safetensors")
_HEADER_PREFETCH = 32 * 1024  # first range request; a second one fetches the rest of a bigger header
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pkl", ".npz", ".h5", ".onnx")
_MAX_NAME = 96  # the Hub's limit for an owner or repo name
_MAX_PART = 255  # bytes in one path component (NAME_MAX of common file systems)
_MAX_REVISION = 256
_MAX_FILENAME = 1024
_REF_FORBIDDEN = set(" ~^:?*[\\")  # what `git check-ref-format` refuses in a branch or tag name
_COMMIT = re.compile(r"[0-9a-f]{40}")


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


def is_hf_ref(text: str | os.PathLike[str]) -> bool:
    """True when `text` is an `hf://` reference rather than a local path."""
    return isinstance(text, str) and text.startswith(HF_SCHEME)


def _shown(value: str, limit: int = 80) -> str:
    """`value` quoted for a one-line message: control characters escaped, long values cut."""
    text = repr(value[:limit])
    return text + ("…" if len(value) > limit else "")


def _has_control(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def _check_repo_id(repo_id: str) -> str:
    parts = repo_id.split("/")
    ok = len(parts) == 2 and all(
        _NAME.match(p) and len(p) <= _MAX_NAME and ".." not in p and "--" not in p for p in parts
    )
    if not ok:
        raise SettingsError(
            f"{_shown(repo_id)} is not a Hub repo id; write OWNER/REPO (letters, digits, '-', '_', '.'), "
            "e.g. `lgt pull owner/repo` or hf://owner/repo/learngene.safetensors"
        )
    return repo_id


def _path_problem(value: str, limit: int) -> str | None:
    """Why `value` cannot be a relative path inside a repo or the cache (None when it can)."""
    if not value:
        return "it is empty"
    if len(value) > limit or any(len(p.encode()) > _MAX_PART for p in value.split("/")):
        return f"it is longer than {limit} characters or has a part longer than {_MAX_PART} bytes"
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
    problem = _path_problem(filename, _MAX_FILENAME)
    if problem:
        raise SettingsError(
            f"{_shown(filename)} is not a file path inside a repo ({problem}); write hf://OWNER/REPO/FILE[@REVISION] "
            "or --filename DIR/FILE"
        )
    return filename


def _revision_problem(revision: str) -> str | None:
    """Why `revision` is not a branch, tag or commit name (git's rules for ref names), None when it is one."""
    problem = _path_problem(revision, _MAX_REVISION)
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
            f"{_shown(revision)} is not a revision ({problem}); give a branch, tag or commit, e.g. main, v1, refs/pr/1"
        )
    return revision


def parse_hf_ref(ref: str, default_filename: str = DEFAULT_FILENAME) -> HfRef:
    """Parse `hf://OWNER/REPO[/PATH][@REVISION]` (or `hf://OWNER/REPO@REVISION[/PATH]`) into a checked HfRef."""
    if not is_hf_ref(ref):
        raise SettingsError(f"{_shown(ref)} is not a Hub reference; write hf://OWNER/REPO/FILE[@REVISION]")
    rest = ref[len(HF_SCHEME):]
    if rest.startswith("models/"):
        rest = rest[len("models/"):]
    elif rest.startswith(("datasets/", "spaces/")):
        raise SettingsError(f"{_shown(ref)}: learngene bundles live in model repos; write hf://OWNER/REPO/FILE")
    parts = rest.split("/", 2)
    if len(parts) < 2:
        raise SettingsError(f"{_shown(ref)} names no repo; write hf://OWNER/REPO/FILE[@REVISION]")
    owner, repo = parts[0], parts[1]
    path = parts[2] if len(parts) == 3 else ""
    revision: str | None = None
    if "@" in repo:  # huggingface_hub's form: hf://owner/repo@rev/path (a '/' in rev is written %2F)
        repo, revision = repo.split("@", 1)
        revision = unquote(revision)
    if "@" in path:  # the form in lgt's docs: hf://owner/repo/path@rev (rev may contain '/')
        path, rev2 = path.rsplit("@", 1)
        if revision is not None:
            raise SettingsError(f"{_shown(ref)} gives two revisions; write hf://OWNER/REPO/FILE@REVISION")
        revision = rev2
    if revision is not None and not revision:
        raise SettingsError(f"{_shown(ref)} has an empty revision after '@'; give a branch, tag or commit, or drop the '@'")
    return HfRef(f"{owner}/{repo}", path.strip("/") or default_filename, revision)


def _ref_from(repo: str, filename: str | None, revision: str | None) -> HfRef:
    """`owner/repo` or an hf:// reference, with --filename / --revision taking precedence."""
    base = parse_hf_ref(repo) if is_hf_ref(repo) else HfRef(repo.strip("/"))
    return HfRef(base.repo_id, filename if filename is not None else base.filename,
                 revision if revision is not None else base.revision)


def _as_ref(ref: str | HfRef) -> HfRef:
    return ref if isinstance(ref, HfRef) else parse_hf_ref(ref)


# --- huggingface_hub's settings ---------------------------------------------------------------


def hub_endpoint() -> str:
    """The Hub's base URL (HF_ENDPOINT, else huggingface.co), as huggingface_hub has it."""
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks huggingface_hub for cache-only use."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> str:
    """huggingface_hub's cache folder (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _timeouts() -> tuple[float, float]:
    """huggingface_hub's (metadata, download) timeouts in seconds: HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT."""
    from huggingface_hub import constants

    return float(constants.HF_HUB_ETAG_TIMEOUT), float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def _token() -> str | None:
    """The token huggingface_hub would send (HF_TOKEN, then the stored login), or None."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - a broken token store means "no token"
        return os.environ.get("HF_TOKEN") or None


# --- guarded calls ----------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_hub_logs() -> Iterator[None]:
    """Silence huggingface_hub's own warnings and retry notes (lgt reports the outcome in one line)."""
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


_MAX_REDIRECTS = 30  # huggingface_hub 1.x follows a Hub's relative redirects without a limit


def _check_answer(response: Any, seen: list[int]) -> None:
    """Refuse a Hub answer whose commit id is not one or whose ETag is not a relative path, and endless redirects.

    huggingface_hub joins the commit id and the ETag of a file's HEAD into cache paths
    (snapshots/COMMIT/…, blobs/ETAG) without checking them: an ETag of '"../../x"' or '"/abs/x"'
    from a hostile endpoint would be written outside the cache.
    """
    if 300 <= response.status_code < 400:
        seen[0] += 1
    if seen[0] > _MAX_REDIRECTS:
        raise HubConnectionError(f"the Hub at {hub_endpoint()} redirected more than {_MAX_REDIRECTS} times; check HF_ENDPOINT")
    headers = response.headers
    commit = headers.get("x-repo-commit")
    if commit is not None and not _COMMIT.fullmatch(commit):
        raise HubError(
            f"the Hub at {hub_endpoint()} answered a malformed commit id {_shown(commit, 60)}; nothing was written "
            "(check HF_ENDPOINT)"
        )
    if response.request.method != "HEAD":
        return  # huggingface_hub takes a file's ETag from its HEAD only
    for name in ("x-linked-etag", "etag"):
        etag = headers.get(name)
        if etag is not None and _path_problem(etag.lstrip("W/").strip('"'), _MAX_PART):  # huggingface_hub's normalisation
            raise HubError(
                f"the Hub at {hub_endpoint()} answered a malformed ETag {_shown(etag, 60)}; nothing was written "
                "(check HF_ENDPOINT)"
            )


def _bound_timeouts(request: Any, seconds: float) -> None:
    """Give a request that has no timeout one (httpx's `timeout` request extension)."""
    timeout = dict(request.extensions.get("timeout") or {})
    for kind in ("connect", "read", "write", "pool"):
        if timeout.get(kind) is None:
            timeout[kind] = seconds if kind != "write" else max(seconds, 60.0)
    request.extensions["timeout"] = timeout


@contextlib.contextmanager
def _guarded_session() -> Iterator[None]:
    """huggingface_hub's shared HTTP client, meanwhile: every answer checked (`_check_answer`), and timeouts.

    Several huggingface_hub 2.x calls (repo_info, the commit API) send no timeout, so a Hub that stops
    answering would hang lgt for ever; those requests get huggingface_hub 1.x's default
    (DEFAULT_REQUEST_TIMEOUT, at least 60 s to write).
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    hooks = get_session().event_hooks
    check = functools.partial(_check_answer, seen=[0])
    bound = functools.partial(_bound_timeouts, seconds=float(constants.DEFAULT_REQUEST_TIMEOUT))
    hooks["response"].append(check)
    hooks["request"].append(bound)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            hooks["response"].remove(check)
        with contextlib.suppress(ValueError):
            hooks["request"].remove(bound)


@contextlib.contextmanager
def _hub_call(ref: HfRef | str, *, write: bool = False) -> Iterator[None]:
    """huggingface_hub calls about `ref`: quiet, answers checked, every failure raised as a typed one-line error."""
    with _quiet_hub_logs(), _guarded_session():
        try:
            yield
        except LgtError:
            raise
        except Exception as e:  # noqa: BLE001 - mapped below; only our own bugs go through unchanged
            err = hub_error(e, ref, write=write) or _foreign_error(e, ref)
            if err is None:
                raise
            raise err from e


# --- errors -----------------------------------------------------------------------------------


def _one_line(text: object, limit: int = 200) -> str:
    """`text` as one line of printable characters, at most `limit` long."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _server_message(e: BaseException) -> str:
    return _one_line(getattr(e, "server_message", None) or "")


def _repo_files(ref: HfRef) -> list[str]:
    """Files at the ref's revision (for error hints); empty when they cannot be listed."""
    try:
        from huggingface_hub import HfApi

        return sorted(HfApi(endpoint=hub_endpoint()).list_repo_files(ref.repo_id, revision=ref.revision))
    except Exception:  # noqa: BLE001 - only a hint
        return []


def _names(ref: HfRef | str) -> tuple[str, str]:
    """(repo id, revision) for messages."""
    if isinstance(ref, HfRef):
        return ref.repo_id, ref.revision or "main"
    return str(ref), "main"


def _offline_error(ref: HfRef | str) -> HubConnectionError:
    return HubConnectionError(
        f"{ref} is not in the local cache ({cache_dir()}) and HF_HUB_OFFLINE is set; run the command once online "
        "(or `lgt pull`) to cache it, or unset HF_HUB_OFFLINE"
    )


def _not_found_or_private(repo_id: str) -> HubNotFoundError:
    endpoint = hub_endpoint()
    if _token() is None:
        return HubNotFoundError(
            f"{repo_id}: repository not found on {endpoint}, or it is private or gated: check the name, or set "
            "HF_TOKEN to a token that can read it (`hf auth login`)"
        )
    return HubNotFoundError(
        f"{repo_id}: repository not found on {endpoint}, or the token in use cannot read it; check the name "
        "and the token's access"
    )


def _missing_file(ref: HfRef | str) -> HubNotFoundError:
    if not isinstance(ref, HfRef):
        return HubNotFoundError(f"{ref}: no such file on the Hub")
    files = [_one_line(f, 100) for f in _repo_files(ref) if not f.startswith(".")]
    listing = f"; it has {', '.join(files[:8])}{', …' if len(files) > 8 else ''}" if files else ""
    return HubNotFoundError(
        f"{ref.repo_id}@{ref.revision or 'main'} has no file {ref.filename!r}{listing}; pass --filename, or name the "
        f"file in hf://{ref.repo_id}/FILE"
    )


def _typed_hub_error(e: BaseException, ref: HfRef | str, write: bool) -> LgtError | None:
    """The error for one of huggingface_hub's typed exceptions."""
    from huggingface_hub import errors as hf

    repo_id, rev = _names(ref)
    if isinstance(e, hf.HFValidationError):
        return SettingsError(f"{ref}: {_one_line(e)}")
    if write and (isinstance(e, hf.RepositoryNotFoundError) or _status(e) in (401, 403)):
        msg = _server_message(e)
        return HubAuthError(
            f"{repo_id}: the Hub refused the upload (HTTP {_status(e)}{': ' + msg if msg else ''}); check the repo "
            "name and set HF_TOKEN to a token with write access to it"
        )
    if isinstance(e, hf.GatedRepoError):
        return HubAuthError(
            f"{repo_id} is a gated repository: request access at {hub_endpoint()}/{repo_id}, then set HF_TOKEN to a "
            "token of an account that was granted access (or run `hf auth login`)"
        )
    if isinstance(e, hf.RepositoryNotFoundError):
        return _not_found_or_private(repo_id)
    if isinstance(e, hf.RevisionNotFoundError):
        return HubNotFoundError(f"{repo_id}: revision {rev!r} not found; give an existing branch, tag or commit (default: main)")
    if isinstance(e, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled)):
        if is_offline():
            return _offline_error(ref)
        cause = e.__cause__ or e.__context__
        return (hub_error(cause, ref, write=write) if cause is not None else None) or _unreachable(ref, "no answer")
    if isinstance(e, hf.EntryNotFoundError):
        return _missing_file(ref)
    if isinstance(e, hf.FileMetadataError):
        return HubError(
            f"the server at {hub_endpoint()} does not answer like a Hugging Face Hub ({_one_line(e, 80)}); "
            "check HF_ENDPOINT"
        )
    return None


def _http_error(e: BaseException, ref: HfRef | str, write: bool) -> LgtError | None:
    """The error for an HTTP error status."""
    status = _status(e)
    if status is None or status < 400:
        return None
    repo_id, _ = _names(ref)
    msg = _server_message(e)
    detail = f": {msg}" if msg else ""
    if status == 401:
        return HubAuthError(
            f"{repo_id}: the Hub refused the credentials (HTTP 401{detail}); set HF_TOKEN to a valid token "
            "(`hf auth login`)"
        )
    if status == 403:
        need = "write" if write else "read"
        return HubAuthError(f"{repo_id}: access denied (HTTP 403{detail}); use a token with {need} access to {repo_id}")
    if status == 404:
        return HubNotFoundError(f"{repo_id}: the Hub at {hub_endpoint()} answered HTTP 404{detail}")
    if status >= 500 or status in (408, 429):
        return HubConnectionError(f"{repo_id}: the Hub at {hub_endpoint()} answered HTTP {status}{detail}; try again later")
    return HubError(f"{repo_id}: the Hub at {hub_endpoint()} answered HTTP {status}{detail}")


_CONNECT_FAILURES = {"ConnectError", "ConnectTimeout", "ConnectionRefusedError", "ProxyError", "gaierror"}
_TRANSFER_FAILURES = {
    "ReadError", "ReadTimeout", "WriteError", "WriteTimeout", "PoolTimeout", "RemoteProtocolError",
    "LocalProtocolError", "ProtocolError", "NetworkError", "TimeoutException", "TransportError", "TooManyRedirects",
    "DecodingError", "StreamError", "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError",
    "ConnectionError", "TimeoutError", "timeout", "IncompleteRead", "SSLError",
}


def _network_cause(e: BaseException) -> tuple[BaseException, bool] | None:
    """The network-level error in `e`'s chain and whether it happened while connecting, if there is one."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        names = {c.__name__ for c in type(cur).__mro__}
        if names & _CONNECT_FAILURES:
            return cur, True
        if names & _TRANSFER_FAILURES:
            return cur, False
        cur = cur.__cause__ or cur.__context__
    return None


def _phrase(cause: BaseException) -> str:
    """What went wrong on the wire, in a few words."""
    names = {c.__name__ for c in type(cause).__mro__}
    text = str(cause).lower()
    if "ConnectionRefusedError" in names or getattr(cause, "errno", None) == errno.ECONNREFUSED or "refused" in text:
        return "connection refused"
    if names & {"TimeoutException", "TimeoutError", "timeout"}:
        etag_timeout, download_timeout = _timeouts()
        return f"no answer in time: HF_HUB_ETAG_TIMEOUT is {etag_timeout:g}s, HF_HUB_DOWNLOAD_TIMEOUT {download_timeout:g}s"
    if "RemoteProtocolError" in names or "IncompleteRead" in names:
        if "without sending a response" in text:
            return "the server closed the connection without answering"
        if any(w in text for w in ("illegal", "invalid", "malformed")):
            return "the server's answer is not valid HTTP"
        return "the server closed the connection before its answer was complete"
    if "ConnectionResetError" in names or "reset" in text:
        return "connection reset"
    if "TooManyRedirects" in names:
        return "too many redirects"
    return f"network error {type(cause).__name__}"


def _unreachable(ref: HfRef | str, phrase: str) -> HubConnectionError:
    return HubConnectionError(
        f"cannot reach the Hugging Face Hub at {hub_endpoint()} for {ref} ({phrase}); check your connection or proxy "
        "(or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use cached files"
    )


def _network_error(e: BaseException, ref: HfRef | str) -> LgtError | None:
    """The error for a failed connection or transfer."""
    found = _network_cause(e)
    if found is None:
        return _cut_short(e, ref)
    cause, connecting = found
    if connecting:
        return _unreachable(ref, _phrase(cause))
    return HubConnectionError(
        f"the Hugging Face Hub at {hub_endpoint()} failed to serve {ref} ({_phrase(cause)}); run the command again, "
        "check your connection or proxy, or set HF_HUB_OFFLINE=1 to use cached files"
    )


def _cut_short(e: BaseException, ref: HfRef | str) -> LgtError | None:
    """huggingface_hub's 'Consistency check failed': the body was shorter (or longer) than announced."""
    m = re.search(r"should be of size (\d+) but has size (\d+)", str(e))
    if not isinstance(e, OSError) or m is None:
        return None
    return HubConnectionError(
        f"the download of {ref} from {hub_endpoint()} was cut short ({m.group(2)} of {m.group(1)} bytes arrived); "
        "run the command again"
    )


def _cache_write_error(e: BaseException) -> LgtError | None:
    """The error for a cache folder that cannot be written (permissions, full disk, read-only)."""
    unwritable = (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOTDIR)
    if isinstance(e, OSError) and e.errno in unwritable:
        return OutputError(
            f"cannot write to the Hugging Face cache at {cache_dir()} ({e.strerror}); set HF_HUB_CACHE to a "
            "writable folder with free space"
        )
    return None


def hub_error(e: BaseException, ref: HfRef | str, *, write: bool = False) -> LgtError | None:
    """The typed one-line error for a huggingface_hub or network failure about `ref`, or None if `e` is neither."""
    if isinstance(e, LgtError):
        return e
    return (
        _typed_hub_error(e, ref, write) or _http_error(e, ref, write) or _network_error(e, ref)
        or _cache_write_error(e)
    )


_HUB_STACK = ("huggingface_hub", "httpx", "httpx2", "httpcore", "httpcore2", "h11", "h2", "ssl", "hf_xet")


def _raised_in_hub_stack(e: BaseException) -> bool:
    """True when `e` is huggingface_hub's or its HTTP stack's own, or was raised while their code ran."""
    if type(e).__module__.split(".")[0] in _HUB_STACK:
        return True
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").split(".")[0] in _HUB_STACK:
            return True
        tb = tb.tb_next
    return False


def _foreign_error(e: BaseException, ref: HfRef | str) -> LgtError | None:
    """Any other failure inside huggingface_hub or its HTTP stack, as one line (None: an error of lgt's own)."""
    if not _raised_in_hub_stack(e):
        return None
    return HubError(f"{ref}: the Hub request failed ({type(e).__name__}: {_one_line(e, 160)})")


# --- downloads --------------------------------------------------------------------------------


def _download_kwargs(ref: HfRef) -> dict[str, Any]:
    return dict(
        repo_id=ref.repo_id, filename=ref.filename, revision=ref.revision, cache_dir=cache_dir(),
        endpoint=hub_endpoint(), library_name="learngene_tools", library_version=__version__,
    )


def _file_metadata(ref: HfRef) -> Any:
    """HEAD of the file on the Hub (one request, no retries): commit, etag, size, location."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(ref.repo_id, ref.filename, revision=ref.revision, endpoint=hub_endpoint())
    meta = get_hf_file_metadata(url, timeout=_timeouts()[0], library_name="learngene_tools",
                                library_version=__version__, endpoint=hub_endpoint())
    if meta.commit_hash is None:
        raise HubError(f"the server at {hub_endpoint()} answered {ref} without a commit id; is HF_ENDPOINT a Hugging "
                       "Face Hub?")
    return meta


def _in_cache(ref: HfRef) -> Path | None:
    """The cached copy of the file at the ref's revision, if there is one."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.repo_id, ref.filename, cache_dir=cache_dir(), revision=ref.revision)
    return Path(found) if isinstance(found, str) else None


def _cached(ref: HfRef) -> Path:
    path = _in_cache(ref)
    if path is None:
        raise _offline_error(ref)
    return path


def _is_definitive(e: BaseException) -> bool:
    """True when the Hub's answer settles it (no cached copy is used instead): a missing revision or file."""
    from huggingface_hub import errors as hf

    if isinstance(e, LgtError):
        return True
    return isinstance(e, (hf.RevisionNotFoundError, hf.RemoteEntryNotFoundError))


def _metadata_or_cached(ref: HfRef) -> tuple[Any, Path | None]:
    """(the file's metadata, None), or (None, the cached copy) when the Hub cannot answer, like huggingface_hub does."""
    try:
        return _file_metadata(ref), None
    except Exception as e:
        cached = None if _is_definitive(e) else _in_cache(ref)
        if cached is None:
            raise
        return None, cached


def _download(ref: HfRef, progress: bool | None) -> Path:
    """The file in the huggingface_hub cache, downloaded if needed."""
    from huggingface_hub import hf_hub_download

    with _hub_call(ref):
        if is_offline():
            return _cached(ref)
        # One HEAD first: it fails fast with the Hub's own answer (hf_hub_download would retry an
        # unreachable Hub before saying so), and an unreachable Hub falls back to a cached copy.
        _, cached = _metadata_or_cached(ref)
        if cached is not None:
            return cached
        with _progress_bars(progress):
            return Path(hf_hub_download(**_download_kwargs(ref), etag_timeout=_timeouts()[0]))


def _evict(path: Path) -> bool:
    """Remove a cached file (its snapshot link and its blob) so that the next download fetches it again."""
    cache = os.path.realpath(cache_dir())
    link = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    blob = os.path.realpath(path)
    removed = False
    for p in dict.fromkeys((link, blob)):
        if os.path.commonpath((cache, p)) != cache:
            continue  # never touch a file outside the cache
        try:
            os.unlink(p)
            removed = True
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return removed


def _checked_bundle(path: Path, ref: HfRef) -> Path:
    """`path` when it is a valid bundle (tensor hash included); otherwise it leaves the cache and the error names `ref`."""
    try:
        read_bundle_header(path, verify=True)
    except LgtError as e:
        msg = str(e).replace(str(path), str(ref))
        if _evict(path):
            msg += " (removed from the Hugging Face cache: the next pull downloads it again)"
        raise (type(e) if isinstance(e, InvalidFileError) else InvalidFileError)(msg) from None
    return path


def download(ref: str | HfRef, *, expect_bundle: bool = False, progress: bool | None = None) -> Path:
    """An `hf://` file in the huggingface_hub cache, downloaded if needed; `expect_bundle` validates it as a bundle."""
    hf_ref = _as_ref(ref)
    path = _download(hf_ref, progress)
    return _checked_bundle(path, hf_ref) if expect_bundle else path


def pull(
    repo: str, filename: str | None = None, revision: str | None = None, *, verify: bool = True,
    progress: bool | None = None,
) -> Path:
    """Download a bundle (`owner/repo` or an hf:// reference) into the HF cache and return its local path."""
    ref = _ref_from(repo, filename, revision)
    path = _download(ref, progress)
    return _checked_bundle(path, ref) if verify else path


def commit_of(path: str | os.PathLike[str]) -> str | None:
    """The commit a file in the huggingface_hub cache belongs to (its snapshot folder), if it is one."""
    p = Path(path)
    for parent in p.parents:
        if parent.parent.name == "snapshots" and _COMMIT.fullmatch(parent.name):
            return parent.name
    return None


# --- remote header ----------------------------------------------------------------------------
#
# huggingface_hub's `HfApi.parse_safetensors_file_metadata` reads a header with the same range
# requests, but it hands back parsed dicts (no raw bytes, no file size) after a laxer parse, and
# `get_safetensors_metadata` only looks for `model.safetensors` / its index. The project's own
# reader (`parse_header`) needs the raw bytes and the file size, so the bytes are fetched here
# through huggingface_hub's HTTP session, headers, timeouts and error types.


def _range_get(url: str, start: int, end: int, headers: dict[str, str], label: str) -> bytes:
    """Bytes start..end (inclusive) of `url`, with one HTTP range request through huggingface_hub's session."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    want = end - start + 1
    request_headers = {**headers, "Range": f"bytes={start}-{end}"}
    with get_session().stream("GET", url, headers=request_headers, timeout=_timeouts()[1]) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        skip = 0 if response.status_code == 206 else start  # a server that ignores Range sends the whole file
        data = bytearray()
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= skip + want:
                break
    got = bytes(data[skip : skip + want])
    if len(got) != want:
        raise HubConnectionError(
            f"{label}: the Hub at {hub_endpoint()} sent {len(got)} of the {want} header bytes asked for; "
            "run the command again"
        )
    return got


def _header_url(ref: HfRef, meta: Any) -> tuple[str, dict[str, str]]:
    """Where to read the file and with which headers: the very commit the HEAD answered for, or a signed CDN url."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(library_name="learngene_tools", library_version=__version__)
    url = meta.location
    if urlsplit(url).netloc != urlsplit(hub_endpoint()).netloc:
        headers.pop("authorization", None)  # a signed CDN url: the token stays on the Hub
    else:
        url = hf_hub_url(ref.repo_id, ref.filename, revision=meta.commit_hash, endpoint=hub_endpoint())
    return url, headers


def _remote_header_bytes(ref: HfRef, meta: Any) -> tuple[bytes, int]:
    """The raw JSON header of the remote file and the file's size, by one or two range requests."""
    label = str(ref)
    size = meta.size
    if size is None:
        raise HubError(f"{label}: the Hub did not say the file's size; use `lgt pull` to download it instead")
    url, headers = _header_url(ref, meta)
    first = _range_get(url, 0, min(size, _HEADER_PREFETCH) - 1, headers, label) if size > 0 else b""
    n = header_length(first[:8], size, label)
    raw = first[8 : 8 + n]
    if len(raw) < n:
        raw += _range_get(url, 8 + len(raw), 8 + n - 1, headers, label)
    return raw, size


def _local_header(path: Path, ref: HfRef) -> SafetensorsHeader:
    try:
        return dataclasses.replace(read_header(path), source=str(ref))
    except InvalidFileError as e:
        raise InvalidFileError(str(e).replace(str(path), str(ref))) from None


def read_remote_header(ref: str | HfRef) -> SafetensorsHeader:
    """Read and validate a Hub safetensors file's header with HTTP range requests (the file is not downloaded)."""
    hf_ref = _as_ref(ref)
    with _hub_call(hf_ref):
        if is_offline():
            return _local_header(_cached(hf_ref), hf_ref)
        meta, cached = _metadata_or_cached(hf_ref)
        if cached is not None:
            return _local_header(cached, hf_ref)
        raw, size = _remote_header_bytes(hf_ref, meta)
    return parse_header(raw, size, str(hf_ref))


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
    from huggingface_hub import ModelCard, ModelCardData

    b = bundle if isinstance(bundle, Bundle) else read_bundle_header(bundle, verify=False)
    prov = b.provenance
    data = ModelCardData(library_name="learngene_tools", tags=list(CARD_TAGS), base_model=ancestry_hub_id(prov),
                         license=license)
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
    return str(ModelCard("\n".join(["---", data.to_yaml(), "---", *body])))


def push(
    bundle_path: str | os.PathLike[str], repo_id: str, *, filename: str | None = None, private: bool = False,
    revision: str | None = None, create_pr: bool = False, license: str | None = None,
    overwrite_card: bool = False, commit_message: str | None = None, progress: bool | None = None,
) -> PushResult:
    """Upload a bundle and its model card to `repo_id` (created if needed); an existing card is kept unless asked."""
    path = Path(bundle_path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file; give the bundle to push (made by `lgt select` or `lgt extract`)")
    bundle = read_bundle_header(path, verify=True)  # refuse a file that is not a valid bundle before any upload
    ref = HfRef(repo_id.strip("/"), filename or path.name, revision)
    if is_offline():
        raise HubConnectionError("HF_HUB_OFFLINE is set: pushing needs the network; unset HF_HUB_OFFLINE")
    if _token() is None:
        raise HubAuthError("pushing needs a Hugging Face token with write access: set HF_TOKEN or run `hf auth login`")
    with _progress_bars(progress), _hub_call(ref, write=True):
        return _push(path, bundle, ref, private=private, create_pr=create_pr, license=license,
                     overwrite_card=overwrite_card, commit_message=commit_message)


def _push(path: Path, bundle: Bundle, ref: HfRef, *, private: bool, create_pr: bool, license: str | None,
          overwrite_card: bool, commit_message: str | None) -> PushResult:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=hub_endpoint(), library_name="learngene_tools", library_version=__version__)
    repo_id, filename, revision = ref.repo_id, ref.filename, ref.revision
    created = not api.repo_exists(repo_id)
    if created:
        api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    head = api.repo_info(repo_id, revision=revision).sha
    ops = [CommitOperationAdd(path_in_repo=filename, path_or_fileobj=str(path))]
    card = "kept"
    if overwrite_card or not api.file_exists(repo_id, CARD_FILENAME, revision=revision):
        text = model_card(bundle, repo_id, filename, revision=revision, license=license)
        ops.append(CommitOperationAdd(path_in_repo=CARD_FILENAME, path_or_fileobj=text.encode()))
        card = "written"
    info = api.create_commit(
        repo_id, operations=ops, revision=revision, create_pr=create_pr,
        commit_message=commit_message or f"Upload learngene bundle {filename} with lgt",
    )
    return PushResult(
        repo_id=repo_id, filename=filename, revision=revision or "main", commit=info.oid,
        commit_url=info.commit_url, pr_url=getattr(info, "pr_url", None), card=card, repo_created=created,
        changed=info.oid != head,
    )
