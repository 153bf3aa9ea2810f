"""Hostile and broken servers: every network failure is one typed error line, nothing lands outside the cache.

A fault-injecting proxy (tests/faultproxy.py) sits between the real huggingface_hub client and the
fake Hub (tests/fakehub.py). For each failure class, `lgt` (a subprocess, as a user runs it) must
print one `error:` line and exit 2 with nothing written in the working directory, and the Python
API must raise the matching typed error; once the server is healthy again the same call succeeds
without anyone touching the cache. Nothing of learngene_tools is mocked.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import urllib.request
from pathlib import Path

import pytest
from conftest import run_lgt

pytest.register_assert_rewrite("hubenv")
from faultproxy import Fault, FaultProxy  # noqa: E402
from hubenv import one_error_line, point_huggingface_hub_at, repo_with_bundle  # noqa: E402

from learngene_tools import hub  # noqa: E402
from learngene_tools.errors import (  # noqa: E402
    HubConnectionError,
    HubError,
    InvalidFileError,
    LgtError,
    OutputError,
    SettingsError,
)
from learngene_tools.refs import resolve  # noqa: E402

pytest_plugins = ["hubenv"]  # fake_hub, hub_env, work

REF = "hf://alice/lg/learngene.safetensors"
FILE = r"/resolve/.*learngene\.safetensors"


@pytest.fixture
def proxy(fake_hub, hub_env, bundle_tiny, tmp_path, monkeypatch):
    """A fault proxy in front of the fake Hub (alice/lg holds bundle_tiny), with huggingface_hub pointed at it."""
    repo_with_bundle(fake_hub, "alice/lg", bundle_tiny.read_bytes())
    p = FaultProxy(fake_hub.url).start()
    _point_at(p.url, tmp_path, monkeypatch)
    yield p
    p.stop()


def _point_at(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub, in this process and in `lgt` subprocesses, at `url`, with 1 s timeouts."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    point_huggingface_hub_at(monkeypatch, url, tmp_path / "hf_home")
    for name in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        monkeypatch.setenv(name, "1")
        monkeypatch.setattr(f"huggingface_hub.constants.{name}", 1)


def _cache(tmp_path: Path) -> Path:
    return tmp_path / "hf_home" / "hub"


# --- every network failure mode --------------------------------------------------------------

# name -> (fault, or None for a refused connection; what the one line says)
NETWORK_FAULTS = {
    "connection refused": (None, "connection refused"),
    "reset before the answer": (Fault("reset"), "connection reset"),
    "closed before the answer": (Fault("close"), "closed the connection without answering"),
    "answer that is not HTTP": (Fault("garbage"), "not valid HTTP"),
    "HTTP 500": (Fault("status", status=500), "answered HTTP 500"),
    "HTTP 502 on the download": (Fault("status", method="GET", path=FILE, status=502), "answered HTTP 502"),
    "HTTP 503": (Fault("status", status=503), "answered HTTP 503"),
    "timeout before the answer": (Fault("stall"), "no answer in time"),
    "reset mid-body": (Fault("drop", method="GET", path=FILE), "connection reset"),
    "closed mid-body (Content-Length larger than the body)": (Fault("truncated", method="GET", path=FILE),
                                                              "before its answer was complete"),
    "body shorter than the size announced": (Fault("short", method="GET", path=FILE), "arrived"),
    "timeout mid-body": (Fault("stall_body", method="GET", path=FILE), "no answer in time"),
}


def _arm(proxy: FaultProxy, fault: Fault | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if fault is None:
        _point_at(proxy.refused_url, tmp_path, monkeypatch)
    else:
        proxy.arm(dataclasses.replace(fault))  # a fresh copy: `times` counts down


def _heal(proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy.disarm()
    _point_at(proxy.url, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", list(NETWORK_FAULTS))
def test_network_failure_through_the_cli(case, proxy, bundle_tiny, work, tmp_path, monkeypatch):
    fault, expected = NETWORK_FAULTS[case]
    _arm(proxy, fault, tmp_path, monkeypatch)
    proc = run_lgt("pull", "alice/lg", "--json", cwd=work)
    line = one_error_line(proc)
    assert expected in line, line
    assert json.loads(proc.stdout)["error"]["kind"] == "hub_connection"
    assert list(work.iterdir()) == []
    _heal(proxy, tmp_path, monkeypatch)  # nothing the failure left in the cache stands in the way
    assert hub.pull("alice/lg").read_bytes() == bundle_tiny.read_bytes()


@pytest.mark.parametrize("case", list(NETWORK_FAULTS))
def test_network_failure_through_the_api(case, proxy, bundle_tiny, tmp_path, monkeypatch):
    fault, expected = NETWORK_FAULTS[case]
    _arm(proxy, fault, tmp_path, monkeypatch)
    calls = [lambda: hub.pull("alice/lg")]
    if fault is None or fault.method is None:  # cheap failures: also the path `lgt transplant hf://…` takes
        calls.append(lambda: resolve(REF, expect_bundle=True))
    for call in calls:
        with pytest.raises(HubConnectionError) as info:
            call()
        assert expected in str(info.value) and "\n" not in str(info.value)
        assert info.value.kind == "hub_connection"
    _heal(proxy, tmp_path, monkeypatch)
    assert resolve(REF, expect_bundle=True).read_bytes() == bundle_tiny.read_bytes()


HEADER_FAULTS = [c for c in NETWORK_FAULTS if c != "HTTP 502 on the download"]


@pytest.mark.parametrize("case", HEADER_FAULTS)
def test_network_failure_while_reading_a_remote_header(case, proxy, bundle_tiny, tmp_path, monkeypatch, work):
    """`lgt inspect hf://…` reads the header with range requests: the same failures, the same one line."""
    fault, expected = NETWORK_FAULTS[case]
    if fault is not None and fault.mode in ("drop", "truncated", "stall_body", "short"):
        expected = {"drop": "connection reset", "truncated": "before its answer was complete",
                    "stall_body": "no answer in time", "short": "header bytes asked for"}[fault.mode]
    _arm(proxy, fault, tmp_path, monkeypatch)
    with pytest.raises(HubConnectionError) as info:
        hub.read_remote_header(REF)
    assert expected in str(info.value), str(info.value)
    if case in ("connection refused", "reset mid-body"):  # two through the CLI (each `lgt` run costs seconds)
        proc = run_lgt("inspect", REF, "--json", cwd=work)
        assert expected in one_error_line(proc)
        assert json.loads(proc.stdout)["error"]["kind"] == "hub_connection"
        assert list(work.iterdir()) == []
    _heal(proxy, tmp_path, monkeypatch)
    assert hub.read_remote_header(REF).file_size == bundle_tiny.stat().st_size


def test_endless_redirects_end(proxy, bundle_tiny):
    proxy.arm(Fault("redirect", method="HEAD"))
    for call in (lambda: hub.pull("alice/lg"), lambda: hub.read_remote_header(REF)):
        with pytest.raises(HubConnectionError, match="redirect"):
            call()
    assert proxy.forwarded("HEAD") <= 2 * 32


def test_push_failures_are_typed_too(proxy, fake_hub, bundle_tiny, monkeypatch):
    from hubenv import ALICE

    monkeypatch.setenv("HF_TOKEN", ALICE)
    monkeypatch.setattr("huggingface_hub.constants.DEFAULT_REQUEST_TIMEOUT", 1)
    api = "/api/models/alice/lg"  # the first request of a push (huggingface_hub retries its upload requests)
    for fault, expected in ((Fault("status", method="GET", path=api, status=503), "answered HTTP 503"),
                            (Fault("reset", method="GET", path=api), "connection reset"),
                            (Fault("stall", method="GET", path=api), "no answer in time")):
        proxy.arm(fault)
        with pytest.raises(HubConnectionError, match=expected):
            hub.push(bundle_tiny, "alice/lg", filename="other.safetensors")
    proxy.arm(Fault("corrupt", method="POST", path="/commit/", transform=lambda body: b"<html>not json</html>"))
    with pytest.raises(HubError, match="the Hub request failed"):  # whatever huggingface_hub makes of it: one line
        hub.push(bundle_tiny, "alice/lg", filename="other.safetensors")
    proxy.disarm()
    hub.push(bundle_tiny, "alice/lg", filename="other.safetensors")  # the last commit did land: nothing changes now
    assert fake_hub.files_at("alice/lg")["other.safetensors"] == bundle_tiny.read_bytes()


def test_a_cache_that_cannot_be_written_is_one_line(proxy, tmp_path, monkeypatch, work):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(blocker / "hub"))
    with pytest.raises(OutputError, match="cannot write to the Hugging Face cache"):
        hub.pull("alice/lg")
    line = one_error_line(run_lgt("pull", "alice/lg", cwd=work, env_extra={"HF_HUB_CACHE": str(blocker / "hub")}))
    assert "HF_HUB_CACHE" in line


def test_unreachable_hub_falls_back_to_the_cache(proxy, bundle_tiny, tmp_path, monkeypatch):
    cached = hub.pull("alice/lg")
    for fault in (None, Fault("reset"), Fault("status", status=503), Fault("stall")):
        _arm(proxy, fault, tmp_path, monkeypatch)
        assert hub.pull("alice/lg") == cached
        assert hub.read_remote_header(REF).file_size == bundle_tiny.stat().st_size
        _heal(proxy, tmp_path, monkeypatch)


# --- a corrupt download leaves the cache -------------------------------------------------------


def _blobs(tmp_path: Path) -> list[Path]:
    return [p for p in _cache(tmp_path).rglob("blobs/*") if not p.name.endswith(".incomplete")]


CORRUPTIONS = {
    "one byte flipped (bad tensor hash)": (lambda b: b[:-3] + bytes([b[-3] ^ 0xFF]) + b[-2:], "corrupted bundle"),
    "not a bundle at all": (lambda b: b"\0" * len(b), "a learngene bundle is the .safetensors file"),
}


def test_corrupt_download_is_removed_so_the_next_pull_works(proxy, bundle_tiny, work, tmp_path):
    transform, expected = CORRUPTIONS["one byte flipped (bad tensor hash)"]
    proxy.arm(Fault("corrupt", method="GET", path=FILE, times=1, transform=transform))
    proc = run_lgt("pull", "alice/lg", "--json", cwd=work)
    line = one_error_line(proc)
    assert expected in line and "removed from the Hugging Face cache" in line and REF in line, line
    assert json.loads(proc.stdout)["error"]["kind"] == "invalid_file"
    assert _blobs(tmp_path) == [] and not list(_cache(tmp_path).rglob("snapshots/*/learngene.safetensors"))
    assert list(work.iterdir()) == []

    proc = run_lgt("pull", "alice/lg", cwd=work)  # the server is healthy again (times=1); nobody touched the cache
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).read_bytes() == bundle_tiny.read_bytes()
    assert proxy.forwarded("GET", FILE) == 2


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_download_through_the_api(case, proxy, bundle_tiny, tmp_path):
    transform, expected = CORRUPTIONS[case]
    proxy.arm(Fault("corrupt", method="GET", path=FILE, times=1, transform=transform))
    with pytest.raises(InvalidFileError, match=expected):
        resolve(REF, expect_bundle=True)  # what `lgt transplant hf://…` does
    assert _blobs(tmp_path) == []
    assert resolve(REF, expect_bundle=True).read_bytes() == bundle_tiny.read_bytes()


def test_a_corrupt_cached_copy_is_removed_too(proxy, bundle_tiny, tmp_path):
    path = hub.pull("alice/lg")
    blob = path.resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")  # damaged on disk after a good download
    with pytest.raises(InvalidFileError, match="removed from the Hugging Face cache"):
        hub.pull("alice/lg")
    assert hub.pull("alice/lg").read_bytes() == bundle_tiny.read_bytes()


# --- a hostile endpoint cannot make lgt write outside the cache ----------------------------------


def _files_outside(root: Path, cache: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if cache not in p.parents and p != cache}


def _bad_revisions(tmp_path: Path) -> list[str]:
    return [
        str(tmp_path / "escaped-abs"), "../../escaped-rel", "../../../../../../tmp/lgt-escaped", "refs/../../escaped",
        "main/../../escaped", "a\\..\\..\\escaped", "/", "a//b", ".hidden", "main.lock", "a b", "x" * 300,
        "\x1b[31mred", "v1\nerror: forged line",
    ]


BAD_FILENAMES = ["../escaped", "/etc/passwd", "a/../../escaped", "a\\b", "./x", "a//b", "x" * 2000, "a\tb"]


def test_the_hostile_endpoint_answers_any_revision(proxy):
    """The premise: with the proxy in `any_revision` mode, a path-like revision gets a real answer."""
    proxy.arm(Fault("any_revision"))
    url = f"{proxy.url}/alice/lg/resolve/..%2F..%2Fescaped/learngene.safetensors"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as response:
        assert response.status == 200 and len(response.headers["X-Repo-Commit"]) == 40


def test_revisions_and_filenames_are_checked_before_any_request(proxy, tmp_path, work):
    proxy.arm(Fault("any_revision"))
    cache = _cache(tmp_path)
    before = _files_outside(tmp_path, cache)
    for rev in _bad_revisions(tmp_path):
        for call in (lambda: hub.pull("alice/lg", revision=rev), lambda: hub.download(f"{REF}@{rev}"),
                     lambda: hub.read_remote_header(hub.HfRef("alice/lg", revision=rev))):
            with pytest.raises(SettingsError) as info:
                call()
            assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    for name in BAD_FILENAMES:
        with pytest.raises(SettingsError):
            hub.pull("alice/lg", filename=name)
    with pytest.raises(SettingsError):
        hub.pull("alice/lg", revision="a\0b")
    # and through the CLI, as in the report that found it
    line = one_error_line(run_lgt("pull", "alice/lg", "--revision", str(tmp_path / "escaped-abs"), cwd=work))
    assert "is not a revision" in line, line
    line = one_error_line(run_lgt("inspect", f"{REF}@../../escaped-rel", cwd=work))
    assert "is not a revision" in line, line
    line = one_error_line(run_lgt("pull", "alice/lg", "--filename", "../escaped", cwd=work))
    assert "is not a file path inside a repo" in line
    assert proxy.log == []  # not one request was made
    assert _files_outside(tmp_path, cache) == before and not Path("/tmp/lgt-escaped").exists()
    assert not cache.exists() or not list(cache.rglob("refs/*"))


HOSTILE_HEADERS = {
    "ETag climbing out": {"ETag": '"../../../../escaped-etag"'},
    "absolute ETag": {"ETag": '"{abs}"'},
    "weak linked ETag climbing out": {"X-Linked-Etag": 'W/"../../../escaped-linked"'},
    "commit climbing out": {"X-Repo-Commit": "../../../escaped-commit"},
    "absolute commit": {"X-Repo-Commit": "{abs}"},
}


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
def test_hostile_commit_or_etag_cannot_write_outside_the_cache(case, proxy, tmp_path, work):
    """huggingface_hub builds cache paths from the server's X-Repo-Commit and ETag: lgt refuses any that is not a name."""
    target = tmp_path / "escaped-abs"
    headers = {k: v.format(abs=target) for k, v in HOSTILE_HEADERS[case].items()}
    before = _files_outside(tmp_path, _cache(tmp_path))
    proxy.arm(Fault("headers", path="/resolve/", headers=headers))
    if case in ("ETag climbing out", "absolute commit"):  # two through the CLI
        line = one_error_line(run_lgt("pull", "alice/lg", "--json", cwd=work))
        assert "answered a malformed" in line, line
    with pytest.raises(HubError):
        hub.pull("alice/lg")
    with pytest.raises(HubError):
        hub.read_remote_header(REF)
    assert _files_outside(tmp_path, _cache(tmp_path)) == before and not target.exists()
    assert list(work.iterdir()) == []


# --- the module's own promises ------------------------------------------------------------------


def test_every_raise_in_hub_is_a_typed_error():
    """No bare LgtError: every failure has a kind a caller can catch."""
    trees = [ast.parse(f.read_text()) for f in Path(hub.__file__).parent.glob("*.py")]
    raised = {
        node.exc.func.id
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name)
    }
    assert "LgtError" not in raised
    assert {"SettingsError", "HubError", "HubConnectionError", "HubAuthError"} <= raised


def test_importing_hub_does_not_import_huggingface_hub():
    code = "import sys, learngene_tools.hub; assert 'huggingface_hub' not in sys.modules, 'imported'"
    proc = __import__("subprocess").run([__import__("sys").executable, "-c", code], capture_output=True, text=True,
                                        env={**os.environ})
    assert proc.returncode == 0, proc.stderr


def test_typed_errors_for_python_callers(fake_hub, hub_env, bundle_tiny, monkeypatch):
    from learngene_tools.errors import HubAuthError, HubNotFoundError, NotFoundError

    repo_with_bundle(fake_hub, "alice/lg", bundle_tiny.read_bytes())
    repo_with_bundle(fake_hub, "carol/gated", bundle_tiny.read_bytes(), gated=True)
    cases = [
        (lambda: hub.pull("alice/nope"), HubNotFoundError, "hub_not_found"),
        (lambda: hub.pull("alice/lg", revision="v9"), HubNotFoundError, "hub_not_found"),
        (lambda: hub.pull("alice/lg", filename="nope.safetensors"), HubNotFoundError, "hub_not_found"),
        (lambda: hub.pull("carol/gated"), HubAuthError, "hub_auth"),
        (lambda: hub.push(bundle_tiny, "alice/new"), HubAuthError, "hub_auth"),
        (lambda: hub.pull("not a repo"), SettingsError, "settings"),
        (lambda: hub.parse_hf_ref("hf://o/r/x@"), SettingsError, "settings"),
    ]
    for call, cls, kind in cases:
        with pytest.raises(cls) as info:
            call()
        assert info.value.kind == kind and isinstance(info.value, LgtError)
    with pytest.raises(NotFoundError):  # a missing repo is also a plain NotFoundError for callers that only care
        hub.pull("alice/nope")
