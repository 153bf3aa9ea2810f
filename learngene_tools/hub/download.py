"""Downloads into the huggingface_hub cache (bundles checked, bad copies evicted) and remote header reads."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from learngene_tools import __version__
from learngene_tools.errors import HubConnectionError, HubError, InvalidFileError, LgtError
from learngene_tools.hub.environment import hub_cache_dir, hub_endpoint, is_offline, timeouts
from learngene_tools.hub.errors import offline_error
from learngene_tools.hub.references import COMMIT_ID, HfRef, as_ref, ref_from
from learngene_tools.hub.session import hub_call, progress_bars
from learngene_tools.io.bundle import read_bundle_header
from learngene_tools.io.header import SafetensorsHeader, header_length, parse_header, read_header

_HEADER_PREFETCH = 32 * 1024  # first range request; a second one fetches the rest of a bigger header


# --- downloads --------------------------------------------------------------------------------


def _download_kwargs(ref: HfRef) -> dict[str, Any]:
    return dict(
        repo_id=ref.repo_id, filename=ref.filename, revision=ref.revision, cache_dir=hub_cache_dir(),
        endpoint=hub_endpoint(), library_name="learngene_tools", library_version=__version__,
    )


def _file_metadata(ref: HfRef) -> Any:
    """HEAD of the file on the Hub (one request, no retries): commit, etag, size, location."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(ref.repo_id, ref.filename, revision=ref.revision, endpoint=hub_endpoint())
    meta = get_hf_file_metadata(url, timeout=timeouts()[0], library_name="learngene_tools",
                                library_version=__version__, endpoint=hub_endpoint())
    if meta.commit_hash is None:
        raise HubError(f"the server at {hub_endpoint()} answered {ref} without a commit id; is HF_ENDPOINT a Hugging "
                       "Face Hub?")
    return meta


def _in_cache(ref: HfRef) -> Path | None:
    """The cached copy of the file at the ref's revision, if there is one."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.repo_id, ref.filename, cache_dir=hub_cache_dir(), revision=ref.revision)
    return Path(found) if isinstance(found, str) else None


def _cached(ref: HfRef) -> Path:
    path = _in_cache(ref)
    if path is None:
        raise offline_error(ref)
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

    with hub_call(ref):
        if is_offline():
            return _cached(ref)
        # One HEAD first: it fails fast with the Hub's own answer (hf_hub_download would retry an
        # unreachable Hub before saying so), and an unreachable Hub falls back to a cached copy.
        _, cached = _metadata_or_cached(ref)
        if cached is not None:
            return cached
        with progress_bars(progress):
            return Path(hf_hub_download(**_download_kwargs(ref), etag_timeout=timeouts()[0]))


def _evict(path: Path) -> bool:
    """Remove a cached file (its snapshot link and its blob) so that the next download fetches it again."""
    cache = os.path.realpath(hub_cache_dir())
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
    hf_ref = as_ref(ref)
    path = _download(hf_ref, progress)
    return _checked_bundle(path, hf_ref) if expect_bundle else path


def pull(
    repo: str, filename: str | None = None, revision: str | None = None, *, verify: bool = True,
    progress: bool | None = None,
) -> Path:
    """Download a bundle (`owner/repo` or an hf:// reference) into the HF cache and return its local path."""
    ref = ref_from(repo, filename, revision)
    path = _download(ref, progress)
    return _checked_bundle(path, ref) if verify else path


def commit_of(path: str | os.PathLike[str]) -> str | None:
    """The commit a file in the huggingface_hub cache belongs to (its snapshot folder), if it is one."""
    p = Path(path)
    for parent in p.parents:
        if parent.parent.name == "snapshots" and COMMIT_ID.fullmatch(parent.name):
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
    with get_session().stream("GET", url, headers=request_headers, timeout=timeouts()[1]) as response:
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
    hf_ref = as_ref(ref)
    with hub_call(hf_ref):
        if is_offline():
            return _local_header(_cached(hf_ref), hf_ref)
        meta, cached = _metadata_or_cached(hf_ref)
        if cached is not None:
            return _local_header(cached, hf_ref)
        raw, size = _remote_header_bytes(hf_ref, meta)
    return parse_header(raw, size, str(hf_ref))


