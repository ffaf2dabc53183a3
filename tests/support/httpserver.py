"""A threaded local HTTP server with a request log and fault injection, for offline tests.

:class:`LocalHTTPServer` turns each request into a :class:`Request`, asks :meth:`respond` for a
:class:`Response` and writes it (HTTP/1.1, keep-alive, exact ``Content-Length``). Subclasses
only implement :meth:`respond`. Before that, :class:`Faults` may answer instead: an error
status for the next N requests (with ``Retry-After`` if asked), a dropped connection, a delay,
or a lasting refusal for a path prefix. Every request, faulted or not, lands in
:attr:`LocalHTTPServer.requests`.

Paths under :data:`CONTROL_PREFIX` are the harness's own control channel (request log, faults,
subclass commands as JSON); they are neither logged nor faulted. :mod:`tests.support.process`
uses it to drive a server that runs in a child process.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urlsplit

CONTROL_PREFIX = "/__harness__/"
"""Path prefix of the control channel; never a path a real service has."""


@dataclass(frozen=True)
class Request:
    """One HTTP request as the server received it."""

    method: str
    """``GET``, ``HEAD``, ``POST``..."""
    path: str
    """URL path, percent-decoded, without the query string."""
    query: str
    """Raw query string (no leading ``?``), empty if none."""
    headers: dict[str, str]
    """Request headers; names as sent."""
    body: bytes = b""
    """Request body (POST), empty otherwise."""

    def header(self, name: str) -> str | None:
        """Header value by case-insensitive name, or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)

    def json(self) -> object:
        """The body parsed as JSON (raises ``ValueError`` when it is not JSON)."""
        return json.loads(self.body or b"null")


@dataclass(frozen=True)
class Response:
    """What the server sends back."""

    status: int
    """HTTP status code."""
    body: bytes = b""
    """Payload; not sent for HEAD."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra headers; ``Content-Length`` is added from ``body`` unless given."""

    @classmethod
    def json(cls, status: int, payload: object, content_type: str = "application/json") -> Response:
        """A JSON response."""
        return cls(status, json.dumps(payload).encode(), {"Content-Type": content_type})

    @classmethod
    def error(cls, status: int, description: str, **headers: str) -> Response:
        """An error in the shape stac-fastapi uses: ``{"code": ..., "description": ...}``."""
        code = {
            400: "BadRequest",
            403: "Forbidden",
            404: "NotFoundError",
            405: "MethodNotAllowed",
            416: "RangeNotSatisfiable",
            429: "TooManyRequests",
            500: "InternalServerError",
            503: "ServiceUnavailable",
        }.get(status, "Error")
        resp = cls.json(status, {"code": code, "description": description})
        return cls(status, resp.body, {**resp.headers, **headers})


@dataclass(frozen=True)
class Exchange:
    """A request and what became of it, as kept in the log."""

    request: Request
    status: int
    """Status sent; 0 when the connection was dropped without an answer."""
    bytes_sent: int
    """Body bytes sent (0 for HEAD and dropped connections)."""
    fault: str | None = None
    """Which injected fault applied (``"fail"``, ``"deny"``, ``"drop"``, ``"delay"``, ``"cut"``:
    then :attr:`bytes_sent` is what was announced, not what was sent), or None."""

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def path(self) -> str:
        return self.request.path

    def to_json(self) -> dict[str, object]:
        """A JSON-able dict (body as latin-1 text); inverse of :meth:`from_json`."""
        r = self.request
        return {
            "method": r.method,
            "path": r.path,
            "query": r.query,
            "headers": r.headers,
            "body": r.body.decode("latin-1"),
            "status": self.status,
            "bytes_sent": self.bytes_sent,
            "fault": self.fault,
        }

    @classmethod
    def from_json(cls, d: dict) -> Exchange:
        """Rebuild an exchange sent by :meth:`to_json`."""
        request = Request(
            d["method"], d["path"], d["query"], dict(d["headers"]), d["body"].encode("latin-1")
        )
        return cls(request, d["status"], d["bytes_sent"], d["fault"])


@dataclass
class _Fault:
    kind: str
    remaining: int
    prefix: str
    status: int = 503
    retry_after_s: int | None = None
    delay_s: float = 0.0
    cut_after_bytes: int = 0


class Faults:
    """Injected failures, consumed in order by matching requests. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Fault] = []
        self._denied: dict[str, int] = {}

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        *,
        retry_after_s: int | None = None,
        prefix: str = "/",
    ) -> None:
        """Answer the next ``n`` requests under ``prefix`` with ``status`` (e.g. 503, 429),
        with a ``Retry-After: retry_after_s`` header if given (whole seconds, as RFC 9110 says)."""
        self._add(_Fault("fail", n, prefix, status, retry_after_s))

    def drop_next(self, n: int = 1, *, prefix: str = "/") -> None:
        """Close the connection without any answer on the next ``n`` requests under ``prefix``."""
        self._add(_Fault("drop", n, prefix))

    def delay_next(self, n: int, delay_s: float, *, prefix: str = "/") -> None:
        """Wait ``delay_s`` before answering the next ``n`` requests (to trip client time-outs)."""
        self._add(_Fault("delay", n, prefix, delay_s=delay_s))

    def cut_next(self, n: int = 1, *, after_bytes: int, prefix: str = "/") -> None:
        """Answer the next ``n`` requests under ``prefix`` (not HEAD) as usual, but close the
        connection after the first ``after_bytes`` bytes of the answer (status line and headers
        included, which announce the whole body): a transfer cut short mid-way."""
        self._add(_Fault("cut", n, prefix, cut_after_bytes=after_bytes))

    def deny(self, prefix: str, status: int = 403) -> None:
        """Refuse every request under ``prefix`` with ``status`` until :meth:`clear`."""
        with self._lock:
            self._denied[prefix] = status

    def clear(self) -> None:
        """Forget all pending and lasting faults."""
        with self._lock:
            self._queue.clear()
            self._denied.clear()

    def _add(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError(f"A fault needs n >= 1 requests, got {fault.remaining}.")
        with self._lock:
            self._queue.append(fault)

    def take(self, path: str, method: str = "GET") -> _Fault | None:
        """The fault that answers a ``method`` request for ``path`` (consuming one use), or
        None. A cut only answers a request with a body (not HEAD)."""
        with self._lock:
            for prefix, status in self._denied.items():
                if path.startswith(prefix):
                    return _Fault("deny", 1, prefix, status)
            for fault in self._queue:
                if fault.kind == "cut" and method == "HEAD":
                    continue
                if path.startswith(fault.prefix):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._queue.remove(fault)
                    return fault
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small Range answers: 50 ms -> 7 ms per COG open
    server: _Server
    timeout = 30  # idle keep-alive connections end after this

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(
            self.command, unquote(parts.path), parts.query, dict(self.headers.items()), body
        )
        if request.path.startswith(CONTROL_PREFIX):
            self._write(owner.control(request.path[len(CONTROL_PREFIX) :], request))
            return
        fault = owner.faults.take(request.path, self.command)
        kind = fault.kind if fault is not None else None
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            owner._record(Exchange(request, 0, 0, "drop"))
            return
        cut = fault.cut_after_bytes if fault is not None and fault.kind == "cut" else None
        if fault is not None and fault.kind in ("delay", "cut"):
            time.sleep(fault.delay_s)
            fault = None
        if fault is not None:
            extra = (
                {}
                if fault.retry_after_s is None
                else {"Retry-After": str(int(fault.retry_after_s))}
            )
            response = Response.error(fault.status, f"Injected fault ({fault.kind}).", **extra)
        else:
            try:
                response = owner.respond(request)
            except Exception as exc:  # a bug in the test server: answer 500, do not hang
                response = Response.error(500, f"Test server error: {exc!r}")
        # Logged before the answer is written: a client that has read the answer then finds
        # it in the log (no race); corrected below if the client went away mid-answer.
        planned = 0 if self.command == "HEAD" else len(response.body)
        entry = Exchange(request, response.status, planned, kind)
        owner._record(entry)
        try:
            self._write(response, cut)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out)
            self.close_connection = True
            owner._replace(entry, Exchange(request, response.status, 0, kind))

    def _write(self, response: Response, cut_after_bytes: int | None = None) -> None:
        """Send ``response`` (no body for HEAD); with ``cut_after_bytes``, only that much of
        its body, then the connection is closed (the headers announce the whole body)."""
        headers = {"Content-Type": "application/octet-stream", **response.headers}
        headers.setdefault("Content-Length", str(len(response.body)))
        if cut_after_bytes is not None:  # counted from the answer's first byte, headers too
            lines = [
                f"{self.protocol_version} {response.status} {self.responses[response.status][0]}"
            ]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body
            self.wfile.write(raw[:cut_after_bytes])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: LocalHTTPServer


class LocalHTTPServer:
    """Base of the local test servers: start/stop, base URL, request log, faults.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Binds 127.0.0.1 on a free
    port unless ``port`` is given.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._log: list[Exchange] = []
        self._log_lock = threading.Lock()
        self.faults = Faults()

    def respond(self, request: Request) -> Response:
        """Answer one request (subclasses override)."""
        return Response.error(404, f"Nothing is served at {request.path}.")

    _FAULT_OPS = frozenset({"fail_next", "drop_next", "delay_next", "cut_next", "deny", "clear"})

    def control(self, command: str, request: Request) -> Response:
        """Answer a control-channel command (``requests``, ``reset``, ``faults``).

        Subclasses add commands by overriding and falling back to this method.
        """
        if command == "requests":
            return Response.json(200, [e.to_json() for e in self.requests])
        if command == "clear-requests":
            self.clear_requests()
            return Response.json(200, {"ok": True})
        if command == "reset":
            self.reset()
            return Response.json(200, {"ok": True})
        if command == "faults":
            payload = request.json()
            op = payload.get("op") if isinstance(payload, dict) else None
            if op not in self._FAULT_OPS:
                return Response.error(400, f"Unknown fault operation {op!r}.")
            try:
                getattr(self.faults, op)(**payload.get("args", {}))
            except (TypeError, ValueError) as exc:
                return Response.error(400, f"Bad fault {payload}: {exc}")
            return Response.json(200, {"ok": True})
        return Response.error(404, f"Unknown control command {command!r}.")

    def start(self) -> Self:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            name=type(self).__name__,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash); the server must be started."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started; call start() first.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        """The bound port; the server must be started."""
        return int(self.origin.rsplit(":", 1)[1])

    @property
    def requests(self) -> list[Exchange]:
        """A copy of the request log, oldest first."""
        with self._log_lock:
            return list(self._log)

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._log_lock:
            self._log.clear()

    def reset(self) -> None:
        """Clear the request log and all faults."""
        self.clear_requests()
        self.faults.clear()

    def _record(self, exchange: Exchange) -> None:
        with self._log_lock:
            self._log.append(exchange)

    def _replace(self, old: Exchange, new: Exchange) -> None:
        with self._log_lock:
            for i, logged in enumerate(self._log):
                if logged is old:
                    self._log[i] = new
                    return
