"""Searching a STAC API (Planetary Computer by default) for a field's Sentinel scenes.

:func:`open_client` returns a :class:`StacClient`: a ``pystac_client.Client`` whose HTTP session
retries connection errors, 429 and 5xx answers on every method (searches are POSTs, which
requests' default retries skip), honours ``Retry-After``, and times out every call. URL signing
is a parameter (``signer``): Planetary Computer's ``sign_inplace`` signs only
``*.blob.core.windows.net`` hrefs and leaves any other host (a local test server) unchanged.
:func:`search_scenes` follows the result pages to the end. Failures become
:class:`~core.errors.NetworkError` / :class:`~core.errors.AccessDeniedError` with a message a
user can act on.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import planetary_computer
import pystac
import requests
from pystac_client import Client
from pystac_client.errors import ClientTypeError
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from pystac_client.warnings import DoesNotConformTo
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry
from urllib3.util.retry import Retry

from core.config import PLANETARY_COMPUTER_STAC_URL, Settings
from core.errors import AccessDeniedError, FieldFlowError, InputError, NetworkError

S2_COLLECTION = "sentinel-2-l2a"
S1_COLLECTION = "sentinel-1-rtc"
RETRY_STATUS: tuple[int, ...] = (429, 500, 502, 503, 504)
"""HTTP answers worth retrying: rate limiting and server-side trouble."""
PAGE_SIZE = 100
"""Items asked for per result page (the API may cap it lower)."""


def _load_extension_hooks() -> None:
    """Register pystac's extension migration hooks now, once, while this module is imported.

    pystac (1.15) registers them lazily at the first item it parses, and marks them loaded
    before loading them: items parsed by other threads meanwhile (two Runs' first searches,
    Dask worker threads) are not migrated, e.g. PC's ``proj:epsg`` never becomes ``proj:code``.
    A module body runs once, under the import lock, before any of its searches."""
    discover = getattr(pystac.EXTENSION_HOOKS, "_discover", None)
    if callable(discover):  # absent in a pystac that registers them at import
        discover()


_load_extension_hooks()

Signer = Callable[[Any], Any]
"""Signs a pystac Item/Collection/dict in place, or returns a signed copy of an href string."""

SAS_QUERY_KEYS = frozenset(
    {"st", "se", "sp", "spr", "sv", "sr", "sig", "sip", "ss", "srt", "sdd"}
    | {"skoid", "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid"}
)
"""Query parameters of an Azure SAS token (Planetary Computer's signed hrefs)."""
TOKEN_MARGIN_S = 600.0
"""A cached Planetary Computer token with less than this left is renewed before a load: a
load signs all its hrefs at its start, and reading a season can take minutes, while
``planetary_computer`` renews a cached token only under a minute before it expires."""


def unsigned(href: str) -> str:
    """``href`` without the SAS token in its query (an Azure signature: ``sig`` and ``se``);
    an href without one, as it is."""
    parts = urlsplit(href)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not {"sig", "se"} <= {key for key, _ in query}:
        return href
    kept = [(key, value) for key, value in query if key not in SAS_QUERY_KEYS]
    return urlunsplit(parts._replace(query=urlencode(kept)))


def read_signer(signer: Signer | None) -> Callable[[str], str] | None:
    """What signs an href just before it is read: ``signer`` on the href without the token it
    was given at search time. Planetary Computer's signer leaves an href that holds a token as
    it is, so before this a fetch read with the search's token however old, and one that
    expired meanwhile failed it as "access refused" (review 11)."""
    if signer is None:
        return None

    def sign_at_read(href: str) -> str:
        return str(signer(unsigned(href)))

    return sign_at_read


def renew_tokens(min_left_s: float = TOKEN_MARGIN_S) -> int:
    """Drop the Planetary Computer tokens cached in this process that have under
    ``min_left_s`` seconds left (``math.inf``: all), so that the next signing asks for new
    ones; returns how many were dropped. Other catalogues' signers are not affected."""
    cache = planetary_computer.sas.TOKEN_CACHE
    stale = [key for key, token in list(cache.items()) if token.ttl() < min_left_s]
    for key in stale:
        cache.pop(key, None)
    return len(stale)


@dataclass(frozen=True)
class StacClient:
    """An opened STAC API with the settings it was opened with."""

    catalog: Client
    """The pystac-client client (its session retries and times out)."""
    url: str
    """The API's base URL, for messages and cube provenance."""
    tries: int
    """How many times one HTTP call is attempted before giving up (retries + 1)."""
    signer: Signer | None
    """What signs asset hrefs (applied to every item found); ``None`` for no signing."""


RETRY_AFTER_MAX_S = 30.0
"""Longest pause a server's ``Retry-After`` gets before a retry: urllib3 obeys the header
without a bound, so one 429 asking for an hour held a fetch, silent, for an hour. A server
still refusing after the capped pauses ends the fetch with its own message."""


class _CappedRetry(Retry):
    """:class:`Retry` whose pauses for ``Retry-After`` last at most :data:`RETRY_AFTER_MAX_S`."""

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), RETRY_AFTER_MAX_S)


def make_retry(retries: int, *, backoff_factor: float = 0.5) -> Retry:
    """urllib3 retry policy: connection errors, 429 and 5xx on any method, with backoff.

    Args:
        retries: retries after the first try (``Settings.retries``).
        backoff_factor: sleep ``backoff_factor * 2 ** (n - 1)`` seconds before retry ``n``,
            unless the server sends ``Retry-After`` (obeyed up to :data:`RETRY_AFTER_MAX_S`).
    """
    return _CappedRetry(
        total=max(0, int(retries)),
        backoff_factor=backoff_factor,
        backoff_max=30.0,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=True,
    )


def check_stac_url(url: str) -> str:
    """``url`` if it can be the address of a STAC API: ``http(s)://host[:port][/path]``.

    Checked before any request: pystac-client reads anything else as a local file (a plain word
    or a folder gives ``FileNotFoundError`` / ``IsADirectoryError``), and requests can never
    fetch another scheme (``ftp://``), so retrying such a value only wastes time.

    Raises:
        InputError: names the value and the form it must take.
    """
    text = str(url).strip()
    try:
        parts = urlsplit(text)
        usable = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        usable = usable and (parts.port is None or parts.port > 0)
    except ValueError:  # a bad port or IPv6 address
        usable = False
    if not usable:
        raise InputError(f"STAC_API_URL is {text!r}: {_URL_ADVICE}")
    return text


_URL_ADVICE = (
    f"it must be the http(s) URL of a STAC API, e.g. {PLANETARY_COMPUTER_STAC_URL}. Correct it, "
    "or unset it to use Planetary Computer, and start again."
)
"""What to do about a STAC_API_URL that is no usable URL (:func:`check_stac_url`,
:func:`translate_errors`)."""


def open_client(
    settings: Settings,
    *,
    signer: Signer | None = planetary_computer.sign_inplace,
    backoff_factor: float = 0.5,
) -> StacClient:
    """Open the STAC API at ``settings.stac_api_url``.

    A Planetary Computer subscription key, when needed, is read by ``planetary_computer`` itself
    from ``PC_SDK_SUBSCRIPTION_KEY``; it is passed on explicitly only when that variable is set.

    Args:
        settings: gives the URL, ``retries`` and ``timeout_s``.
        signer: modifier applied to every item and collection the client returns.
        backoff_factor: see :func:`make_retry`.

    Raises:
        InputError: the URL is not an http(s) URL (see :func:`check_stac_url`); nothing is tried.
        NetworkError: the API cannot be reached, keeps failing, or is not a STAC API.
        AccessDeniedError: the API answers 401/403.
    """
    url = check_stac_url(settings.stac_api_url)
    key = os.environ.get("PC_SDK_SUBSCRIPTION_KEY")
    if key and signer is not None:
        planetary_computer.set_subscription_key(key)
    tries = max(0, int(settings.retries)) + 1
    io = StacApiIO(
        max_retries=make_retry(settings.retries, backoff_factor=backoff_factor),
        timeout=settings.timeout_s,
    )
    with translate_errors(url, tries, what="open the STAC API"):
        catalog = Client.open(url, modifier=signer, stac_io=io, timeout=settings.timeout_s)
    return StacClient(catalog=catalog, url=url, tries=tries, signer=signer)


def search_scenes(
    client: StacClient,
    collection: str,
    geometry: BaseGeometry,
    start: dt.date,
    end: dt.date,
    *,
    max_cloud_cover: float | None = None,
    page_size: int = PAGE_SIZE,
) -> list[pystac.Item]:
    """All items of ``collection`` intersecting ``geometry`` between two dates, inclusive.

    Follows the API's result pages to the end. With ``max_cloud_cover`` the API is asked for
    ``eo:cloud_cover <= max_cloud_cover`` and the answer is filtered again here, so a server that
    ignores the ``query`` extension cannot slip cloudier scenes through.

    Args:
        client: from :func:`open_client`.
        collection: e.g. :data:`S2_COLLECTION`.
        geometry: the field in EPSG:4326.
        start, end: first and last calendar day (UTC) of the period.
        max_cloud_cover: largest scene cloud cover in percent, or ``None`` for all scenes.
        page_size: items asked for per page.

    Returns:
        Signed items sorted by (datetime, id); empty if none match.

    Raises:
        NetworkError: the API cannot be reached or keeps failing after retries.
        AccessDeniedError: the API (or the signer's token service) answers 401/403.
    """
    params: dict[str, Any] = {
        "collections": [collection],
        "intersects": mapping(geometry),
        "datetime": f"{start.isoformat()}/{end.isoformat()}",
        "limit": int(page_size),
    }
    if max_cloud_cover is not None:
        params["query"] = {"eo:cloud_cover": {"lte": float(max_cloud_cover)}}
    with translate_errors(client.url, client.tries, what=f"search {collection}"):
        items = list(client.catalog.search(**params).items())
    if max_cloud_cover is not None:
        items = [
            item
            for item in items
            if float(item.properties.get("eo:cloud_cover", 0.0)) <= max_cloud_cover
        ]
    return sorted(items, key=lambda item: (item_datetime(item), item.id))


def item_datetime(item: pystac.Item) -> dt.datetime:
    """The item's nominal acquisition time as naive UTC (``datetime`` or ``start_datetime``)."""
    stamp = item.datetime or item.common_metadata.start_datetime
    if stamp is None:
        raise NetworkError(f"The STAC item {item.id} has no datetime; the API answer is broken.")
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
    return stamp


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None and isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
    return int(status) if status is not None else None


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(exc: BaseException, status: int | None) -> str:
    """Why a request failed, in words (urllib3's retry text names pools and classes)."""
    kept = re.search(r"too many (\d{3}) error responses", str(exc))
    if kept:
        return f"it kept answering HTTP {kept.group(1)} (the service is down or overloaded)"
    if status is not None:
        return f"HTTP {status}"
    text = str(exc)
    if isinstance(exc, requests.Timeout) or "timed out" in text.lower():
        return "no answer in time"
    if isinstance(exc, requests.ConnectionError) or "NewConnectionError" in text:
        return "no connection (refused, dropped or the name not found)"
    return _short(exc)


@contextmanager
def translate_errors(url: str, tries: int, *, what: str) -> Iterator[None]:
    """Turn HTTP client failures inside the block into :mod:`core.errors` exceptions.

    Args:
        url: the service, named in the message.
        tries: how many attempts were made per call, named in the message.
        what: the action, e.g. ``"search sentinel-2-l2a"``.
    """
    try:
        yield
    except FieldFlowError:
        raise
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as exc:
        # requests refuses the URL itself before sending anything: no retry can help.
        raise InputError(
            f"STAC_API_URL is {url!r}, which cannot be requested ({_short(exc)}): {_URL_ADVICE}"
        ) from exc
    except (APIError, requests.RequestException) as exc:
        status = _status_of(exc)
        if status in (401, 403):
            raise AccessDeniedError(
                f"The STAC API at {url} refused access (HTTP {status}) when trying to {what}. "
                "If it needs a key, set PC_SDK_SUBSCRIPTION_KEY."
            ) from exc
        if status is not None and 400 <= status < 500:
            raise NetworkError(
                f"The STAC API at {url} rejected the request to {what} (HTTP {status}): "
                f"{_short(exc)}. Check STAC_API_URL."
            ) from exc
        raise NetworkError(
            f"Could not reach the STAC API at {url} after {tries} tries (trying to {what}): "
            f"{_reason(exc, status)}. Check your connection or STAC_API_URL."
        ) from exc
    except (pystac.STACError, pystac.STACTypeError, ValueError, KeyError) as exc:
        raise NetworkError(
            f"The answer of {url} is not a usable STAC API response (trying to {what}): "
            f"{_short(exc)}. Check STAC_API_URL."
        ) from exc
    except DoesNotConformTo as exc:  # a static catalogue: no /search (review 16: a traceback)
        raise InputError(
            f"STAC_API_URL is {url!r}, a STAC catalogue without item search (no /search), not "
            f"a STAC API: give an API's root, e.g. {PLANETARY_COMPUTER_STAC_URL}, or unset it "
            "to use Planetary Computer, and start again."
        ) from exc
    except NotImplementedError as exc:
        raise NetworkError(
            f"The service at {url} does not offer STAC item search ({_short(exc)}). "
            "Check STAC_API_URL."
        ) from exc
    except ClientTypeError as exc:  # a STAC page, but not the API's root (a collection, /search)
        found = re.search(r"found type=(\w+)", str(exc))
        kind = f"a {found.group(1)}" if found and found.group(1) != "None" else "no catalogue"
        raise InputError(
            f"STAC_API_URL is {url!r}, which is {kind}, not the root of a STAC API: give the "
            f"API's root, e.g. {PLANETARY_COMPUTER_STAC_URL} (not a collection's or /search "
            "page), or unset it to use Planetary Computer, and start again."
        ) from exc
