"""huggingface_hub and network failures as lgt's typed one-line errors."""

from __future__ import annotations

import errno
import re

from learngene_tools.errors import (
    HubAuthError,
    HubConnectionError,
    HubError,
    HubNotFoundError,
    LgtError,
    OutputError,
    SettingsError,
)
from learngene_tools.hub.environment import hub_cache_dir, hub_endpoint, is_offline, timeouts, token
from learngene_tools.hub.references import HfRef

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


def offline_error(ref: HfRef | str) -> HubConnectionError:
    """The error for a file that offline mode needs and the cache lacks."""
    return HubConnectionError(
        f"{ref} is not in the local cache ({hub_cache_dir()}) and HF_HUB_OFFLINE is set; run the command once online "
        "(or `lgt pull`) to cache it, or unset HF_HUB_OFFLINE"
    )


def _not_found_or_private(repo_id: str) -> HubNotFoundError:
    endpoint = hub_endpoint()
    if token() is None:
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
            return offline_error(ref)
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
        etag_timeout, download_timeout = timeouts()
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
            f"cannot write to the Hugging Face cache at {hub_cache_dir()} ({e.strerror}); set HF_HUB_CACHE to a "
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


def foreign_error(e: BaseException, ref: HfRef | str) -> LgtError | None:
    """Any other failure inside huggingface_hub or its HTTP stack, as one line (None: an error of lgt's own)."""
    if not _raised_in_hub_stack(e):
        return None
    return HubError(f"{ref}: the Hub request failed ({type(e).__name__}: {_one_line(e, 160)})")


