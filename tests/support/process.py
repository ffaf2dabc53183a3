"""Run a :class:`~tests.support.httpserver.LocalHTTPServer` in a child process.

Why a child process: GDAL makes some HTTP calls while rasterio holds the GIL (for instance the
sidecar-file listing right after ``GDALOpen``). A server thread in the same interpreter then
cannot answer and the read deadlocks. In its own process the server always answers.

The parent talks to the child over the server's control channel (``/__harness__/...``): request
log, faults, and subclass commands. The child exits when its stdin closes, so it never outlives
the test process.

    python -m tests.support.process '{"app": "tests.support.cog_server:CogApp",
                                      "kwargs": {"root": "/tmp/x"}}'
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.httpserver import CONTROL_PREFIX, Exchange

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServerError(RuntimeError):
    """The child server did not start, or a control command failed."""


class RemoteFaults:
    """The :class:`~tests.support.httpserver.Faults` API, applied to a server in a child process."""

    def __init__(self, server: ServerProcess) -> None:
        self._server = server

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
        self._send("fail_next", n=n, status=status, retry_after_s=retry_after_s, prefix=prefix)

    def drop_next(self, n: int = 1, *, prefix: str = "/") -> None:
        """Close the connection without any answer on the next ``n`` requests under ``prefix``."""
        self._send("drop_next", n=n, prefix=prefix)

    def delay_next(self, n: int, delay_s: float, *, prefix: str = "/") -> None:
        """Wait ``delay_s`` before answering the next ``n`` requests."""
        self._send("delay_next", n=n, delay_s=delay_s, prefix=prefix)

    def cut_next(self, n: int = 1, *, after_bytes: int, prefix: str = "/") -> None:
        """Cut the next ``n`` answers under ``prefix`` after ``after_bytes`` bytes of body."""
        self._send("cut_next", n=n, after_bytes=after_bytes, prefix=prefix)

    def deny(self, prefix: str, status: int = 403) -> None:
        """Refuse every request under ``prefix`` with ``status`` until :meth:`clear`."""
        self._send("deny", prefix=prefix, status=status)

    def clear(self) -> None:
        """Forget all pending and lasting faults."""
        self._send("clear")

    def _send(self, op: str, **args: object) -> None:
        self._server.control("faults", {"op": op, "args": args})


class ServerProcess:
    """A local test server living in a child process; start/stop or use as a context manager.

    Args:
        app: ``"module:Class"`` of a :class:`~tests.support.httpserver.LocalHTTPServer` subclass.
        kwargs: JSON-able keyword arguments of that class.
        host, port: where to bind; port 0 picks a free one.
    """

    def __init__(
        self,
        app: str,
        kwargs: dict[str, object] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._spec = {"app": app, "kwargs": kwargs or {}, "host": host, "port": port}
        self._proc: subprocess.Popen[str] | None = None
        self._origin: str | None = None
        self.faults = RemoteFaults(self)

    def start(self) -> Self:
        """Spawn the child and wait until it serves; returns self."""
        if self._proc is not None:
            return self
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.process", json.dumps(self._spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
            env=env,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("http://"):
            proc.kill()
            proc.wait()
            raise ServerError(
                f"{self._spec['app']} did not start (child said {line!r}); see its stderr above."
            )
        self._proc, self._origin = proc, line
        return self

    def stop(self) -> None:
        """Stop the child (closing its stdin), killing it if it does not exit in 5 s."""
        proc, self._proc, self._origin = self._proc, None, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

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
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._origin is None:
            raise ServerError(f"{type(self).__name__} is not started; call start() first.")
        return self._origin

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.origin.rsplit(":", 1)[1])

    @property
    def requests(self) -> list[Exchange]:
        """The child's request log, oldest first (control requests excluded)."""
        entries = self.control("requests")
        assert isinstance(entries, list)
        return [Exchange.from_json(d) for d in entries]

    def clear_requests(self) -> None:
        """Empty the request log."""
        self.control("clear-requests", {})

    def reset(self) -> None:
        """Clear the request log and all faults."""
        self.control("reset", {})

    def control(self, command: str, payload: object = None) -> object:
        """Send a control command (POST when ``payload`` is given) and return its JSON answer."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            f"{self.origin}{CONTROL_PREFIX}{command}",
            data=data,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ServerError(f"Control command {command!r} failed: {exc.read().decode()}") from exc


def main(argv: list[str]) -> int:
    """Child entry point: serve until stdin closes."""
    spec = json.loads(argv[0])
    module_name, class_name = spec["app"].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    server = cls(host=spec["host"], port=spec["port"], **spec["kwargs"])
    server.start()
    print(server.origin, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
