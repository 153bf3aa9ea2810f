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

from learngene_tools.hub.card import CARD_FILENAME, CARD_TAGS, PushResult, ancestry_hub_id, model_card, push
from learngene_tools.hub.download import commit_of, download, pull, read_remote_header
from learngene_tools.hub.environment import hub_cache_dir, hub_endpoint, is_offline
from learngene_tools.hub.errors import hub_error
from learngene_tools.hub.references import DEFAULT_FILENAME, HF_SCHEME, HfRef, is_hf_ref, parse_hf_ref

__all__ = [
    "CARD_FILENAME",
    "CARD_TAGS",
    "DEFAULT_FILENAME",
    "HF_SCHEME",
    "HfRef",
    "PushResult",
    "ancestry_hub_id",
    "commit_of",
    "download",
    "hub_cache_dir",
    "hub_endpoint",
    "hub_error",
    "is_hf_ref",
    "is_offline",
    "model_card",
    "parse_hf_ref",
    "pull",
    "push",
    "read_remote_header",
]
