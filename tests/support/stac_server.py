"""A local STAC API that answers like Planetary Computer's, for offline client tests.

Endpoints (under ``base_path``, ``/api/stac/v1`` like PC): landing page ``/``,
``/conformance``, ``/collections``, ``/collections/{id}``, ``/collections/{id}/items[/{item}]``,
``GET`` and ``POST /search``. Search understands ``collections``, ``ids``, ``bbox``,
``intersects``, ``datetime`` (instant or ``a/b`` interval, ``..`` or empty for an open end),
``limit``, ``query`` (``eq neq lt lte gt gte in startsWith endsWith contains``), ``filter`` in
CQL2-JSON (``and or not = <> < <= > >= in isNull like s_intersects``), ``sortby`` and ``token``.
``fields`` is accepted and ignored (full items are returned).

Like PC (pgstac): results are sorted by datetime then id, newest first, unless ``sortby`` says
otherwise; a page holds ``limit`` items (default 10, at most 1000); the ``next`` link carries a
``token`` (``next:{collection}:{item id}``), for POST as ``{"method": "POST", "body": {...}}``
repeating the request body, for GET in the URL. Each page also has ``numberMatched``,
``numberReturned`` and the ``context`` extension object.

:class:`StacServer` runs :class:`StacApp` in a child process; its items are added with
:meth:`StacServer.add_items` once the publisher knows the server's URL.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import shapely
from shapely.geometry import box, shape

from tests.support.httpserver import Exchange, LocalHTTPServer, Request, Response
from tests.support.process import ServerProcess
from tests.support.templates import (
    PC_CONFORMANCE,
    S1_COLLECTION,
    S2_COLLECTION,
    collection_template,
    default_stac_dir,
    landing_template,
    rebase_urls,
)

GEOJSON = "application/geo+json"
DEFAULT_SORT: tuple[tuple[str, bool], ...] = (("properties.datetime", True), ("id", True))
"""pgstac's default order: (field, descending)."""


class SearchError(ValueError):
    """A search request the API rejects with 400."""


# --- parsing ------------------------------------------------------------------------------


def parse_instant(text: str, *, end: bool = False) -> datetime:
    """An RFC 3339 date-time (``Z`` or offset) as aware UTC; a bare date means its first (or,
    with ``end``, last) microsecond."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
            return day + timedelta(days=1, microseconds=-1) if end else day
        value = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise SearchError(f"Invalid datetime {text!r}: {exc}.") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_interval(text: str) -> tuple[datetime | None, datetime | None]:
    """``a/b`` (``..`` or empty = open) or a single instant, as an inclusive interval."""
    if "/" not in text:
        return parse_instant(text), parse_instant(text, end=True)
    start, _, stop = text.partition("/")
    lo = None if start.strip() in ("", "..") else parse_instant(start)
    hi = None if stop.strip() in ("", "..") else parse_instant(stop, end=True)
    if lo is not None and hi is not None and lo > hi:
        raise SearchError(f"Datetime interval {text!r} ends before it starts.")
    return lo, hi


def _as_list(value: object, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v for v in value.split(",") if v)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise SearchError(f"'{name}' must be a list of strings, got {value!r}.")


def _as_json(value: object, name: str) -> object:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise SearchError(f"'{name}' is not valid JSON: {exc}.") from exc


@dataclass(frozen=True)
class SearchParams:
    """One search request, from a GET query string or a POST body."""

    body: dict
    """The request as a JSON object (GET parameters converted), without ``token``."""
    collections: tuple[str, ...] | None = None
    ids: tuple[str, ...] | None = None
    bbox: tuple[float, ...] | None = None
    intersects: dict | None = None
    interval: tuple[datetime | None, datetime | None] | None = None
    limit: int = 10
    query: dict | None = None
    filter: dict | None = None
    sortby: tuple[tuple[str, bool], ...] = DEFAULT_SORT
    token: str | None = None

    @classmethod
    def from_get(cls, query: str, *, default_limit: int, max_limit: int) -> SearchParams:
        """Parse a GET query string (lists comma-separated, JSON values as JSON text)."""
        raw: dict[str, object] = dict(parse_qsl(query, keep_blank_values=False))
        if "bbox" in raw:
            try:
                raw["bbox"] = [float(v) for v in str(raw["bbox"]).split(",")]
            except ValueError as exc:
                raise SearchError(f"Invalid bbox {raw['bbox']!r}.") from exc
        for name in ("intersects", "query", "filter"):
            if name in raw:
                raw[name] = _as_json(raw[name], name)
        if "filter-lang" in raw and raw["filter-lang"] != "cql2-json":
            raise SearchError("This test server understands filter-lang cql2-json only.")
        for name in ("collections", "ids"):
            if name in raw:
                raw[name] = list(_as_list(raw[name], name) or ())
        if "sortby" in raw:
            raw["sortby"] = [
                {"field": f.lstrip("+- "), "direction": "desc" if f[0] == "-" else "asc"}
                for f in str(raw["sortby"]).split(",")
                if f
            ]
        if "limit" in raw:
            try:
                raw["limit"] = int(str(raw["limit"]))
            except ValueError as exc:
                raise SearchError(f"Invalid limit {raw['limit']!r}.") from exc
        return cls.from_body(raw, default_limit=default_limit, max_limit=max_limit)

    @classmethod
    def from_body(cls, body: object, *, default_limit: int, max_limit: int) -> SearchParams:
        """Parse a POST body (a JSON object)."""
        if not isinstance(body, dict):
            raise SearchError("The search body must be a JSON object.")
        body = dict(body)
        token = body.pop("token", None)
        bbox = body.get("bbox")
        if bbox is not None and (not isinstance(bbox, list) or len(bbox) not in (4, 6)):
            raise SearchError(f"bbox must have 4 or 6 numbers, got {bbox!r}.")
        if bbox is not None and "intersects" in body:
            raise SearchError("Use bbox or intersects, not both.")
        intersects = body.get("intersects")
        if intersects is not None and not (isinstance(intersects, dict) and "type" in intersects):
            raise SearchError(f"intersects must be a GeoJSON geometry, got {intersects!r}.")
        dt = body.get("datetime")
        limit = body.get("limit", default_limit)
        if not isinstance(limit, int) or limit < 1:
            raise SearchError(f"limit must be a positive integer, got {limit!r}.")
        if body.get("filter-lang", "cql2-json") != "cql2-json":
            raise SearchError("This test server understands filter-lang cql2-json only.")
        sortby = body.get("sortby")
        sort = (
            DEFAULT_SORT
            if not sortby
            else tuple(
                (s["field"], str(s.get("direction", "asc")).lower() == "desc") for s in sortby
            )
        )
        query = _as_json(body.get("query"), "query")
        filt = _as_json(body.get("filter"), "filter")
        return cls(
            body=body,
            collections=_as_list(body.get("collections"), "collections"),
            ids=_as_list(body.get("ids"), "ids"),
            bbox=None if bbox is None else tuple(float(v) for v in bbox),
            intersects=intersects,
            interval=None if dt in (None, "") else parse_interval(str(dt)),
            limit=min(limit, max_limit),
            query=query if isinstance(query, dict) else None,
            filter=filt if isinstance(filt, dict) else None,
            sortby=sort,
            token=None if token is None else str(token),
        )


# --- matching -----------------------------------------------------------------------------


def item_field(item: dict, name: str) -> object:
    """An item's value for a STAC field name (``id``, ``collection``, ``properties.x`` or ``x``)."""
    if name in ("id", "collection", "geometry", "bbox"):
        return item.get(name)
    return item.get("properties", {}).get(name.removeprefix("properties."))


def _item_interval(item: dict) -> tuple[datetime, datetime]:
    props = item["properties"]
    if props.get("datetime"):
        t = parse_instant(props["datetime"])
        return t, t
    return parse_instant(props["start_datetime"]), parse_instant(props["end_datetime"])


def _coerce(a: object, b: object) -> tuple[object, object]:
    """Compare datetimes with datetimes: parse the string side when the other is a datetime."""
    if isinstance(a, datetime) and isinstance(b, str):
        return a, parse_instant(b)
    if isinstance(b, datetime) and isinstance(a, str):
        return parse_instant(a), b
    return a, b


_COMPARE: dict[str, Callable[[object, object], bool]] = {
    "eq": lambda a, b: a == b,
    "=": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "<>": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "<": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "<=": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    ">": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    ">=": lambda a, b: a >= b,
    "startswith": lambda a, b: str(a).startswith(str(b)),
    "endswith": lambda a, b: str(a).endswith(str(b)),
    "contains": lambda a, b: b in a if isinstance(a, list | str) else False,
}


def match_query(item: dict, query: Mapping[str, Mapping[str, object]]) -> bool:
    """The STAC ``query`` extension: every property's every operator must hold."""
    for prop, ops in query.items():
        if not isinstance(ops, Mapping):
            raise SearchError(f"query for {prop!r} must be an object of operators.")
        value = item_field(item, prop)
        for op, operand in ops.items():
            if op == "in":
                if not isinstance(operand, list):
                    raise SearchError(f"query 'in' for {prop!r} needs a list.")
                ok = value in operand
            elif op.lower() in _COMPARE:
                if value is None:
                    return False
                a, b = _coerce(value, operand)
                try:
                    ok = _COMPARE[op.lower()](a, b)
                except TypeError as exc:
                    raise SearchError(
                        f"Cannot compare {prop!r}={value!r} with {operand!r}."
                    ) from exc
            else:
                raise SearchError(f"Unknown query operator {op!r} for {prop!r}.")
            if not ok:
                return False
    return True


def eval_cql2(expr: object, item: dict) -> object:
    """Evaluate a CQL2-JSON expression against an item (the subset PC clients use)."""
    if isinstance(expr, list):
        return [eval_cql2(e, item) for e in expr]
    if not isinstance(expr, dict):
        return expr
    if "property" in expr:
        return item_field(item, str(expr["property"]))
    if "timestamp" in expr or "date" in expr:
        return parse_instant(str(expr.get("timestamp") or expr.get("date")))
    if "op" not in expr:
        return expr  # a GeoJSON geometry literal
    op, args = str(expr["op"]).lower(), expr.get("args", [])
    if op == "and":
        return all(eval_cql2(a, item) for a in args)
    if op == "or":
        return any(eval_cql2(a, item) for a in args)
    if op == "not":
        return not eval_cql2(args[0], item)
    values = [eval_cql2(a, item) for a in args]
    if op == "isnull":
        return values[0] is None
    if op == "in":
        return values[0] in values[1]
    if op == "like":
        pattern = re.escape(str(values[1])).replace("%", ".*").replace("_", ".")
        return values[0] is not None and re.fullmatch(pattern, str(values[0])) is not None
    if op == "s_intersects":
        return shape(values[0]).intersects(shape(values[1]))
    if op in ("=", "<>", "<", "<=", ">", ">="):
        if values[0] is None or values[1] is None:
            return False
        a, b = _coerce(values[0], values[1])
        return _COMPARE[op](a, b)
    raise SearchError(f"CQL2 operator {op!r} is not supported by this test server.")


class _SortKey:
    """Orders values with None last whatever the direction."""

    def __init__(self, value: object, descending: bool) -> None:
        self.value, self.descending = value, descending

    def __lt__(self, other: _SortKey) -> bool:
        if self.value is None or other.value is None:
            return other.value is None and self.value is not None
        return self.value > other.value if self.descending else self.value < other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SortKey) and self.value == other.value


@dataclass
class Catalog:
    """Items by collection, with the search logic. Thread-safe for add + search."""

    items: dict[str, list[dict]] = field(default_factory=dict)
    _geoms: dict[tuple[str, str], shapely.Geometry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, items: Mapping[str, Iterable[dict]]) -> int:
        """Add (or replace, by id) items per collection; returns how many were given."""
        n = 0
        with self._lock:
            for collection, new in items.items():
                kept = {it["id"]: it for it in self.items.get(collection, [])}
                for item in new:
                    if item.get("collection") != collection:
                        raise ValueError(
                            f"Item {item.get('id')} is filed under {collection!r} "
                            f"but says collection={item.get('collection')!r}."
                        )
                    kept[item["id"]] = item
                    self._geoms.pop((collection, item["id"]), None)
                    n += 1
                self.items[collection] = list(kept.values())
        return n

    def clear(self) -> None:
        with self._lock:
            self.items.clear()
            self._geoms.clear()

    def get(self, collection: str, item_id: str) -> dict | None:
        return next((it for it in self.items.get(collection, []) if it["id"] == item_id), None)

    def search(self, params: SearchParams) -> list[dict]:
        """All items matching ``params``, in result order."""
        with self._lock:
            names = params.collections if params.collections is not None else tuple(self.items)
            pool = [(c, it) for c in names for it in self.items.get(c, [])]
        area = None
        if params.bbox is not None:
            b = params.bbox
            area = box(b[0], b[1], b[2], b[3]) if len(b) == 4 else box(b[0], b[1], b[3], b[4])
        elif params.intersects is not None:
            try:
                area = shape(params.intersects)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise SearchError(f"intersects is not a valid geometry: {exc}.") from exc
        hits = []
        for collection, item in pool:
            if params.ids is not None and item["id"] not in params.ids:
                continue
            if area is not None and not area.intersects(self._geometry(collection, item)):
                continue
            if params.interval is not None:
                lo, hi = params.interval
                start, stop = _item_interval(item)
                if (lo is not None and stop < lo) or (hi is not None and start > hi):
                    continue
            if params.query and not match_query(item, params.query):
                continue
            if params.filter and not eval_cql2(params.filter, item):
                continue
            hits.append(item)
        return sorted(
            hits, key=lambda it: [_SortKey(item_field(it, f), d) for f, d in params.sortby]
        )

    def _geometry(self, collection: str, item: dict) -> shapely.Geometry:
        key = (collection, item["id"])
        if key not in self._geoms:
            self._geoms[key] = shape(item["geometry"])
        return self._geoms[key]


# --- the server ---------------------------------------------------------------------------


class StacApp(LocalHTTPServer):
    """The STAC API server itself (in-process); see the module docstring."""

    def __init__(
        self,
        stac_dir: str | Path | None = None,
        base_path: str = "/api/stac/v1",
        default_limit: int = 10,
        max_limit: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.stac_dir = Path(stac_dir) if stac_dir else default_stac_dir()
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.default_limit, self.max_limit = default_limit, max_limit
        self.catalog = Catalog()
        self._collections = {
            c: collection_template(self.stac_dir, c) for c in (S2_COLLECTION, S1_COLLECTION)
        }
        self._landing = landing_template(self.stac_dir)
        self.honours_query = True
        """False: searches ignore the ``query`` extension, as some STAC APIs do."""

    @property
    def url(self) -> str:
        """The API root URL (no trailing slash)."""
        return self.origin + self.base_path

    def control(self, command: str, request: Request) -> Response:
        if command == "items":
            return Response.json(200, {"added": self.catalog.add(request.json())})
        if command == "clear-items":
            self.catalog.clear()
            return Response.json(200, {"ok": True})
        if command == "honour-query":
            self.honours_query = bool(request.json()["on"])
            return Response.json(200, {"ok": True})
        return super().control(command, request)

    def respond(self, request: Request) -> Response:
        path = request.path
        if not path.startswith(self.base_path):
            return Response.error(404, f"Not found: {path}; the API is at {self.base_path}/.")
        route = path[len(self.base_path) :].strip("/").split("/")
        route = [] if route == [""] else route
        try:
            if route == ["search"]:
                if request.method not in ("GET", "POST"):
                    return Response.error(405, "Search takes GET or POST.")
                return self._search(request)
            if request.method not in ("GET", "HEAD"):
                return Response.error(405, f"{request.method} is not allowed on {path}.")
            if not route:
                return Response.json(200, self._landing_page())
            if route == ["conformance"]:
                return Response.json(200, {"conformsTo": list(PC_CONFORMANCE)})
            if route == ["collections"]:
                return Response.json(
                    200,
                    {
                        "collections": [self._collection(c) for c in self._collections],
                        "links": [self._link("root", "/"), self._link("self", "/collections")],
                    },
                )
            if route[0] == "collections" and len(route) >= 2:
                return self._collection_route(route[1:], request)
        except SearchError as exc:
            return Response.error(400, str(exc))
        return Response.error(404, f"Not found: {path}.")

    def _link(
        self, rel: str, suffix: str, type_: str = "application/json", **extra: object
    ) -> dict:
        return {"rel": rel, "type": type_, "href": self.url + suffix, **extra}

    def _landing_page(self) -> dict:
        doc = rebase_urls(self._landing, self.url)
        assert isinstance(doc, dict)
        keep = [lk for lk in doc["links"] if lk["rel"] not in ("child", "search", "self")]
        doc.update(
            {
                "type": "Catalog",
                "stac_version": "1.0.0",
                "conformsTo": list(PC_CONFORMANCE),
                "stac_extensions": [],
            }
        )
        doc["links"] = [
            self._link("self", "/"),
            self._link("root", "/"),
            *keep,
            self._link("search", "/search", GEOJSON, method="GET", title="STAC search"),
            self._link("search", "/search", GEOJSON, method="POST", title="STAC search"),
            *(
                self._link("child", f"/collections/{c}", title=d.get("title"))
                for c, d in self._collections.items()
            ),
        ]
        return doc

    def _collection(self, collection: str) -> dict:
        doc = rebase_urls(self._collections[collection], self.url)
        assert isinstance(doc, dict)
        return doc

    def _collection_route(self, route: list[str], request: Request) -> Response:
        collection = route[0]
        if collection not in self._collections:
            return Response.error(404, f"Collection {collection} does not exist.")
        if len(route) == 1:
            return Response.json(200, self._collection(collection))
        if route[1] != "items" or len(route) > 3:
            return Response.error(404, f"Not found: {request.path}.")
        if len(route) == 3:
            item = self.catalog.get(collection, route[2])
            if item is None:
                return Response.error(
                    404, f"Item {route[2]} in collection {collection} does not exist."
                )
            return Response.json(200, item, GEOJSON)
        params = SearchParams.from_get(
            request.query, default_limit=self.default_limit, max_limit=self.max_limit
        )
        params = dataclasses.replace(params, collections=(collection,))
        return self._page(params, request, f"/collections/{collection}/items")

    def _search(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                body = request.json()
            except ValueError as exc:
                raise SearchError(f"The search body is not JSON: {exc}.") from exc
            params = SearchParams.from_body(
                body, default_limit=self.default_limit, max_limit=self.max_limit
            )
        else:
            params = SearchParams.from_get(
                request.query, default_limit=self.default_limit, max_limit=self.max_limit
            )
        return self._page(params, request, "/search")

    def _page(self, params: SearchParams, request: Request, suffix: str) -> Response:
        if not self.honours_query:
            params = dataclasses.replace(params, query=None)
        hits = self.catalog.search(params)
        start = 0
        if params.token:
            kind, _, rest = params.token.partition(":")
            collection, _, item_id = rest.partition(":")
            ids = [(it["collection"], it["id"]) for it in hits]
            if kind != "next" or (collection, item_id) not in ids:
                raise SearchError(f"Invalid paging token {params.token!r}.")
            start = ids.index((collection, item_id)) + 1
        page = hits[start : start + params.limit]
        links = [self._link("root", "/"), self._link("self", suffix, GEOJSON)]
        if start + params.limit < len(hits) and page:
            token = f"next:{page[-1]['collection']}:{page[-1]['id']}"
            if request.method == "POST":
                links.append(
                    self._link(
                        "next", suffix, GEOJSON, method="POST", body={**params.body, "token": token}
                    )
                )
            else:
                query = [(k, v) for k, v in parse_qsl(request.query) if k != "token"]
                href = f"{suffix}?{urlencode([*query, ('token', token)])}"
                links.append(self._link("next", href, GEOJSON, method="GET"))
        return Response.json(
            200,
            {
                "type": "FeatureCollection",
                "features": page,
                "links": links,
                "numberMatched": len(hits),
                "numberReturned": len(page),
                "context": {"returned": len(page), "limit": params.limit, "matched": len(hits)},
            },
            GEOJSON,
        )


class StacServer(ServerProcess):
    """The local STAC API in a child process: what client tests talk to.

    Args:
        stac_dir: the shared ``stac/`` templates folder (default from settings).
        base_path: where the API lives on the server (PC: ``/api/stac/v1``).
        default_limit: page size when the request gives no ``limit``.
        host, port: where to bind; port 0 picks a free one.
    """

    def __init__(
        self,
        stac_dir: Path | None = None,
        base_path: str = "/api/stac/v1",
        default_limit: int = 10,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        kwargs = {
            "stac_dir": str(stac_dir or default_stac_dir()),
            "base_path": self.base_path,
            "default_limit": default_limit,
        }
        super().__init__("tests.support.stac_server:StacApp", kwargs, host, port)

    @property
    def url(self) -> str:
        """The API root URL to give a client (``STAC_API_URL``), no trailing slash."""
        return self.origin + self.base_path

    @property
    def search_path(self) -> str:
        """Server path of ``/search``, e.g. as a fault prefix."""
        return f"{self.base_path}/search"

    def add_items(self, items: Mapping[str, list[dict]]) -> int:
        """Serve these items ({collection: [item, ...]}), replacing any with the same id."""
        answer = self.control("items", dict(items))
        assert isinstance(answer, dict)
        return int(answer["added"])

    def clear_items(self) -> None:
        """Serve no items."""
        self.control("clear-items", {})

    def honour_query(self, on: bool) -> None:
        """Whether searches apply the ``query`` extension (off: as an API that ignores it)."""
        self.control("honour-query", {"on": bool(on)})

    def searches(self) -> list[Exchange]:
        """Logged ``/search`` requests, oldest first."""
        return [e for e in self.requests if e.path == self.search_path]
