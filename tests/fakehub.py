"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests without network.

It serves, over an in-memory store (repos -> refs -> commits -> files), the endpoints that
huggingface_hub (0.34+, 1.x, 2.x) calls for what lgt does:

  HEAD/GET /{repo}/resolve/{rev}/{path}         X-Repo-Commit, ETag, Content-Length, Range (206)
  GET  /api/models/{repo}[/revision/{rev}]      model info ({"id", "sha", "siblings", ...})
  GET  /api/models/{repo}/tree/{rev}[/{path}]   file listing
  POST /api/repos/create                        {"name", "organization", "private" | "visibility"}
  POST /api/models/{repo}/branch/{branch}       create a branch
  POST /api/models/{repo}/preupload/{rev}       answers uploadMode "regular" for every file
  POST /api/models/{repo}/commit/{rev}          NDJSON commit (file / deletedFile), ?create_pr=1
  POST /api/validate-yaml                       a README's front matter, checked before a commit
  GET  /api/whoami-v2

Errors carry the headers huggingface_hub turns into its exception classes: X-Error-Code
RepoNotFound / RevisionNotFound / EntryNotFound / GatedRepo, X-Error-Message. Like the real Hub,
a private repo is answered as missing without a token that can read it (401 anonymously, 404
with a token), and a gated one with 401 (no token) or 403 (token not granted). Uploads are
inline ("regular") only: there is no LFS or Xet endpoint, so clients must run with
HF_HUB_DISABLE_XET=1 and files stay small.

Every request is logged in `requests`, and GETs of files are counted in `bytes_served` /
`file_gets` by (repo_id, path), so tests can assert what was (not) downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    message: str
    parent: str | None


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    gated: bool = False
    granted: set[str] = field(default_factory=set)  # users granted access to a gated repo
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit oid
    tags: set[str] = field(default_factory=set)
    commits: dict[str, Commit] = field(default_factory=dict)
    next_pr: int = 1

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class FakeHub:
    """The store plus a ThreadingHTTPServer serving it on 127.0.0.1 (a free port)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.tokens: dict[str, str] = {}  # token -> user name
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.bytes_served: Counter[tuple[str, str]] = Counter()
        self.file_gets: Counter[tuple[str, str]] = Counter()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakehub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_served.clear()
            self.file_gets.clear()

    # -- store -------------------------------------------------------------------------------

    def add_user(self, user: str, token: str) -> str:
        self.tokens[token] = user
        return token

    def create_repo(self, repo_id: str, *, private: bool = False, gated: bool = False) -> Repo:
        with self.lock:
            repo = Repo(repo_id, private=private, gated=gated)
            self.repos[repo_id] = repo
            self._commit(repo, "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                         "initial commit", base=None)
            return repo

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", message: str = "update",
               deleted: tuple[str, ...] = ()) -> str:
        """Commit `files` (added or replaced) to `branch`; returns the new commit oid."""
        with self.lock:
            repo = self.repos[repo_id]
            return self._commit(repo, branch, files, message, base=repo.refs.get(branch), deleted=deleted)

    def tag(self, repo_id: str, tag: str, revision: str = "main") -> None:
        with self.lock:
            repo = self.repos[repo_id]
            repo.refs[tag] = self._resolve(repo, revision)
            repo.tags.add(tag)

    def files_at(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            repo = self.repos[repo_id]
            return dict(repo.commits[self._resolve(repo, revision)].files)

    def _commit(self, repo: Repo, branch: str, files: dict[str, bytes], message: str, base: str | None,
                deleted: tuple[str, ...] = ()) -> str:
        self._counter += 1
        content = dict(repo.commits[base].files) if base else {}
        content.update(files)
        for path in deleted:
            content.pop(path, None)
        digest = hashlib.sha1(f"{repo.repo_id}|{base}|{message}|{self._counter}".encode())
        for path in sorted(content):
            digest.update(path.encode() + b"\0" + hashlib.sha256(content[path]).digest())
        oid = digest.hexdigest()
        repo.commits[oid] = Commit(oid, content, message, base)
        repo.refs[branch] = oid
        return oid

    def _resolve(self, repo: Repo, revision: str) -> str:
        if revision in repo.refs:
            return repo.refs[revision]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in repo.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # -- access ------------------------------------------------------------------------------

    def user_of(self, headers: Any) -> str | None:
        auth = headers.get("authorization") or ""
        if not auth:
            return None
        token = auth.split(" ", 1)[-1].strip()
        user = self.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def repo_for_read(self, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if repo.gated and user != repo.owner and user not in repo.granted:
            if user is None:
                raise HubError(401, f"Access to model {repo_id} is restricted. You must have access to it and be "
                                    "authenticated to access it. Please log in.", "GatedRepo")
            raise HubError(403, f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                                f"Visit {self.url}/{repo_id} to ask for access.", "GatedRepo")
        return repo

    def repo_for_write(self, repo_id: str, user: str | None) -> Repo:
        repo = self.repo_for_read(repo_id, user)
        if user != repo.owner:
            raise HubError(403, "You don't have the rights to write to this repo")
        return repo


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix range: the last N bytes
        n = int(m.group(2))
        return (max(size - n, 0), size - 1)
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    return (start, min(end, size - 1))


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        pass

    # -- plumbing ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        with self.fake.lock:
            self.fake.requests.append((self.command, self.path, status))

    def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, e: HubError) -> None:
        headers = {"X-Error-Message": e.message, **e.headers}
        if e.code:
            headers["X-Error-Code"] = e.code
        self._send(e.status, json.dumps({"error": e.message}).encode(), headers)

    @property
    def _base_url(self) -> str:
        """The URL the client used (behind a proxy, the proxy's), as the Hub answers with its public address."""
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.fake.url

    def _body(self) -> bytes:
        return self._raw_body

    def _route(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self._raw_body = self.rfile.read(n) if n and self.command == "POST" else b""  # read first: keep-alive
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        segs = [unquote(s) for s in split.path.strip("/").split("/")]
        try:
            with self.fake.lock:
                user = self.fake.user_of(self.headers)
            self._dispatch(segs, query, user)
        except HubError as e:
            self._error(e)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def do_POST(self) -> None:  # noqa: N802
        self._route()

    # -- endpoints ---------------------------------------------------------------------------

    def _dispatch(self, segs: list[str], query: dict[str, str], user: str | None) -> None:
        cmd = self.command
        if len(segs) >= 5 and segs[2] == "resolve" and cmd in ("GET", "HEAD"):
            return self._resolve_file(f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]), user)
        if segs[:1] == ["api"]:
            if segs[1:3] == ["repos", "create"] and cmd == "POST":
                return self._create_repo(user)
            if segs[1:2] == ["validate-yaml"] and cmd == "POST":
                return self._validate_yaml()
            if segs[1:2] == ["whoami-v2"]:
                if user is None:
                    raise HubError(401, "Invalid username or password.")
                return self._json({"type": "user", "name": user, "auth": {"accessToken": {"role": "write"}}})
            if segs[1:2] == ["models"] and len(segs) >= 4:
                repo_id, rest = f"{segs[2]}/{segs[3]}", segs[4:]
                if not rest and cmd == "GET":
                    return self._model_info(repo_id, "main", user)
                if rest[:1] == ["revision"] and len(rest) >= 2 and cmd == "GET":
                    return self._model_info(repo_id, "/".join(rest[1:]), user)
                if rest[:1] == ["tree"] and len(rest) >= 2 and cmd == "GET":
                    return self._tree(repo_id, rest[1], "/".join(rest[2:]), user)
                if rest[:1] == ["branch"] and len(rest) >= 2 and cmd == "POST":
                    return self._create_branch(repo_id, "/".join(rest[1:]), user)
                if rest[:1] == ["preupload"] and len(rest) >= 2 and cmd == "POST":
                    return self._preupload(repo_id, "/".join(rest[1:]), user)
                if rest[:1] == ["commit"] and len(rest) >= 2 and cmd == "POST":
                    return self._commit(repo_id, "/".join(rest[1:]), query, user)
        raise HubError(404, f"fakehub: no route for {cmd} {self.path}")

    def _resolve_file(self, repo_id: str, revision: str, path: str, user: str | None) -> None:
        with self.fake.lock:
            repo = self.fake.repo_for_read(repo_id, user)
            oid = self.fake._resolve(repo, revision)
            data = repo.commits[oid].files.get(path)
        if data is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": oid})
        headers = {"X-Repo-Commit": oid, "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        status, body = 200, data
        rng = self.headers.get("Range")
        if rng:
            span = _parse_range(rng, len(data))
            if span is None or span[0] >= len(data) or span[0] > span[1]:
                raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[span[0] : span[1] + 1]
            headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{len(data)}"
        if self.command == "GET":
            with self.fake.lock:
                self.fake.bytes_served[(repo_id, path)] += len(body)
                self.fake.file_gets[(repo_id, path)] += 1
        self._send(status, body, headers, content_type="application/octet-stream")

    def _model_info(self, repo_id: str, revision: str, user: str | None) -> None:
        with self.fake.lock:
            repo = self.fake.repo_for_read(repo_id, user)
            oid = self.fake._resolve(repo, revision)
            files = sorted(repo.commits[oid].files)
        self._json({
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo.owner, "sha": oid, "private": repo.private, "gated": "manual" if repo.gated else False,
            "disabled": False, "downloads": 0, "likes": 0, "tags": [], "library_name": "learngene_tools",
            "createdAt": "2026-01-01T00:00:00.000Z", "lastModified": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": f} for f in files],
        })

    def _tree(self, repo_id: str, revision: str, prefix: str, user: str | None) -> None:
        with self.fake.lock:
            repo = self.fake.repo_for_read(repo_id, user)
            files = repo.commits[self.fake._resolve(repo, revision)].files
        prefix = prefix.strip("/")
        entries: dict[str, dict[str, Any]] = {}
        for path, data in sorted(files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rel = path[len(prefix) + 1 :] if prefix else path
            if "/" in rel:  # a folder at this level (the listing is not recursive)
                folder = (prefix + "/" if prefix else "") + rel.split("/")[0]
                entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
            else:
                entry: dict[str, Any] = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
                if path.endswith(".safetensors"):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries[path] = entry
        if prefix and not entries:
            raise HubError(404, "Entry not found", "EntryNotFound")
        self._json(list(entries.values()))

    def _validate_yaml(self) -> None:
        """Parse a README's YAML front matter as the Hub does before a commit (400 with errors if it is invalid)."""
        import yaml

        content = json.loads(self._body() or b"{}").get("content", "")
        m = re.match(r"^---\n(.*?)\n---\n", content, flags=re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
            if meta is not None and not isinstance(meta, dict):
                raise ValueError("the metadata is not a mapping")
        except Exception as e:  # noqa: BLE001
            return self._json({"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []}, status=400)
        self._json({"errors": [], "warnings": []})

    def _create_repo(self, user: str | None) -> None:
        payload = json.loads(self._body() or b"{}")
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        owner = payload.get("organization") or user
        repo_id = f"{owner}/{payload['name']}"
        if payload.get("type") not in (None, "model"):
            raise HubError(400, "fakehub only has model repos")
        if owner != user:
            raise HubError(403, f"You don't have the rights to create a repo under {owner}")
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        with self.fake.lock:
            if repo_id in self.fake.repos:
                raise HubError(409, "You already created this model repo")
            self.fake.create_repo(repo_id, private=private)
        self._json({"url": f"{self._base_url}/{repo_id}", "name": repo_id})

    def _create_branch(self, repo_id: str, branch: str, user: str | None) -> None:
        payload = json.loads(self._body() or b"{}")
        with self.fake.lock:
            repo = self.fake.repo_for_write(repo_id, user)
            if branch in repo.refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.refs[branch] = self.fake._resolve(repo, payload.get("startingPoint") or "main")
        self._json({})

    def _preupload(self, repo_id: str, revision: str, user: str | None) -> None:
        payload = json.loads(self._body() or b"{}")
        with self.fake.lock:
            repo = self.fake.repo_for_read(repo_id, user)
            files = repo.commits[self.fake._resolve(repo, revision)].files
        answer = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None}
            for f in payload.get("files", [])
        ]
        self._json({"files": answer, "commitOid": None})

    def _commit(self, repo_id: str, revision: str, query: dict[str, str], user: str | None) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x.get("key") == "header"), {})
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for item in lines:
            key, value = item.get("key"), item.get("value", {})
            if key == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                deleted.append(value["path"])
            elif key in ("lfsFile", "deletedFolder"):
                raise HubError(400, f"fakehub does not support {key} operations")
        with self.fake.lock:
            repo = self.fake.repo_for_write(repo_id, user)
            base = self.fake._resolve(repo, revision)
            if not query.get("create_pr") and (revision not in repo.refs or revision in repo.tags):
                raise HubError(400, f"Invalid rev id: {revision} is not a branch")
            parent = header.get("parentCommit")
            if parent and parent != base:
                raise HubError(412, "A commit has happened since the parent commit")
            pr_url = None
            branch = revision
            if query.get("create_pr"):
                num = repo.next_pr
                repo.next_pr += 1
                branch = f"refs/pr/{num}"
                repo.refs[branch] = base
                pr_url = f"{self._base_url}/{repo_id}/discussions/{num}"
            oid = self.fake._commit(repo, branch, added, header.get("summary", ""), base=base, deleted=tuple(deleted))
        self._json({"success": True, "commitOid": oid, "commitUrl": f"{self._base_url}/{repo_id}/commit/{oid}",
                    "pullRequestUrl": pr_url, "hookOutput": ""})
