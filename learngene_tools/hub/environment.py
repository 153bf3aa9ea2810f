"""huggingface_hub's own settings, read where lgt needs them: endpoint, cache, offline mode, timeouts, token."""

from __future__ import annotations

import os

# --- huggingface_hub's settings ---------------------------------------------------------------


def hub_endpoint() -> str:
    """The Hub's base URL (HF_ENDPOINT, else huggingface.co), as huggingface_hub has it."""
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks huggingface_hub for cache-only use."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> str:
    """huggingface_hub's cache folder (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def timeouts() -> tuple[float, float]:
    """huggingface_hub's (metadata, download) timeouts in seconds: HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT."""
    from huggingface_hub import constants

    return float(constants.HF_HUB_ETAG_TIMEOUT), float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def token() -> str | None:
    """The token huggingface_hub would send (HF_TOKEN, then the stored login), or None."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - a broken token store means "no token"
        return os.environ.get("HF_TOKEN") or None


