"""The STAC search client against the local PC-like STAC API: paging, filters, retries,
time-outs, refusals and signing. The real pystac-client/requests/urllib3 stack talks HTTP to a
real server process; nothing in the client is mocked."""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Iterator

import planetary_computer
import pytest
import shapely
from shapely.geometry import mapping

from core.config import Settings
from core.errors import AccessDeniedError, InputError, NetworkError
from core.stac import S1_COLLECTION, S2_COLLECTION, check_stac_url, open_client, search_scenes
from tests.support.stac_server import StacServer
from tests.support.templates import default_stac_dir, item_template

FIELD = shapely.box(3.02, 50.80, 3.03, 50.81)
ASSET_BASE = "http://127.0.0.1:9/cogs"  # never read here: only searched and signed


NEAR_FIELD = FIELD.buffer(0.05)


def s2_item(
    index: int, when: dt.datetime, *, cloud: float = 10.0, footprint: shapely.Polygon = NEAR_FIELD
) -> dict:
    """A real PC ``sentinel-2-l2a`` item with a new id, time, footprint and local hrefs."""
    item = item_template(default_stac_dir(), S2_COLLECTION)
    item["id"] = f"S2X_TEST_{index:04d}"
    item["properties"]["datetime"] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    item["properties"]["eo:cloud_cover"] = cloud
    item["geometry"] = mapping(footprint)
    item["bbox"] = list(footprint.bounds)
    for name, asset in item["assets"].items():
        asset["href"] = f"{ASSET_BASE}/{item['id']}/{name}.tif"
    item["links"] = []
    return item


@pytest.fixture(scope="module")
def server() -> Iterator[StacServer]:
    with StacServer() as stac:
        yield stac


@pytest.fixture()
def stac(server: StacServer) -> Iterator[StacServer]:
    server.reset()
    server.clear_items()
    yield server
    server.reset()
    server.clear_items()


def settings_for(stac: StacServer, *, retries: int = 2, timeout_s: float = 10.0) -> Settings:
    return Settings(stac_api_url=stac.url, retries=retries, timeout_s=timeout_s)


def test_search_follows_every_page_and_sorts_oldest_first(stac: StacServer) -> None:
    start = dt.datetime(2023, 3, 1, 10, 30)
    stac.add_items({S2_COLLECTION: [s2_item(i, start + dt.timedelta(days=i)) for i in range(25)]})
    client = open_client(settings_for(stac), backoff_factor=0)
    items = search_scenes(
        client, S2_COLLECTION, FIELD, dt.date(2023, 3, 1), dt.date(2023, 3, 25), page_size=10
    )
    assert [item.id for item in items] == [f"S2X_TEST_{i:04d}" for i in range(25)]
    searches = stac.searches()
    assert [e.method for e in searches] == ["POST"] * 3  # pages of 10, 10, 5
    assert all(e.status == 200 for e in searches)


def test_search_filters_period_place_and_cloud_cover(stac: StacServer) -> None:
    far = shapely.box(40.0, -3.0, 40.1, -2.9)
    stac.add_items(
        {
            S2_COLLECTION: [
                s2_item(0, dt.datetime(2023, 2, 28, 23, 59)),  # the day before: out
                s2_item(1, dt.datetime(2023, 3, 1, 0, 0)),  # first instant of the period: in
                s2_item(2, dt.datetime(2023, 3, 31, 23, 59, 59)),  # last second of the end day: in
                s2_item(3, dt.datetime(2023, 3, 10, 10), footprint=far),  # elsewhere: out
                s2_item(4, dt.datetime(2023, 3, 11, 10), cloud=95.0),
                s2_item(5, dt.datetime(2023, 3, 12, 10), cloud=80.0),
            ]
        }
    )
    client = open_client(settings_for(stac), backoff_factor=0)
    period = (dt.date(2023, 3, 1), dt.date(2023, 3, 31))
    ids = [i.id[-1] for i in search_scenes(client, S2_COLLECTION, FIELD, *period)]
    assert ids == ["1", "4", "5", "2"]
    cloudless = search_scenes(client, S2_COLLECTION, FIELD, *period, max_cloud_cover=80)
    assert [i.id[-1] for i in cloudless] == ["1", "5", "2"]
    assert search_scenes(client, S1_COLLECTION, FIELD, *period) == []


def test_a_server_that_ignores_the_query_extension_cannot_slip_cloudy_scenes_through(
    stac: StacServer,
) -> None:
    """Some STAC APIs ignore ``query``: the answer is filtered again by the client (review 28:
    the test server always applied it, so dropping that filter passed)."""
    stac.add_items(
        {
            S2_COLLECTION: [
                s2_item(1, dt.datetime(2023, 3, 5, 10), cloud=10.0),
                s2_item(4, dt.datetime(2023, 3, 11, 10), cloud=95.0),
                s2_item(5, dt.datetime(2023, 3, 12, 10), cloud=80.0),
            ]
        }
    )
    client = open_client(settings_for(stac), backoff_factor=0)
    query = {"eo:cloud_cover": {"lte": 80.0}}
    stac.honour_query(False)
    try:
        answer = client.catalog.search(
            collections=[S2_COLLECTION],
            intersects=FIELD.__geo_interface__,
            datetime="2023-03-01/2023-03-31",
            query=query,
        ).items()
        assert sorted(i.id[-1] for i in answer) == ["1", "4", "5"]  # the server ignored it
        period = (dt.date(2023, 3, 1), dt.date(2023, 3, 31))
        kept = search_scenes(client, S2_COLLECTION, FIELD, *period, max_cloud_cover=80)
        assert [i.id[-1] for i in kept] == ["1", "5"]
    finally:
        stac.honour_query(True)


def test_503_twice_then_success_is_retried_on_post(stac: StacServer) -> None:
    stac.add_items({S2_COLLECTION: [s2_item(0, dt.datetime(2023, 3, 5, 10))]})
    client = open_client(settings_for(stac, retries=2), backoff_factor=0)
    stac.clear_requests()
    stac.faults.fail_next(2, 503, prefix=stac.search_path)
    items = search_scenes(client, S2_COLLECTION, FIELD, dt.date(2023, 3, 1), dt.date(2023, 3, 31))
    assert [i.id for i in items] == ["S2X_TEST_0000"]
    assert [(e.method, e.status) for e in stac.searches()] == [
        ("POST", 503),
        ("POST", 503),
        ("POST", 200),
    ]


def test_429_with_retry_after_is_honoured(stac: StacServer) -> None:
    stac.add_items({S2_COLLECTION: [s2_item(0, dt.datetime(2023, 3, 5, 10))]})
    client = open_client(settings_for(stac, retries=1), backoff_factor=0)
    stac.faults.fail_next(1, 429, retry_after_s=1, prefix=stac.search_path)
    started = time.monotonic()
    items = search_scenes(client, S2_COLLECTION, FIELD, dt.date(2023, 3, 1), dt.date(2023, 3, 31))
    assert len(items) == 1
    assert time.monotonic() - started >= 0.9  # waited as the server asked


def test_a_retry_after_of_an_hour_is_not_waited_for(
    stac: StacServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # urllib3 obeys Retry-After without a bound: one 429 asking for an hour held a fetch,
    # silent, for an hour (review 5, F2). The pause is capped (30 s; 1 s here, to be quick).
    monkeypatch.setattr("core.stac.RETRY_AFTER_MAX_S", 1.0)
    stac.add_items({S2_COLLECTION: [s2_item(0, dt.datetime(2023, 3, 5, 10))]})
    client = open_client(settings_for(stac, retries=1), backoff_factor=0)
    stac.faults.fail_next(1, 429, retry_after_s=3600, prefix=stac.search_path)
    started = time.monotonic()
    items = search_scenes(client, S2_COLLECTION, FIELD, dt.date(2023, 3, 1), dt.date(2023, 3, 31))
    assert len(items) == 1
    assert 0.9 <= time.monotonic() - started < 10


def test_persistent_503_gives_network_error_after_all_tries(stac: StacServer) -> None:
    client = open_client(settings_for(stac, retries=2), backoff_factor=0)
    stac.clear_requests()
    stac.faults.fail_next(50, 503, prefix=stac.search_path)
    with pytest.raises(NetworkError) as caught:
        search_scenes(client, S2_COLLECTION, FIELD, dt.date(2023, 3, 1), dt.date(2023, 3, 31))
    message = str(caught.value)
    assert f"Could not reach the STAC API at {stac.url} after 3 tries" in message
    assert "it kept answering HTTP 503 (the service is down or overloaded)" in message
    assert "HTTPConnectionPool" not in message and "ResponseError" not in message
    assert "Check your connection or STAC_API_URL" in message
    assert not isinstance(caught.value, AccessDeniedError)
    assert len(stac.searches()) == 3


def test_unreachable_api_gives_network_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/stac/v1"
    refused = r"after 2 tries.*: no connection \(refused.*STAC_API_URL"
    with pytest.raises(NetworkError, match=refused):
        open_client(Settings(stac_api_url=url, retries=1, timeout_s=2), backoff_factor=0)


@pytest.mark.parametrize(
    "url",
    [
        "notaurl",  # read by pystac-client as a local file: FileNotFoundError
        "/tmp",  # a folder: IsADirectoryError
        "ftp://example.com/stac",  # requests has no adapter for it: it can never succeed
        "file:///tmp/catalog.json",
        "http:",  # "http://" once its trailing slashes are trimmed
        "https://localhost:99999/stac",  # port out of range
        "http://[::1/stac",  # broken IPv6 host
    ],
)
def test_a_value_that_is_no_http_url_is_refused_at_once_by_name(
    url: str, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notaurl").mkdir()  # so that a file read would not even fail the same way
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        open_client(Settings(stac_api_url=url, retries=4, timeout_s=5), backoff_factor=1.0)
    assert time.monotonic() - started < 1.0  # no retry with backoff
    message = str(caught.value)
    assert message.startswith(f"STAC_API_URL is {url!r}: it must be the http(s) URL of a STAC API")
    assert "tries" not in message
    assert not isinstance(caught.value, NetworkError)


def test_http_urls_pass_the_check() -> None:
    for url in ("https://planetarycomputer.microsoft.com/api/stac/v1", "http://127.0.0.1:8080"):
        assert check_stac_url(url) == url


def test_403_gives_access_denied_without_retrying(stac: StacServer) -> None:
    client = open_client(settings_for(stac), backoff_factor=0)
    stac.clear_requests()
    stac.faults.deny(stac.search_path, status=403)
    with pytest.raises(AccessDeniedError, match=r"HTTP 403.*PC_SDK_SUBSCRIPTION_KEY"):
        search_scenes(client, S1_COLLECTION, FIELD, dt.date(2023, 3, 1), dt.date(2023, 3, 31))
    assert len(stac.searches()) == 1


def test_slow_answer_times_out_and_is_retried(stac: StacServer) -> None:
    stac.add_items({S2_COLLECTION: [s2_item(0, dt.datetime(2023, 3, 5, 10))]})
    client = open_client(settings_for(stac, retries=1, timeout_s=1.0), backoff_factor=0)
    stac.faults.delay_next(1, 3.0, prefix=stac.search_path)
    started = time.monotonic()
    items = search_scenes(client, S2_COLLECTION, FIELD, dt.date(2023, 3, 1), dt.date(2023, 3, 31))
    assert len(items) == 1
    assert time.monotonic() - started < 2.9  # gave up on the slow answer after ~1 s


def test_pc_signer_leaves_local_hrefs_alone_and_a_custom_signer_is_used(
    stac: StacServer,
) -> None:
    stac.add_items({S2_COLLECTION: [s2_item(0, dt.datetime(2023, 3, 5, 10))]})
    period = (dt.date(2023, 3, 1), dt.date(2023, 3, 31))
    pc = open_client(settings_for(stac), signer=planetary_computer.sign_inplace)
    (item,) = search_scenes(pc, S2_COLLECTION, FIELD, *period)
    assert item.assets["B04"].href == f"{ASSET_BASE}/S2X_TEST_0000/B04.tif"

    def mark(obj: object) -> object:
        """Sign href strings (returned) and result pages (dicts, in place, as pystac-client
        hands them to its modifier)."""
        if isinstance(obj, str):
            return obj + "?signed=1"
        if isinstance(obj, dict):
            for feature in obj.get("features", []):
                for asset in feature["assets"].values():
                    asset["href"] += "?signed=1"
        return None

    custom = open_client(settings_for(stac), signer=mark)
    (item,) = search_scenes(custom, S2_COLLECTION, FIELD, *period)
    assert item.assets["B04"].href.endswith("B04.tif?signed=1")
    assert planetary_computer.sign("https://example.com/a.tif") == "https://example.com/a.tif"


def test_items_parsed_by_several_threads_at_once_are_all_migrated() -> None:
    """pystac loads its extension hooks at the first item parsed and is not thread-safe about
    it; core.stac loads them at import, so the first items parsed by concurrent threads (two
    Runs' first searches) all get PC's proj:epsg migrated to proj:code. A fresh interpreter,
    since the hooks load once per process (without the load at import 3 of 4 threads missed)."""
    import subprocess
    import sys

    code = """
import threading, pystac, core.stac
from tests.support.templates import default_stac_dir, item_template
raw = item_template(default_stac_dir(), core.stac.S2_COLLECTION)
start, migrated = threading.Barrier(4), []
def parse():
    start.wait()
    migrated.append("proj:code" in pystac.Item.from_dict(raw).properties)
threads = [threading.Thread(target=parse) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(sum(migrated), len(migrated))
"""
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["4", "4"], child.stdout


@pytest.mark.parametrize(
    ("page", "kind"),
    [("/collections/sentinel-2-l2a", "a Collection"), ("/collections", "no catalogue")],
)
def test_a_url_of_another_page_of_the_api_is_named_not_a_traceback(
    stac: StacServer, page: str, kind: str
) -> None:
    # pystac-client's ClientTypeError came out as a traceback (review 5, F3): the collection's
    # URL from the catalogue's docs is a natural slip.
    stac.add_items({S2_COLLECTION: [s2_item(0, dt.datetime(2023, 3, 5, 10))]})
    url = f"{stac.url}{page}"
    with pytest.raises(InputError) as caught:
        open_client(Settings(stac_api_url=url, retries=0))
    message = str(caught.value)
    assert message.startswith(f"STAC_API_URL is {url!r}, which is {kind}, not the root of")
    assert "ClientTypeError" not in message and "unset it" in message


def test_a_static_catalogue_without_item_search_is_named_not_a_traceback() -> None:
    # Review 16: pystac-client's DoesNotConformTo reached the user as a traceback, and each
    # field of a batch failed with its bare name. A real HTTP server serves the catalogue.
    import http.server
    import json
    import threading

    from shapely.geometry import box

    from core.stac import search_scenes

    catalogue = {"type": "Catalog", "id": "x", "stac_version": "1.0.0", "description": "x",
                 "links": [], "conformsTo": []}  # fmt: skip

    class Static(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(catalogue).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Static)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        client = open_client(Settings(stac_api_url=url, retries=0))
        with pytest.raises(InputError) as caught:
            search_scenes(client, S2_COLLECTION, box(3.0, 51.0, 3.01, 51.01),
                          dt.date(2023, 5, 1), dt.date(2023, 5, 10))  # fmt: skip
    finally:
        server.shutdown()
    message = str(caught.value)
    assert message.startswith(f"STAC_API_URL is {url!r}, a STAC catalogue without item search")
    assert "DoesNotConformTo" not in message and "unset it" in message


# --- signing at read time (review 11) ------------------------------------------------------------


def test_unsigned_takes_only_a_sas_token_out_of_an_href() -> None:
    from core.stac import unsigned

    signed = (
        "https://x.blob.core.windows.net/sentinel2-l2/a/B04.tif?st=2026-12-05T10%3A00%3A00Z"
        "&se=2026-12-05T11%3A00%3A00Z&sp=rl&sv=2021-06-08&sr=c&skoid=abc&sig=AbC%2Bd%3D"
    )
    assert unsigned(signed) == "https://x.blob.core.windows.net/sentinel2-l2/a/B04.tif"
    assert unsigned(signed.replace("?st=", "?version=3&st=")).endswith("B04.tif?version=3")
    plain = "http://127.0.0.1:8080/cogs/B04.tif?sp=ignored"  # no signature: as it is
    assert unsigned(plain) == plain


def test_the_read_signer_signs_again_with_a_fresh_token(monkeypatch) -> None:
    """planetary_computer's signer leaves an href that holds a token as it is; the read
    signer takes the old token out first, so the cached (or a renewed) token is used."""
    from planetary_computer import sas

    from core.stac import read_signer, renew_tokens

    now = dt.datetime.now(dt.UTC)

    def token(sig: str, seconds: float) -> sas.SASToken:
        expiry = (now + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return sas.SASToken(**{"msft:expiry": expiry, "token": f"se={expiry}&sp=rl&sig={sig}"})

    settings = planetary_computer.settings.Settings.get()
    cache = {f"{settings.sas_url}/x/sentinel2-l2": token("fresh", 3000)}
    monkeypatch.setattr(sas, "TOKEN_CACHE", cache)
    old = "https://x.blob.core.windows.net/sentinel2-l2/a/B04.tif?se=2020-01-01T00%3A00%3A00Z&sp=rl&sig=old"
    assert planetary_computer.sign(old) == old  # the library's own signer: unchanged
    signed = read_signer(planetary_computer.sign_inplace)(old)
    assert signed.endswith("B04.tif?" + cache[next(iter(cache))].token)
    assert read_signer(None) is None
    # Tokens with under the margin left are dropped; math.inf drops every one.
    cache[f"{settings.sas_url}/x/sentinel1-grd"] = token("soon", 120)
    assert renew_tokens() == 1 and list(cache) == [f"{settings.sas_url}/x/sentinel2-l2"]
    assert renew_tokens(float("inf")) == 1 and not cache
