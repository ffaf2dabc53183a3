"""A local file server with HTTP Range support, so GDAL reads COGs from it over /vsicurl.

Python's ``http.server`` ignores ``Range``; GDAL needs it to read only the windows it wants.
:class:`CogServer` answers ``Range: bytes=a-b``, ``a-`` and ``-n`` with 206, ``Content-Range``
and ``Content-Length``; a plain GET with 200; an unsatisfiable range with 416. A header with
several ranges is answered with the whole file (200), which RFC 9110 allows. Folders are never
listed (404), like a blob store.

:class:`CogServer` runs :class:`CogApp` in a child process (see :mod:`tests.support.process`
for why); :class:`CogApp` is the server itself, usable in-process where GDAL is not the client.

    with CogServer(folder) as cogs:
        rasterio.open(cogs.url_for("s2/B04.tif"))
        assert all(e.status == 206 for e in cogs.requests)
"""

from __future__ import annotations

import re
from email.utils import formatdate
from pathlib import Path

from tests.support.httpserver import Exchange, LocalHTTPServer, Request, Response
from tests.support.process import ServerProcess

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_TYPES = {
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".json": "application/json",
    ".xml": "application/xml",
    ".png": "image/png",
}


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive byte span a single-range ``Range`` header asks of a ``size``-byte file.

    Returns:
        ``(first, last)``, or None when the header is not one valid byte range (the caller
        then sends the whole file).

    Raises:
        ValueError: the range is valid but unsatisfiable (answer 416).
    """
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first_s, last_s = match.groups()
    if first_s == "":  # suffix: the last n bytes
        n = int(last_s)
        if n == 0 or size == 0:
            raise ValueError(f"empty suffix range of a {size}-byte file")
        return max(0, size - n), size - 1
    first = int(first_s)
    last = size - 1 if last_s == "" else int(last_s)
    if last_s != "" and last < first:
        return None
    if first >= size:
        raise ValueError(f"range starts at {first}, beyond the {size}-byte file")
    return first, min(last, size - 1)


class CogApp(LocalHTTPServer):
    """Serve the files under ``root`` over HTTP with Range support (GET and HEAD), in-process."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.root = Path(root).resolve()

    def respond(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response.error(405, f"{request.method} is not allowed here.", Allow="GET, HEAD")
        path = (self.root / request.path.lstrip("/")).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return Response.error(404, f"No file at {request.path}.")
        stat = path.stat()
        size = stat.st_size
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Type": _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"),
            "Last-Modified": formatdate(stat.st_mtime, usegmt=True),
            "ETag": f'"{stat.st_mtime_ns:x}-{size:x}"',
        }
        header = request.header("Range")
        try:
            span = None if header is None else parse_range(header, size)
        except ValueError as exc:
            return Response.error(
                416,
                f"Range {header!r}: {exc}.",
                **{"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
            )
        if span is None:
            if request.method == "HEAD":
                return Response(200, b"", {**headers, "Content-Length": str(size)})
            return Response(200, path.read_bytes(), headers)
        first, last = span
        length = last - first + 1
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        if request.method == "HEAD":
            return Response(206, b"", {**headers, "Content-Length": str(length)})
        with path.open("rb") as f:
            f.seek(first)
            return Response(206, f.read(length), headers)


class CogServer(ServerProcess):
    """The COG file server in a child process: what GDAL-reading tests use.

    Args:
        root: folder whose files are served; ``root/a/b.tif`` is ``{url}/a/b.tif``.
        host, port: where to bind; port 0 picks a free one.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root).resolve()
        super().__init__("tests.support.cog_server:CogApp", {"root": str(self.root)}, host, port)

    @property
    def url(self) -> str:
        """Base URL of ``root`` (no trailing slash)."""
        return self.origin

    def url_for(self, file: str | Path) -> str:
        """HTTP URL of a file: a path relative to ``root``, or an absolute path inside it."""
        return f"{self.origin}{self._server_path(file)}"

    def exchanges_for(self, file: str | Path) -> list[Exchange]:
        """Logged requests for one file (its URL, its path relative to ``root``, or absolute)."""
        wanted = self._server_path(file)
        return [e for e in self.requests if e.path == wanted]

    def bytes_sent(self, file: str | Path | None = None) -> int:
        """Body bytes sent, for one file (as in :meth:`exchanges_for`) or, with None, for all."""
        log = self.requests if file is None else self.exchanges_for(file)
        return sum(e.bytes_sent for e in log)

    def _server_path(self, file: str | Path) -> str:
        text = str(file)
        if text.startswith(("http://", "https://")):
            return "/" + text.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
        path = Path(file)
        if path.is_absolute():
            path = path.resolve().relative_to(self.root)
        return "/" + path.as_posix().lstrip("/")
