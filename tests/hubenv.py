"""Fixtures and helpers shared by the Hub tests: a fake Hub, huggingface_hub pointed at it, an empty work folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakehub import FakeHub

ALICE = "hf_alice_token"  # owns alice/*
BOB = "hf_bob_token"


@pytest.fixture
def fake_hub():
    """A fresh fake Hub with users alice and bob (tokens ALICE, BOB)."""
    server = FakeHub().start()
    server.add_user("alice", ALICE)
    server.add_user("bob", BOB)
    yield server
    server.stop()


@pytest.fixture
def hub_env(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point huggingface_hub at the fake Hub, with a cache of this test's own, in-process and in `lgt` subprocesses.

    learngene_tools.hub uses huggingface_hub's own settings (`huggingface_hub.constants`), which
    huggingface_hub reads from the environment when it is imported. So the environment variables are
    set for `run_lgt` subprocesses, and the import-time copies in this process are patched
    (monkeypatch restores them): ENDPOINT and the URL template derived from it (a push parses the
    commit URL against ENDPOINT, and the README check posts to it), HF_HUB_CACHE, and the stored-login
    paths, sent to the test's folder so that a developer's own token is never sent to the fake Hub.
    HF_HUB_DISABLE_XET=1 because the fake has no Xet endpoint. Short timeouts keep the fault tests fast.
    """
    home = tmp_path / "hf_home"
    env = {
        "HF_ENDPOINT": fake_hub.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(k, raising=False)
    point_huggingface_hub_at(monkeypatch, fake_hub.url, home)
    return env


def point_huggingface_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """Patch huggingface_hub's import-time settings in this process (see `hub_env`)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", 2)
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 2)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty working directory for CLI runs (checked to stay empty after a failure)."""
    d = tmp_path / "work"
    d.mkdir()
    return d


def repo_with_bundle(fake_hub: FakeHub, repo_id: str, data: bytes, **kwargs) -> str:
    fake_hub.create_repo(repo_id, **kwargs)
    return fake_hub.commit(repo_id, {"learngene.safetensors": data}, message="add bundle")


def one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]
