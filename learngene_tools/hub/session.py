"""Guarded huggingface_hub calls: quiet logs, progress bars, checked answers, bounded timeouts, typed errors."""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Iterator

from learngene_tools.errors import HubConnectionError, HubError, LgtError
from learngene_tools.hub.environment import hub_endpoint
from learngene_tools.hub.errors import foreign_error, hub_error
from learngene_tools.hub.references import COMMIT_ID, MAX_PART, HfRef, path_problem, shown

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
def progress_bars(show: bool | None) -> Iterator[None]:
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
    if commit is not None and not COMMIT_ID.fullmatch(commit):
        raise HubError(
            f"the Hub at {hub_endpoint()} answered a malformed commit id {shown(commit, 60)}; nothing was written "
            "(check HF_ENDPOINT)"
        )
    if response.request.method != "HEAD":
        return  # huggingface_hub takes a file's ETag from its HEAD only
    for name in ("x-linked-etag", "etag"):
        etag = headers.get(name)
        if etag is not None and path_problem(etag.lstrip("W/").strip('"'), MAX_PART):  # huggingface_hub's normalisation
            raise HubError(
                f"the Hub at {hub_endpoint()} answered a malformed ETag {shown(etag, 60)}; nothing was written "
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
def hub_call(ref: HfRef | str, *, write: bool = False) -> Iterator[None]:
    """huggingface_hub calls about `ref`: quiet, answers checked, every failure raised as a typed one-line error."""
    with _quiet_hub_logs(), _guarded_session():
        try:
            yield
        except LgtError:
            raise
        except Exception as e:  # noqa: BLE001 - mapped below; only our own bugs go through unchanged
            err = hub_error(e, ref, write=write) or foreign_error(e, ref)
            if err is None:
                raise
            raise err from e


