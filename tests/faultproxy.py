"""A fault-injecting HTTP proxy on 127.0.0.1, in front of an upstream server (tests/fakehub.py).

Every request is forwarded to the upstream server (with its Host header, as a reverse proxy does)
and its answer sent back, one request per connection (`Connection: close`). A request that matches the armed `Fault` gets a broken answer
instead, one failure class per mode:

  reset         the connection is reset (RST) before any answer
  close         the connection is closed (FIN) before any answer
  garbage       an answer that is not HTTP
  status        an HTTP error status (`status`, default 503) with a JSON error body
  stall         no answer at all, until the client gives up (its timeout)
  drop          the status, headers and part of the body, then a reset
  truncated     the status, headers and part of the body (Content-Length larger than it), then a clean close
  short         a complete answer whose body is half the size the Hub announced for the file
  stall_body    the status, headers and part of the body, then nothing until the client gives up
  corrupt       the body with bytes changed (`transform`, default: one byte flipped in the middle)
  headers       the upstream answer with some headers replaced (`headers`), e.g. a hostile ETag
  any_revision  the upstream answer for `main`, whatever revision the request names
  redirect      a relative redirect to the very same URL, for ever

A refused connection needs no proxy: `refused_url` names a port that is bound but not listening.
`log` records (method, target, mode or None) for every request the proxy saw.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

MODES = ("reset", "close", "garbage", "status", "stall", "drop", "truncated", "short", "stall_body", "corrupt",
         "headers", "any_revision", "redirect")
_BEFORE_ANSWER = {"reset", "close", "garbage", "status", "stall", "redirect"}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
_REVISION_IN_PATH = [
    re.compile(r"^(/[^/?]+/[^/?]+/resolve/)([^/?]+)(/.*)$"),
    re.compile(r"^(/api/models/[^/?]+/[^/?]+/(?:revision|tree)/)([^/?]+)(.*)$"),
]


def _flip_middle_byte(body: bytes) -> bytes:
    if not body:
        return body
    i = len(body) // 2
    return body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]


@dataclass
class Fault:
    """What to break: requests with `method` (any if None) whose target matches `path`, at most `times` of them."""

    mode: str
    method: str | None = None
    path: str = ""
    times: int | None = None
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    transform: Callable[[bytes], bytes] = _flip_middle_byte

    def matches(self, method: str, target: str) -> bool:
        return (self.method is None or self.method == method) and re.search(self.path, target) is not None


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class FaultProxy:
    """The proxy: `start()`, point the client at `url`, `arm(Fault(...))`, `disarm()`, `stop()`."""

    def __init__(self, upstream: str) -> None:
        split = urlsplit(upstream)
        self.upstream = (split.hostname or "127.0.0.1", split.port or 80)
        self.log: list[tuple[str, str, str | None]] = []
        self._fault: Fault | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._refusing = socket.socket()
        self._refusing.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_Handler):
            owner = proxy

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._refusing.close()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def refused_url(self) -> str:
        host, port = self._refusing.getsockname()[:2]
        return f"http://{host}:{port}"

    # -- faults ------------------------------------------------------------------------------

    def arm(self, fault: Fault) -> None:
        assert fault.mode in MODES, fault.mode
        with self._lock:
            self._fault = fault

    def disarm(self) -> None:
        with self._lock:
            self._fault = None

    def _take(self, method: str, target: str) -> Fault | None:
        """The fault for this request, if it matches (counting it against `times`)."""
        with self._lock:
            fault = self._fault
            if fault is None or not fault.matches(method, target):
                self.log.append((method, target, None))
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._fault = None
            self.log.append((method, target, fault.mode))
            return fault

    def forwarded(self, method: str | None = None, path: str = "") -> int:
        """How many requests (with `method`, target matching `path`) the proxy saw."""
        return sum(1 for m, t, _ in self.log if (method is None or m == method) and re.search(path, t))


class _Handler(socketserver.StreamRequestHandler):
    owner: FaultProxy

    def handle(self) -> None:
        request = _read_request(self.rfile)
        if request is None:
            return
        self._target = request.target
        fault = self.owner._take(request.method, request.target)
        mode = fault.mode if fault else None
        if fault is not None and mode in _BEFORE_ANSWER:
            return self._break_before_answer(fault)
        if mode == "any_revision":
            request.target = _as_main(request.target)
        status, reason, headers, body = _forward(self.owner.upstream, request)
        if mode == "headers":
            assert fault is not None
            wanted = {k.lower() for k in fault.headers}
            headers = [(k, v) for k, v in headers if k.lower() not in wanted] + list(fault.headers.items())
        if mode == "corrupt" and request.method != "HEAD":
            assert fault is not None
            body = fault.transform(body)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]  # the new body's own length
        self._answer(request.method, status, reason, headers, body, mode)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the socket was reset or closed on purpose

    # -- breaking ----------------------------------------------------------------------------

    def _break_before_answer(self, fault: Fault) -> None:
        if fault.mode == "reset":
            self._reset()
        elif fault.mode == "close":
            self._close()
        elif fault.mode == "garbage":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6 this is not HTTP\r\n\r\n")
            self._close()
        elif fault.mode == "status":
            body = json.dumps({"error": f"fault proxy: HTTP {fault.status}"}).encode()
            head = [("Content-Type", "application/json"), ("X-Error-Message", f"fault proxy: HTTP {fault.status}")]
            self._write_head(fault.status, http.client.responses.get(fault.status, "Error"), head, len(body))
            self.wfile.write(body)
        elif fault.mode == "stall":
            self._stall()
        elif fault.mode == "redirect":
            self._write_head(302, "Found", [("Location", self._target)], 0)

    def _answer(self, method: str, status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
                mode: str | None) -> None:
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), len(body))
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        partial = method == "GET" and mode in ("drop", "truncated", "stall_body", "short") and len(body) > 1
        if partial and mode == "short":
            body = body[: len(body) // 2]
            length = len(body)
        self._write_head(status, reason, headers, length)
        if method == "HEAD":
            return
        if not partial or mode == "short":
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        if mode == "drop":
            self._reset()
        elif mode == "truncated":
            self._close()
        else:
            self._stall()

    def _write_head(self, status: int, reason: str, headers: list[tuple[str, str]], length: int) -> None:
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
        lines += [f"Content-Length: {length}", "Connection: close", "", ""]
        self.wfile.write("\r\n".join(lines).encode("latin-1"))

    def _reset(self) -> None:
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _close(self) -> None:
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()

    def _stall(self) -> None:
        """Send nothing more until the client hangs up (or the proxy stops)."""
        self.wfile.flush()
        while not self.owner._stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.1)
            if readable and not self.connection.recv(1 << 16):
                return


def _read_request(rfile) -> _Request | None:
    line = rfile.readline(65537).decode("latin-1").strip()
    if not line:
        return None
    method, target, _ = line.split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        h = rfile.readline(65537).decode("latin-1")
        if h in ("\r\n", "\n", ""):
            break
        k, _, v = h.partition(":")
        headers.append((k.strip(), v.strip()))
    lower = {k.lower(): v for k, v in headers}
    if lower.get("transfer-encoding", "").lower() == "chunked":
        body = _read_chunked(rfile)
    else:
        body = rfile.read(int(lower.get("content-length") or 0))
    return _Request(method, target, headers, body)


def _read_chunked(rfile) -> bytes:
    body = b""
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            rfile.readline()
            return body
        body += rfile.read(size)
        rfile.readline()


def _forward(upstream: tuple[str, int], request: _Request) -> tuple[int, str, list[tuple[str, str]], bytes]:
    conn = http.client.HTTPConnection(*upstream, timeout=30)
    try:
        headers = {k: v for k, v in request.headers if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(request.body))
        conn.request(request.method, request.target, body=request.body or None, headers=headers)
        response = conn.getresponse()
        body = response.read()
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        return response.status, response.reason, kept, body
    finally:
        conn.close()


def _as_main(target: str) -> str:
    """The same request for revision `main` (a hostile endpoint that answers any revision)."""
    for pattern in _REVISION_IN_PATH:
        m = pattern.match(target)
        if m:
            return f"{m.group(1)}main{m.group(3)}"
    return target
