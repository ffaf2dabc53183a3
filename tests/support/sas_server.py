"""A COG server that answers as Azure Blob Storage does behind Planetary Computer's SAS tokens.

Planetary Computer's files need a SAS token in the query (``?st=..&se=..&sp=rl&..&sig=..``),
which ``planetary_computer`` asks of PC's token endpoint and caches per container until under
a minute of it is left. :class:`SasCogApp` plays both sides:

* ``GET /api/sas/v1/token/{account}/{container}``: a new token, valid ``ttl_s`` seconds, in PC's
  JSON (``msft:expiry``, ``token``);
* a file (GET/HEAD, with Range, as :class:`~tests.support.cog_server.CogApp`) only with a
  token it issued that has not expired: else 403 ``AuthenticationFailed``, Azure's answer to an
  expired or unknown signature.

Control commands (:meth:`~tests.support.process.ServerProcess.control`): ``issued`` (how many
tokens it gave), ``expire`` (every token given so far expires now, as an hour's wait would).

For the client to sign this server's URLs, point ``planetary_computer.sas.BLOB_STORAGE_DOMAIN``
at its ``host:port`` and ``PC_SDK_SAS_URL`` at ``{origin}/api/sas/v1/token``.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from urllib.parse import parse_qs

from tests.support.cog_server import CogApp
from tests.support.httpserver import Request, Response
from tests.support.process import ServerProcess

TOKEN_PATH = "/api/sas/v1/token/"


def _stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _refused(message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
        f"<Message>Server failed to authenticate the request. {message}</Message></Error>"
    )
    return Response(403, body.encode(), {"Content-Type": "application/xml"})


class SasCogApp(CogApp):
    """The COG server of ``root`` behind SAS tokens (see the module docstring)."""

    def __init__(
        self, root: str, host: str = "127.0.0.1", port: int = 0, ttl_s: float = 3600.0
    ) -> None:
        super().__init__(root, host, port)
        self.ttl_s = float(ttl_s)
        self._expiry: dict[str, dt.datetime] = {}  # signature -> when it expires
        self._lock = threading.Lock()

    def control(self, command: str, request: Request) -> Response:
        if command == "issued":
            return Response.json(200, {"issued": len(self._expiry)})
        if command == "expire":
            now = dt.datetime.now(dt.UTC)
            with self._lock:
                self._expiry = dict.fromkeys(self._expiry, now)
            return Response.json(200, {"ok": True})
        return super().control(command, request)

    def respond(self, request: Request) -> Response:
        now = dt.datetime.now(dt.UTC)
        if request.path.startswith(TOKEN_PATH):
            signature = secrets.token_hex(8)
            expiry = now + dt.timedelta(seconds=self.ttl_s)
            with self._lock:
                self._expiry[signature] = expiry
            start = _stamp(now - dt.timedelta(minutes=5))
            token = f"st={start}&se={_stamp(expiry)}&sp=rl&sv=2021-06-08&sr=c&sig={signature}"
            return Response.json(200, {"msft:expiry": _stamp(expiry), "token": token})
        query = parse_qs(request.query)
        signature = (query.get("sig") or [""])[0]
        with self._lock:
            expiry = self._expiry.get(signature)
        if expiry is None:
            return _refused("Signature not valid: no such token.")
        if now >= expiry:
            return _refused(
                f"Signed expiry time [{expiry:%a, %d %b %Y %H:%M:%S} GMT] must be after "
                f"current time [{now:%a, %d %b %Y %H:%M:%S} GMT]."
            )
        return super().respond(request)


class SasCogServer(ServerProcess):
    """:class:`SasCogApp` in a child process (GDAL reads from it)."""

    def __init__(self, root: str, ttl_s: float = 3600.0) -> None:
        super().__init__("tests.support.sas_server:SasCogApp", {"root": root, "ttl_s": ttl_s})
