"""Browser fixtures: the real app (``streamlit run``) on a local STAC API, driven by Chromium.

* ``site``: the real Flanders cube published like Planetary Computer (local STAC API + COG
  server with HTTP Range), spring 2018 only, so fetches are quick.
* ``app_url``: ``streamlit run app/main.py`` on a free port, with ``STAC_API_URL`` pointing at
  the site, a private disk cache, and no base-map tiles (``FIELDFLOW_TILE_URL=none``): the
  machine has no internet, and the map must work without tiles. Leaflet and leaflet-draw come
  from the app's static folder (``npm ci`` puts them there; this fixture runs it if needed).
* ``page``: a fresh Chromium tab (Debian's ``/usr/bin/chromium``, headless) on the app.

Screenshots go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import published_site  # noqa: F401 (fixture re-export)
from tests.support.site import PublishedSite

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("FIELDFLOW_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"
VENDOR = ROOT / "app" / "static" / "vendor" / "leaflet-draw" / "leaflet.draw.js"
SITE_WINDOW = {"start": "2018-05-01", "end": "2018-06-15"}
"""What the site publishes: 15 Sentinel-2 and 16 Sentinel-1 acquisitions."""
STARTUP_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_static_assets() -> None:
    if VENDOR.is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "Map scripts are missing from app/static/vendor and npm is not installed: "
            "install Node.js and run `npm ci` in the project folder."
        )
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True)


@pytest.fixture(scope="session")
def site(published_site) -> PublishedSite:  # noqa: F811 (the re-exported fixture)
    return published_site("be-flanders-a", **SITE_WINDOW)


@pytest.fixture(scope="session")
def app_url(site: PublishedSite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app, started once for the session."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"No Chromium at {CHROMIUM}: `apt-get install -y chromium` (or set FIELDFLOW_CHROMIUM)."
        )
    _ensure_static_assets()
    ARTIFACTS.mkdir(exist_ok=True)
    port = _free_port()
    env = dict(os.environ)
    env.update(
        STAC_API_URL=site.stac_url,
        FIELDFLOW_CACHE_DIR=str(tmp_path_factory.mktemp("app-cache")),
        FIELDFLOW_MODELS_DIR=str(tmp_path_factory.mktemp("app-models")),
        FIELDFLOW_TILE_URL="none",
        FIELDFLOW_RETRIES="1",
        FIELDFLOW_TIMEOUT_S="20",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
    )
    log = (ARTIFACTS / "streamlit.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app/main.py",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--server.fileWatcherType",
            "none",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"streamlit did not start; see {ARTIFACTS / 'streamlit.log'}")
        time.sleep(0.3)
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="session")
def browser(app_url: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def js_errors() -> list[str]:
    """Uncaught JavaScript errors of the page (of its frames too), for the test to check."""
    return []


@pytest.fixture
def page(browser, app_url: str, js_errors: list[str]):
    """A new tab on the app, once the page is ready."""
    context = browser.new_context(viewport={"width": 1500, "height": 1300}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.on("pageerror", lambda exc: js_errors.append(str(exc)))
    tab.goto(app_url, wait_until="domcontentloaded")
    tab.get_by_role("button", name="Demo field").wait_for()
    yield tab
    context.close()
